"""Tasks own prompts, postprocessing and scoring; the evaluation loop here is shared by all of them.

A task is registered with ``@TASKS.register("<name>")`` and named by ``run.task``. It is constructed with the whole
resolved config and builds the datasets of ``cfg.datasets`` (through the DATASETS registry) with the model's image
transform. Evaluators follow the reset / process / evaluate protocol: ``process`` runs on every rank over its shard,
the runner gathers every rank's predictions, deduplicates them by sample id (DistributedSampler pads shards by repeating
samples), and ``evaluate`` scores them once, on rank 0.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from vlmkit import dist
from vlmkit.io import write_json_atomic


class Evaluator:
    """Collects predictions for one (dataset, split) and scores them."""

    def reset(self) -> None:
        self._predictions: dict[str, Any] = {}

    def process(self, ids: list[str], outputs: list[str]) -> None:
        """Postprocess the model's generations of one batch and keep them by sample id."""
        raise NotImplementedError

    def predictions(self) -> dict[str, Any]:
        return self._predictions

    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        """Score the merged predictions of all ranks. Returns flat ``{metric: float}`` (plus optional nested extras)."""
        raise NotImplementedError

    def format_predictions(self, predictions: Mapping[str, Any]) -> Any:
        """The predictions in the benchmark's official results format (written to ``predictions/<dataset>_<split>.json``)."""
        return dict(predictions)


class Task:
    """Base class of tasks."""

    #: The metric that picks the best checkpoint (higher is better).
    main_metric: str = ""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Task":
        return cls(cfg)

    def build_datasets(self, model: Any, splits: Sequence[str] | None = None,
                       train: Sequence[str] | None = None) -> dict[str, dict[str, Dataset]]:
        """``{dataset_name: {split: Dataset}}`` for ``splits``; those also in ``train`` are built for training (with
        targets). The runner passes both; without them, every split the run names (see :meth:`run_splits`)."""
        raise NotImplementedError

    def run_splits(self, splits: Sequence[str] | None, train: Sequence[str] | None) -> tuple[list[str], list[str]]:
        """``splits`` and ``train`` as given, or the run's own (train + val + test, and train)."""
        run = self.cfg.run
        if train is None:
            train = [s for s in run.get("train_splits") or [] if splits is None or s in splits]
        if splits is None:
            splits = [*train, *(run.get("val_splits") or []), *(run.get("test_splits") or [])]
        return list(dict.fromkeys(splits)), list(train)

    def format_table(self, metrics: Mapping[str, Any]) -> str:
        """How an evaluation's metrics are printed (and logged): ``metric  value`` rows of the scalars by default."""
        rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        width = max((len(k) for k, _ in rows), default=0)
        return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> Evaluator:
        raise NotImplementedError

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (from ``run.generate``)."""
        gen = self.cfg.run.get("generate") or {}
        return dict(gen)


def merge_predictions(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Union of per-rank predictions; a sample id seen twice (sampler padding) counts once."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            merged.setdefault(key, value)
    return dict(sorted(merged.items()))


def run_evaluation(
    model: Any,
    loader: Iterable[dict[str, Any]],
    evaluator: Evaluator,
    gen_kwargs: Mapping[str, Any],
    predictions_path: str | Path | None = None,
    desc: str = "eval",
) -> dict[str, Any]:
    """Generate over this rank's shard, gather and deduplicate predictions, score on rank 0; metrics on every rank."""
    from tqdm import tqdm

    evaluator.reset()
    for batch in tqdm(loader, desc=desc, disable=not dist.is_main(), dynamic_ncols=True):
        outputs = model.generate(batch, **gen_kwargs)
        evaluator.process(list(batch["ids"]), outputs)
    merged = merge_predictions(dist.gather_objects(evaluator.predictions()))
    metrics = None
    if dist.is_main():
        metrics = evaluator.evaluate(merged)
        if predictions_path is not None:
            write_json_atomic(predictions_path, evaluator.format_predictions(merged))
    return dist.broadcast_object(metrics)
