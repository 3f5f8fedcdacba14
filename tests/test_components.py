"""A user's own model, dataset builder, schedule and hook: each declares its keys and defaults once (``default_config``),
gets the built-ins' strict checking from a YAML and from ``REGISTRY.build`` in Python, shows up in ``vlmkit list``, and
runs (the hook is called, the schedule's own keys reach it). Also the wandb hook (offline) and ``run.generate``."""
from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import toy_components  # noqa: F401  (registers toy_mlp / toy_points / toy_cls)
from conftest import REPO, run_tool
from vlmkit.config import load_config
from vlmkit.engine import entrypoints
from vlmkit.errors import ConfigError
from vlmkit.registry import DATASETS, HOOKS, MODELS, SCHEDULERS

PLUGIN = '''
import json
from pathlib import Path

from toy_components import ToyMLP, ToyPointsBuilder
from vlmkit import dist
from vlmkit.engine.schedulers import StepScheduler
from vlmkit.engine.trainer import HookBase
from vlmkit.registry import DATASETS, HOOKS, MODELS, SCHEDULERS


@MODELS.register("wide_mlp")
class WideMLP(ToyMLP):
    """A toy MLP with its own width key."""

    default_config = {"dim": 8, "width": 48, "num_classes": 4}

    @classmethod
    def from_config(cls, cfg, device=None):
        return cls(int(cfg.dim), int(cfg.width), int(cfg.num_classes), 0.0, 0.0)


@DATASETS.register("more_points")
class MorePoints(ToyPointsBuilder):
    """Toy points with a required-looking key of its own."""

    default_config = {"sizes": {"train": 64, "val": 32, "test": 32}, "dim": 8, "num_classes": 4, "seed": 0,
                      "nan_ids": [], "noise_free": True}


@SCHEDULERS.register("halving")
class Halving(StepScheduler):
    """lr · factor ^ (t // every): its own two keys."""

    default_config = {"factor": 0.5, "every": 4}

    def __init__(self, optimizer, *, factor, every, **kwargs):
        self.factor, self.every = float(factor), int(every)
        super().__init__(optimizer, **kwargs)

    def main(self, t):
        return self.base_lr * self.factor ** (t // self.every)


@HOOKS.register("call_counter")
class CallCounter(HookBase):
    """Counts its calls and writes them next to the run."""

    default_config = {"file": "calls.json"}

    def __init__(self, file):
        self.file, self.calls = file, {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def before_train(self):
        self._count("before_train")

    def after_step(self):
        self._count("after_step")

    def after_eval(self, key, metrics, step):
        self._count(f"after_eval:{key}")

    def after_run(self):
        self._count("after_run")
        if dist.is_main():
            (Path(self.runner.output_dir) / self.file).write_text(json.dumps(self.calls))
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plugin")
    (path / "my_parts.py").write_text(PLUGIN)
    sys.path.insert(0, str(path))
    import my_parts  # noqa: F401  (registers the four components)

    yield path
    sys.path.remove(str(path))


def project(tmp_path: Path, name: str = "p", **sections: dict) -> Path:
    cfg = {"model": {"arch": "wide_mlp"}, "datasets": {"more_points": {}},
           "run": {"task": "toy_cls", "imports": ["toy_components", "my_parts"], "output_dir": str(tmp_path / name),
                   "device": "cpu", "batch_size": 8, "lr": 0.02, "log_every": 1, "tensorboard": False, "epochs": 2}}
    for section, changes in sections.items():
        cfg[section] = {**cfg[section], **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("section, changes, message", [
    ("model", {"widht": 3}, "unknown config key 'model.widht'.*did you mean 'model.width'"),
    ("datasets", {"more_points": {"noise_fre": False}},
     "unknown config key 'datasets.more_points.noise_fre'.*did you mean 'datasets.more_points.noise_free'"),
    ("run", {"scheduler": {"name": "halving", "factr": 0.1}},
     "unknown config key 'run.scheduler.factr'.*did you mean 'run.scheduler.factor'"),
    ("run", {"hooks": [{"type": "call_counter", "fiel": "x.json"}]},
     r"unknown config key 'run.hooks\[0\].fiel'.*did you mean 'run.hooks\[0\].file'"),
    ("run", {"hooks": ["call_counter"]}, r"run.hooks\[0\].*must be a mapping with a 'type' key"),
    ("model", {"width": "wide"}, "config key 'model.width'.*must be int"),
])
def test_typos_in_a_users_components_are_caught(plugin_dir: Path, tmp_path: Path, section: str, changes: dict,
                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(project(tmp_path, **{section: changes}))


def test_python_builds_are_as_strict_as_yaml(plugin_dir: Path) -> None:
    assert MODELS.build({"arch": "wide_mlp"}).fc1.out_features == 48  # defaults merged
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'.*did you mean 'model.width'"):
        MODELS.build({"arch": "wide_mlp", "widht": 3}, where="model")
    with pytest.raises(ConfigError, match="unknown config key 'hook.fiel'"):
        HOOKS.build({"type": "call_counter", "fiel": "x"})
    assert HOOKS.build({"type": "call_counter"}).file == "calls.json"
    with pytest.raises(ConfigError, match="unknown config key 'datasets.more_points.sizez'"):
        DATASETS.build_named("more_points", {"sizez": {}}, "datasets.more_points")
    assert SCHEDULERS.get("halving").default_config == {"factor": 0.5, "every": 4}


def test_users_schedule_and_hook_run(plugin_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(project(tmp_path, run={"scheduler": {"name": "halving", "every": 2, "factor": 0.25},
                                             "hooks": [{"type": "call_counter"}]}))
    assert cfg.run.scheduler.factor == 0.25 and cfg.run.scheduler.every == 2
    entrypoints.train(cfg)
    out = Path(cfg.run.output_dir)
    steps = 2 * 64 // 8
    calls = json.loads((out / "calls.json").read_text())
    assert calls == {"before_train": 1, "after_step": steps, "after_eval:val": 2, "after_eval:test": 1, "after_run": 1}
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    # metrics.jsonl logs the rate of the step just taken (step t uses lr · 0.25 ^ ((t - 1) // 2))
    assert lrs == pytest.approx([0.02 * 0.25 ** ((t - 1) // 2) for t in range(1, steps + 1)])


def test_wandb_hook_writes_an_offline_run(plugin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install \"vlmkit[wandb]\")")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(project(tmp_path, run={"hooks": [{"type": "wandb", "project": "vlmkit-test", "log_every": 2}]}))
    entrypoints.train(cfg)
    runs = list((Path(cfg.run.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    keys = (b"train/loss", b"train/lr", b"val/accuracy", b"test/accuracy", b"more_points", b"wide_mlp")
    deadline = time.monotonic() + 60  # wandb's service process writes the run file shortly after finish() returns
    while True:
        records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))  # protobuf records: keys are plain bytes
        missing = [k for k in keys if k not in records]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, missing  # training, every evaluation, and the resolved config were logged


def test_list_shows_a_plugin_and_its_defaults(plugin_dir: Path) -> None:
    res = run_tool(["-m", "vlmkit", "list", "--import", "my_parts"],
                   env={"PYTHONPATH": f"{REPO}:{plugin_dir}:{REPO / 'tests'}"})
    assert res.returncode == 0, res.stderr
    for name in ("wide_mlp", "more_points", "halving", "call_counter", "wandb"):
        assert f"  {name} " in res.stdout, res.stdout
    assert "lr · factor ^ (t // every)" in res.stdout


def test_run_generate_takes_what_the_models_generate_takes(tmp_path: Path, spm_tokenizer_path: Path) -> None:
    from test_flamingo_model import tiny_config

    path = tmp_path / "f.yaml"
    base = {"model": tiny_config(spm_tokenizer_path), "run": {"task": None}}
    path.write_text(yaml.safe_dump({**base, "run": {"generate": {"do_sample": True, "top_p": 0.9}}}))
    assert load_config(path).run.generate.do_sample is True
    path.write_text(yaml.safe_dump({**base, "run": {"generate": {"num_beam": 3}}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'run.generate.num_beam'.*generate\(\) has no such "
                                          r"parameter; did you mean 'run.generate.num_beams'"):
        load_config(path)


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmkit.extras import require

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"run.optimizer 'adamw8bit' needs the 'bitsandbytes' package, which is not "
                                          r"installed: pip install \"vlmkit\[quant\]\""):
        require("bitsandbytes", "quant", "run.optimizer 'adamw8bit'")
    script = textwrap.dedent("""
        import sys; sys.modules["webdataset"] = None
        from vlmkit.prepare_data import main
        sys.exit(main(["shards", "--dataset", "coco_caption", "--splits", "train", "--out", "x"]))
    """)
    res = run_tool(["-c", script])
    assert res.returncode == 2 and 'pip install "vlmkit[shards]"' in res.stderr and "Traceback" not in res.stderr
