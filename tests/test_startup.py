"""Start-up stays light: the ``vlmkit`` command, its ``--help`` and ``vlmkit list`` import neither torch nor
transformers nor open_clip (the built-in components are known by name, vlmkit/registry.py ``BUILTINS``), ``list`` still
shows every component the built-in modules register, with the same descriptions, and plugins register as before.

No wall-clock asserts here: the numbers are benchmarks/startup.py's job. Each check runs in a fresh interpreter, since
this test session has long imported torch."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "open_clip", "timm", "torchvision", "peft", "bitsandbytes", "matplotlib", "gradio",
         "pycocoevalcap", "wandb", "tensorboard")
#: The modules vlmkit.registry imported on first registry use before its table of built-ins existed: what `vlmkit list`
#: showed then is what these register.
PREVIOUS_BUILTIN_MODULES = (
    "vlmkit.engine.schedulers", "vlmkit.engine.hooks", "vlmkit.models.lavin", "vlmkit.models.flamingo",
    "vlmkit.data.scienceqa", "vlmkit.data.vqav2", "vlmkit.data.coco", "vlmkit.data.image_text",
    "vlmkit.tasks.scienceqa", "vlmkit.tasks.vqa", "vlmkit.tasks.caption", "vlmkit.tasks.image_text",
)
REGISTRIES = ("MODELS", "TASKS", "DATASETS", "PROCESSORS", "SCHEDULERS", "HOOKS")


def fresh(*parts: str, paths: tuple[Path, ...] = ()) -> dict:
    """Run the code ``parts`` (each dedented) in a new interpreter with vlmkit from this checkout (and ``paths``) on
    PYTHONPATH; the code sets ``result`` (JSON), returned with ``result["heavy"]``: the heavy packages imported by
    then."""
    epilogue = f"""
        import json, sys
        result["heavy"] = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print("RESULT " + json.dumps(result))
    """
    script = "\n".join(textwrap.dedent(part) for part in (*parts, epilogue))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, paths)]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def run_cli(*args: str) -> str:
    """Python code that runs ``vlmkit ARGS`` in-process and keeps its stdout and status in ``result``."""
    return f"""
        import contextlib, io
        from vlmkit.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                status = main({list(args)!r})
            except SystemExit as e:  # argparse's --help
                status = e.code
        result = {{"stdout": out.getvalue(), "status": status}}
    """


def test_import_and_help_import_nothing_heavy():
    got = fresh("import vlmkit, vlmkit.cli, vlmkit.registry", run_cli("--help"))
    assert got["status"] == 0 and "commands:" in got["stdout"]
    assert got["heavy"] == []


@pytest.mark.parametrize("command", ["train", "evaluate", "prepare-data", "score", "list", "chat", "inspect", "compare",
                                     "study"])
def test_command_help_imports_nothing_heavy(command):
    got = fresh(run_cli(command, "--help"))
    assert got["status"] == 0 and "usage:" in got["stdout"]
    assert got["heavy"] == []


def test_list_imports_nothing_heavy_and_shows_what_the_modules_register():
    """`vlmkit list` from the table of built-ins equals, line for line, `vlmkit list` once every module that registers
    built-ins has been imported (then every name and description comes from the registered objects themselves)."""
    got = fresh(run_cli("list"), f"""
        import importlib, sys
        lazy = dict(result, heavy=sorted(m for m in {HEAVY!r} if m in sys.modules))
        from vlmkit import registry
        for name in {PREVIOUS_BUILTIN_MODULES!r}:
            importlib.import_module(name)
        registered = {{attr: {{name: f"{{obj.__module__}}:{{obj.__qualname__}}"
                              for name, obj in getattr(registry, attr)._entries.items()}} for attr in {REGISTRIES!r}}}
        pending = {{attr: sorted(getattr(registry, attr)._lazy) for attr in {REGISTRIES!r}}}
    """, run_cli("list"), """
        result = {"lazy": lazy, "imported": result, "registered": registered, "pending": pending}
    """)
    lazy, imported = got["lazy"], got["imported"]
    assert lazy["status"] == 0 and lazy["heavy"] == [], lazy["heavy"]
    assert lazy["stdout"] == imported["stdout"]
    from vlmkit.registry import BUILTINS

    assert got["registered"] == BUILTINS  # every name the modules register, each where the table says
    assert all(not names for names in got["pending"].values()), got["pending"]
    for name in ("lavin", "openflamingo", "scienceqa", "vqav2", "coco_caption", "warmup_cosine", "wandb",
                 "scienceqa_prompt"):
        assert f"  {name} " in lazy["stdout"]


def test_every_registration_in_vlmkit_is_in_the_table():
    """Each ``@<REGISTRY>.register("name")`` decorator in vlmkit's sources is a BUILTINS entry (a new component cannot
    be forgotten there, whichever module it lives in)."""
    from vlmkit.registry import BUILTINS

    found = {}
    for path in sorted((REPO / "vlmkit").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for dec in getattr(node, "decorator_list", []):
                if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "register"
                        and isinstance(dec.func.value, ast.Name) and dec.func.value.id in REGISTRIES):
                    found.setdefault(dec.func.value.id, {})[dec.args[0].value] = f"{module}:{node.name}"
    assert found == {attr: table for attr, table in BUILTINS.items() if table}


def test_get_imports_only_the_module_of_that_entry():
    got = fresh("""
        from vlmkit.registry import DATASETS, MODELS, TASKS
        names = [MODELS.names(), "scienceqa" in TASKS]
        DATASETS.get("scienceqa")
        import sys
        result = {"names": names, "modules": sorted(m for m in sys.modules if m.startswith("vlmkit."))}
    """)
    assert got["names"] == [["lavin", "openflamingo"], True]
    assert "vlmkit.data.scienceqa" in got["modules"]
    assert not {"vlmkit.models.lavin", "vlmkit.models.flamingo", "vlmkit.data.vqav2", "vlmkit.tasks.vqa"} & set(
        got["modules"])
    assert not {"transformers", "open_clip"} & set(got["heavy"])


def test_unknown_name_lists_the_builtins_without_importing_them():
    got = fresh("""
        from vlmkit.errors import UnknownNameError
        from vlmkit.registry import MODELS
        try:
            MODELS.get("lavn")
        except UnknownNameError as e:
            result = {"error": str(e)}
    """)
    assert got["error"] == "unknown model 'lavn'; did you mean 'lavin'? registered: lavin, openflamingo"
    assert got["heavy"] == []


PLUGIN = '''
from vlmkit.registry import MODELS


@MODELS.register("startup_toy")
class StartupToy:
    """A plugin model that needs no torch."""

    default_config = {"hidden": 4}
'''

CLASHING_PLUGIN = '''
from vlmkit.registry import MODELS


@MODELS.register("lavin")
class NotLaVIN:
    """Takes a built-in name."""
'''


def test_plugin_registers_through_list_import_and_run_imports(tmp_path):
    (tmp_path / "startup_plugin.py").write_text(PLUGIN)
    (tmp_path / "project.yaml").write_text("model: {arch: startup_toy, hidden: 8}\n"
                                           "run: {task: scienceqa, imports: [startup_plugin]}\n")
    listed = fresh(run_cli("list", "models", "--import", "startup_plugin"), paths=(tmp_path,))
    assert listed["status"] == 0 and listed["heavy"] == []
    assert "  startup_toy      A plugin model that needs no torch." in listed["stdout"]
    assert "  lavin " in listed["stdout"] and "  openflamingo " in listed["stdout"]
    got = fresh(f"""
        import sys
        from vlmkit.config import load_config
        cfg = load_config({str(tmp_path / "project.yaml")!r})
        from vlmkit.registry import MODELS
        result = {{"hidden": cfg.model.hidden, "entry": MODELS.get("startup_toy").__module__,
                  "lavin_imported": "vlmkit.models.lavin" in sys.modules}}
    """, paths=(tmp_path,))
    assert {k: v for k, v in got.items() if k != "heavy"} == {"hidden": 8, "entry": "startup_plugin",
                                                              "lavin_imported": False}


def test_plugin_taking_a_builtin_name_is_refused(tmp_path):
    (tmp_path / "clashing_plugin.py").write_text(CLASHING_PLUGIN)
    got = fresh("""
        from vlmkit.registry import import_modules
        try:
            import_modules(["clashing_plugin"])
        except ValueError as e:
            result = {"error": str(e)}
    """, paths=(tmp_path,))
    assert got["error"] == ("model 'lavin' is already registered by vlmkit.models.lavin.LaVIN; choose another name "
                            "for clashing_plugin.NotLaVIN")


def test_docstrings_read_from_source_are_the_imported_ones():
    from vlmkit import registry

    registry.load_builtins()
    for attr, table in registry.BUILTINS.items():
        for name, target in table.items():
            assert registry._source_docstring(target) == getattr(registry, attr).get(name).__doc__, (attr, name)


def test_a_builtin_entry_its_module_does_not_register_is_a_clear_error():
    from vlmkit.registry import Registry

    reg = Registry("widget", builtins={"box": "json:JSONDecoder"})
    assert reg.names() == ["box"] and "box" in reg
    with pytest.raises(RuntimeError, match="json did not register widget 'box'"):
        reg.get("box")


def test_list_names_the_same_defaults_folder_as_the_config_loader():
    from vlmkit import cli, schema

    assert cli.CONFIG_ROOT == schema.CONFIG_ROOT
