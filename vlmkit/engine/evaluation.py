"""Evaluating one (dataset, split): subsets (``--limit``, ``--ids``), per-sample records and resuming a killed run.

:meth:`vlmkit.engine.runner.Runner.evaluate` calls :func:`prepare` for each split; the record files and their
fingerprint are described in vlmkit/tasks/samples.py. Also here: where an evaluation writes (its own directory), the
result tables, and the warning for untrained weights.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from vlmkit import dist
from vlmkit.engine.rundir import evaluation_dir
from vlmkit.errors import ConfigError, DataError, VlmkitError
from vlmkit.tasks.base import Task, sample_ids
from vlmkit.tasks.samples import SampleLog, fingerprint

logger = logging.getLogger("vlmkit")
table_logger = logging.getLogger("vlmkit.tables")  # log.txt only (the terminal gets the plain print)


@dataclass
class EvalOptions:
    """How ``vlmkit evaluate`` narrows or continues an evaluation."""

    resume: bool = False  # continue the record files of an interrupted evaluation in the output dir
    limit: int | None = None  # the first N items (dataset order)
    ids: list[str] | None = None  # these items only
    checkpoint: str | None = None  # the weights evaluated (part of the records' fingerprint)

    @property
    def subset(self) -> bool:
        return self.limit is not None or self.ids is not None


def read_ids(path: str | Path) -> list[str]:
    """``--ids FILE``: one sample id per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--ids file not found: {path} (write one sample id per line)")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not ids:
        raise DataError(f"--ids file {path} lists no sample ids (write one per line)")
    return ids


def select(dataset: Dataset, ids: list[str], options: EvalOptions, key: str) -> tuple[list[int], dict | None]:
    """Positions of the items to evaluate, and a description of the subset (None: all of them)."""
    if options.limit is not None:
        if options.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {options.limit}")
        n = min(options.limit, len(ids))
        return list(range(n)), {"how": f"the first {n}", "items": n, "of": len(ids)}
    if options.ids is not None:
        where = {sample_id: i for i, sample_id in enumerate(ids)}
        unknown = [i for i in options.ids if i not in where]
        if unknown:
            raise DataError(f"--ids: {len(unknown)} ids are not samples of {key} (e.g. {unknown[0]!r}); use the ids "
                            "of the evaluated split (the 'id' of its samples/*.jsonl lines)")
        chosen = sorted({where[i] for i in options.ids})
        return chosen, {"how": "the --ids file", "items": len(chosen), "of": len(ids)}
    return list(range(len(ids))), None


def prepare(dataset: Dataset, key: str, out: Path, cfg: Any, options: EvalOptions
            ) -> tuple[Dataset, SampleLog | None, dict[str, int], dict[str, dict[str, Any]], dict | None]:
    """The dataset to run (the items not yet recorded), rank 0's record file, id → position, recorded rows, subset."""
    ids = sample_ids(dataset)
    index_of = {sample_id: i for i, sample_id in enumerate(ids)}
    positions, subset = select(dataset, ids, options, key)
    log, done = None, {}
    if dist.is_main():  # the fingerprint of this split's config (a sweep point's has its shots and trial)
        log = SampleLog(out / "samples", key, fingerprint(cfg, options.checkpoint), len(positions), subset)
        if options.resume:
            done = {i: row for i, row in log.load_for_resume().items() if index_of.get(i) in set(positions)}
        log.start(resume=options.resume)
    done_ids = set(dist.broadcast_object(list(done)))
    remaining = [i for i in positions if ids[i] not in done_ids]
    if options.resume and dist.is_main() and done:
        logger.info("--resume: %s has %d of %d items recorded; evaluating the other %d", key,
                                         len(done), len(positions), len(remaining))
    run_set = dataset if len(remaining) == len(dataset) else _Subset(dataset, remaining)
    return run_set, log, index_of, done, subset


class _Subset(Subset):
    """A Subset that still says its sample ids (the few-shot and record datasets are asked for them)."""

    def sample_id(self, index: int) -> str:
        return sample_ids_at(self.dataset, self.indices[index])


def sample_ids_at(dataset: Any, index: int) -> str:
    return str(dataset.sample_id(index)) if hasattr(dataset, "sample_id") else str(dataset[index]["id"])


def mark_subset(result: Mapping[str, Any], subset: dict | None) -> dict[str, Any]:
    """A subset's metrics say so (and how much of the split they cover)."""
    return dict(result) if subset is None else {**result, "subset": f"{subset['how']} of {subset['of']} items"}


def subset_dir(target: Path, options: EvalOptions) -> Path:
    """Where a subset evaluation writes, apart from full results: ``<target>/subsets/limit<N>`` or ``ids-<hash>``."""
    if options.limit is not None:
        return target / "subsets" / f"limit{options.limit}"
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(options.ids or [])).encode()).hexdigest()[:10]
    return target / "subsets" / f"ids-{digest}"


def check_options(options: EvalOptions) -> None:
    if options.limit is not None and options.ids is not None:
        raise ConfigError("--limit and --ids select items in two ways; give one of them")
    if options.limit is not None and options.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {options.limit}")


def resume_dir(target: Path) -> Path:
    """The evaluation ``--resume`` continues: ``target``, or the newest ``evaluations/*`` of a training run's dir."""
    if evaluation_dir(target) == target:
        return target
    earlier = sorted(p for p in (target / "evaluations").glob("*") if (p / "samples").is_dir())
    if not earlier:
        raise VlmkitError(f"--resume: {target} holds a training run but no earlier evaluation in "
                          f"{target / 'evaluations'} to continue; drop --resume, or pass the evaluation's --output-dir")
    return earlier[-1]


def metric_key(dataset: str, split: str, n_datasets: int) -> str:
    """``<split>`` for a run over one dataset, ``<dataset>_<split>`` when several share a split name."""
    return split if n_datasets == 1 else f"{dataset}_{split}"


def print_tables(task: Task, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Each split's table on the terminal and in log.txt (rank 0)."""
    if dist.is_main():
        for key, metrics in results.items():
            subset = f" (subset: {metrics['subset']})" if metrics.get("subset") else ""
            text = f"== {key}{subset} ==\n{task.format_table(metrics)}"
            print(text, flush=True)
            table_logger.info(text)


def main_score(task: Task, results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean of the task's main metric over the evaluated validation splits (higher is better)."""
    if not results:
        return None
    scores = []
    for key, metrics in results.items():
        if task.main_metric not in metrics:
            raise VlmkitError(f"task '{type(task).__name__}' reported no main metric '{task.main_metric}' for {key} "
                              f"(it reported: {', '.join(metrics)})")
        scores.append(float(metrics[task.main_metric]))
    return sum(scores) / len(scores)


def with_evaluation_dir(cfg: DictConfig, output_dir: str | None, options: EvalOptions | None = None) -> DictConfig:
    """A copy of ``cfg`` whose ``run.output_dir`` is where this evaluation writes (the same path on every rank):
    ``output_dir`` or ``run.output_dir``; a subset goes to its own ``subsets/...`` folder inside; a directory holding a
    training run gets a fresh ``evaluations/<time>/`` (with ``--resume``: the newest one)."""
    cfg = copy.deepcopy(cfg)
    options = options or EvalOptions()
    target = Path(output_dir or cfg.run.output_dir)
    if options.subset:
        target = subset_dir(target, options)
    if dist.is_main():
        target = resume_dir(target) if options.resume else evaluation_dir(target)
    cfg.run.output_dir = str(dist.broadcast_object(target))
    return cfg


def warn_if_untrained(cfg: DictConfig, checkpoint: str | None) -> None:
    """A loud warning when no trained weights are loaded: the scores are those of the random initialisation."""
    if checkpoint is None and not cfg.model.get("checkpoint"):
        logger.warning("NO TRAINED WEIGHTS: neither --checkpoint nor model.checkpoint is set, so model '%s' is scored "
                       "with its untrained (randomly initialised) adapters; pass --checkpoint "
                       "<run>/model.safetensors to evaluate a trained model", cfg.model.arch)
