"""Reading run directories: only the files a run writes (config.yaml, metrics.jsonl, metrics.json, and a few-shot
sweep's fewshot_summary.json), each optional. What a run lacks is collected as short phrases, so that the comparison
can say in one warning line per run what is missing and go on with the rest."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmkit.engine.sweep_files import SUMMARY_FILE
from vlmkit.errors import ConfigError

CONFIG_FILE = "config.yaml"
METRICS_LOG = "metrics.jsonl"
METRICS_LATEST = "metrics.json"
RUN_FILES = (CONFIG_FILE, METRICS_LOG, METRICS_LATEST, SUMMARY_FILE)
TRAIN_SPLIT = "train"

#: Layer counts of the LLaMA sizes, for a LaVIN run whose params.json is no longer where its config says.
LLAMA_LAYERS = {"7B": 32, "13B": 40, "30B": 60, "33B": 60, "65B": 80}


@dataclass
class Run:
    """One run directory as the comparison sees it."""

    name: str
    path: Path
    config: dict[str, Any] | None = None
    train: list[dict[str, Any]] = field(default_factory=list)   # metrics.jsonl records of split "train"
    evals: list[dict[str, Any]] = field(default_factory=list)   # metrics.jsonl evaluation records
    metrics: dict[str, dict[str, Any]] | None = None            # metrics.json: {split: {metric: value}}
    fewshot: dict[str, Any] | None = None                       # fewshot_summary.json
    lacks: list[str] = field(default_factory=list)              # "what (consequence)" phrases for the warning

    @property
    def is_sweep(self) -> bool:
        return self.fewshot is not None

    @property
    def task(self) -> str | None:
        """``run.task`` of the config, else guessed from the metric names."""
        task = ((self.config or {}).get("run") or {}).get("task")
        return str(task) if task else guess_task(self.metrics or {})

    @property
    def usable(self) -> bool:
        return bool(self.train or self.evals or self.metrics or self.fewshot)

    def warning(self) -> str | None:
        """One line naming what this run lacks, or None."""
        if not self.lacks:
            return None
        return f"warning: run '{self.name}' ({self.path}) lacks " + "; ".join(self.lacks)


def guess_task(metrics: dict[str, dict[str, Any]]) -> str | None:
    """The task whose main metric appears in metrics.json (for a run without config.yaml)."""
    keys = {k for split in metrics.values() if isinstance(split, dict) for k in split}
    for metric, task in (("Average", "scienceqa"), ("overall", "vqa"), ("CIDEr", "caption"), ("accuracy", "image_text")):
        if metric in keys:
            return task
    return None


def check_run_dirs(paths: Sequence[str], names: Sequence[str] | None) -> list[tuple[str, Path]]:
    """Validate the command-line inputs; (name, path) per run. Raises ConfigError (one line) on a bad input."""
    if not paths:
        raise ConfigError("no run directory given (e.g. vlmkit compare runs/a runs/b --out compare)")
    dirs = [Path(p) for p in paths]
    for d in dirs:
        if not d.exists():
            raise ConfigError(f"run directory {d} does not exist")
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory (give run.output_dir folders)")
    if names is not None:
        if len(names) != len(dirs):
            raise ConfigError(f"--names gives {len(names)} names for {len(dirs)} run directories")
        if len(set(names)) != len(names):
            raise ConfigError(f"--names must be distinct, got {' '.join(names)}")
        return list(zip(names, dirs))
    return list(zip(default_names(dirs), dirs))


def default_names(dirs: Sequence[Path]) -> list[str]:
    """Each directory's name; where two share it, their last two path parts (then a counter)."""
    names = [d.resolve().name for d in dirs]
    for i, name in enumerate(names):
        if names.count(name) > 1:
            names[i] = "/".join(dirs[i].resolve().parts[-2:])
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if names.count(name) > 1:
            names[i] = f"{name}#{seen[name]}"
    return names


def _read_json(path: Path, run: Run) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        run.lacks.append(f"a readable {path.name} (it is not valid JSON)")
        return None


def _read_config(path: Path, run: Run) -> None:
    if not path.is_file():
        return
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        cfg = None
    if isinstance(cfg, dict):
        run.config = cfg
    else:
        run.lacks.append(f"a readable {CONFIG_FILE}")


def _read_log(path: Path, run: Run) -> None:
    if not path.is_file():
        return
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # a line cut by a kill
            continue
        if not isinstance(record, dict):
            bad += 1
        elif record.get("split") == TRAIN_SPLIT:
            run.train.append(record)
        elif record.get("split") is not None:
            run.evals.append(record)
    if bad:
        run.lacks.append(f"{bad} unreadable line{'s' if bad > 1 else ''} of {METRICS_LOG} (skipped)")


def load_run(name: str, path: Path) -> Run:
    """Read what ``path`` holds; note what a comparison would miss."""
    run = Run(name=name, path=path)
    if not any((path / f).is_file() for f in RUN_FILES):
        run.lacks.append(f"every run file ({', '.join(RUN_FILES)}): left out")
        return run
    _read_config(path / CONFIG_FILE, run)
    _read_log(path / METRICS_LOG, run)
    if (path / METRICS_LATEST).is_file():
        latest = _read_json(path / METRICS_LATEST, run)
        run.metrics = latest if isinstance(latest, dict) and latest else None
    if (path / SUMMARY_FILE).is_file():
        summary = _read_json(path / SUMMARY_FILE, run)
        run.fewshot = summary if isinstance(summary, dict) and summary.get("splits") else None
    _note_missing(run)
    return run


def _note_missing(run: Run) -> None:
    """The phrases for the files and records a run of its kind is expected to have."""
    has_config = (run.path / CONFIG_FILE).is_file()  # an unreadable one is already noted
    if run.is_sweep:
        if not has_config:
            run.lacks.append(f"{CONFIG_FILE} (not known to be the 9B setup: no published curves unless "
                             "--published always)")
        return
    if not has_config:
        run.lacks.append(f"{CONFIG_FILE} (no dropout profile; task guessed from the metric names)")
    if not run.train:
        run.lacks.append(f"training records in {METRICS_LOG} (no loss / learning-rate curves)")
    if not (run.path / METRICS_LATEST).is_file():
        run.lacks.append(f"{METRICS_LATEST} (no row in the results tables)")
    run_cfg = (run.config or {}).get("run") or {}
    expects_val = bool(run_cfg.get("val_splits")) and int(run_cfg.get("eval_every") or 0) > 0
    if expects_val and run.train and not validation_records(run):
        run.lacks.append("validation records (no validation curve)")
    model_cfg = (run.config or {}).get("model") or {}
    if model_cfg.get("arch") == "lavin" and llama_layers(model_cfg) is None:
        run.lacks.append(f"the LLaMA layer count (no params.json / config.json under {model_cfg.get('llama_root')}, "
                         "size not known): no dropout profile")


def validation_records(run: Run) -> list[dict[str, Any]]:
    """Evaluation records made during training on the validation splits (those with an epoch and a step)."""
    val = ((run.config or {}).get("run") or {}).get("val_splits")
    splits = set(val) if val else None
    out = []
    for rec in run.evals:
        split = str(rec.get("split"))
        named = split in splits if splits is not None else "val" in split
        if named and rec.get("epoch") is not None:
            out.append(rec)
    return out


def llama_layers(model_cfg: dict[str, Any]) -> int | None:
    """The LLaMA layer count of a LaVIN config: its params.json (Meta) or config.json (HF), else the size's known one."""
    root, size = Path(str(model_cfg.get("llama_root", ""))), str(model_cfg.get("llama_size", ""))
    for path, key in ((root / size / "params.json", "n_layers"), (root / "config.json", "num_hidden_layers")):
        if path.is_file():
            try:
                return int(json.loads(path.read_text())[key])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return LLAMA_LAYERS.get(size)


def load_runs(entries: Sequence[tuple[str, Path]]) -> list[Run]:
    runs = [load_run(name, path) for name, path in entries]
    if not any(r.usable for r in runs):
        raise ConfigError(f"none of the {len(runs)} directories holds run files ({', '.join(RUN_FILES)}); "
                          "give run.output_dir folders of trained or evaluated runs")
    return runs
