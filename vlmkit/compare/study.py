"""``vlmkit study DIR --out OUT``: train every project YAML of a directory, each into ``OUT/<yaml stem>``, then compare
them into ``OUT/compare``.

Every config is loaded (and so checked) before the first training starts, so a typo in the last YAML costs no
training time. The trainings run one after another in this process through :func:`vlmkit.engine.entrypoints.train` (the
function behind ``vlmkit train``; no interpreter start-up per run). A run already finished — ``model.safetensors`` and
a ``metrics.json`` holding every test split — is skipped; an interrupted one (``checkpoints/last.pt`` without those)
is resumed. Delete ``OUT/<stem>`` to train a run again.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from vlmkit.errors import ConfigError

COMPARE_DIR = "compare"
YAML_SUFFIXES = (".yaml", ".yml")


def project_yamls(directory: Path) -> list[Path]:
    """The directory's project YAMLs: those another one ``extends`` first (the study's base), then by name."""
    if not directory.is_dir():
        raise ConfigError(f"study directory {directory} does not exist or is not a directory")
    paths = sorted(p for p in directory.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
    if not paths:
        raise ConfigError(f"{directory} holds no project YAML (*.yaml)")
    from vlmkit.schema import read_yaml

    parents: set[Path] = set()
    for path in paths:
        extends = read_yaml(path).get("extends")
        for parent in [extends] if isinstance(extends, str) else list(extends or []):
            parents.add((path.parent / str(parent)).resolve())
    return sorted(paths, key=lambda p: (p.resolve() not in parents, p.name))


def load_study(paths: Sequence[Path], out: Path, options: Sequence[str],
               imports: Sequence[str]) -> list[tuple[str, DictConfig]]:
    """(stem, config) per YAML with ``run.output_dir = OUT/<stem>``; every config checked before any training."""
    from vlmkit.config import load_config

    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"two YAMLs of the study share a name ({', '.join(stems)}); their runs would share a folder")
    study = []
    for path in paths:
        cfg = load_config(path, options, imports)
        cfg.run.output_dir = str(out / path.stem)
        study.append((path.stem, cfg))
    return study


def is_finished(cfg: DictConfig) -> bool:
    """``model.safetensors`` and a ``metrics.json`` with every test split of the run."""
    from vlmkit.engine.evaluation import metric_key
    from vlmkit.engine.runner import FINAL_WEIGHTS

    out = Path(cfg.run.output_dir)
    if not (out / FINAL_WEIGHTS).is_file() or not (out / "metrics.json").is_file():
        return False
    try:
        latest = json.loads((out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    names = list(cfg.datasets)
    wanted = {metric_key(str(n), str(s), len(names)) for n in names for s in cfg.run.test_splits or []}
    return isinstance(latest, dict) and wanted <= set(latest)


def run_study(directory: str | Path, out: str | Path, options: Sequence[str] = (), imports: Sequence[str] = (),
              published: str = "auto") -> int:
    """Train what is not finished, then compare every run; returns the exit status (0)."""
    from vlmkit.compare.report import compare
    from vlmkit.engine.entrypoints import train
    from vlmkit.engine.runner import LAST_CHECKPOINT

    out = Path(out)
    study = load_study(project_yamls(Path(directory)), out, options, imports)
    bar = tqdm(study, desc="study", unit="run", disable=None, file=sys.stderr)
    for i, (stem, cfg) in enumerate(bar, 1):
        if is_finished(cfg):
            tqdm.write(f"study [{i}/{len(study)}] {stem}: finished earlier in {cfg.run.output_dir}, skipped")
            continue
        resume = (Path(cfg.run.output_dir) / LAST_CHECKPOINT).is_file()
        tqdm.write(f"study [{i}/{len(study)}] {stem}: {'resuming' if resume else 'training'} into "
                   f"{cfg.run.output_dir}")
        train(cfg, resume=resume, overwrite=not resume)  # a run that died before its first checkpoint restarts
    bar.close()
    result = compare([(stem, Path(cfg.run.output_dir)) for stem, cfg in study], out / COMPARE_DIR, published)
    print(f"compared {len(study)} runs: {out / COMPARE_DIR / 'results.md'}, {out / COMPARE_DIR / 'report.html'} "
          f"and {len(result.figures)} figure(s)", flush=True)
    return 0
