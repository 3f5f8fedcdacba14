"""vlmkit as a user installs it: a built wheel in a fresh virtualenv, used from a directory outside the source tree.

The new venv gets vlmkit from the wheel alone (``--no-deps``); its dependencies come from the test interpreter's
site-packages through a ``.pth`` line (a plain path: the editable-install hook of this checkout that lives there is not
run), so the test needs no second copy of torch and still proves that nothing is read from the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)], root, env)
    wheel = next((root / "dist").glob("vlmkit-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], root, env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                    env).stdout.strip())
    (site / "vlmkit_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "2"}
    return {"venv": venv, "python": python, "work": work, "env": env}


def test_wheel_ships_the_defaults_and_is_used(installed: dict) -> None:
    where = run([str(installed["python"]), "-c", "import vlmkit, vlmkit.config as c; print(vlmkit.__file__); "
                 "print(c.CONFIG_ROOT / 'run.yaml')"], installed["work"], installed["env"]).stdout.split()
    assert all(str(installed["venv"]) in path and str(REPO) not in path for path in where), where
    assert Path(where[1]).is_file()


def test_vlmkit_command_lists_prepares_trains_and_evaluates(installed: dict) -> None:
    work, env = installed["work"], installed["env"]
    listed = run(["vlmkit", "list"], work, env).stdout
    for name in ("lavin", "openflamingo", "scienceqa", "vqav2", "coco_caption", "warmup_cosine", "cyclical"):
        assert f"  {name} " in listed, listed
    assert str(installed["venv"]) in listed  # the defaults files named are the installed ones
    run(["vlmkit", "prepare-data", "synthetic-scienceqa", "--out", "sqa", "--n-train", "48", "--n-val", "8",
         "--n-test", "16"], work, env)
    project = work / "tiny.yaml"  # a project YAML outside the repository, over the shipped defaults
    shutil.copy(REPO / "projects" / "quickstart" / "lavin_sqa_tiny.yaml", project)
    env = {**env, "VLMKIT_QUICKSTART_ROOT": str(work / "sqa")}
    trained = run(["vlmkit", "train", "--cfg-path", str(project), "--options", "run.epochs=1",
                   f"run.output_dir={work / 'run'}"], work, env)
    assert (work / "run" / "model.safetensors").is_file() and "Average" in trained.stdout
    run(["vlmkit", "evaluate", "--cfg-path", str(project), "--checkpoint", str(work / "run" / "model.safetensors"),
         "--split", "test", "--options", f"run.output_dir={work / 'eval'}"], work, env)
    assert (work / "eval" / "metrics.json").is_file()
    scored = run(["vlmkit", "score", "scienceqa", "--problems", str(work / "sqa" / "problems.json"), "--results",
                  str(work / "eval" / "predictions" / "scienceqa_test.json"), "--split", "test"], work, env)
    assert '"Average"' in scored.stdout


def test_unknown_command_is_one_error_line(installed: dict) -> None:
    res = subprocess.run(["vlmkit", "lsit"], cwd=installed["work"], env=installed["env"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: unknown command 'lsit'; did you mean 'list'? commands: train, evaluate, prepare-data, score, list, chat, inspect, compare, study")
