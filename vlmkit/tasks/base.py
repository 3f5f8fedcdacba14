"""Tasks own prompts, postprocessing and scoring; the evaluation loop here is shared by all of them.

A task is registered with ``@TASKS.register("<name>")`` and named by ``run.task``. It is constructed with the whole
resolved config and builds the datasets of ``cfg.datasets`` (through the DATASETS registry) with the model's image
transform. Evaluators follow the reset / process / evaluate protocol: ``process`` runs on every rank over its shard,
the runner gathers every rank's predictions, deduplicates them by sample id (DistributedSampler pads shards by repeating
samples), and ``evaluate`` scores them once, on rank 0.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from vlmkit import dist
from vlmkit.io import write_json_atomic
from vlmkit.tasks.samples import SampleLog


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

    def item(self, sample_id: str) -> dict[str, Any]:
        """The per-sample record fields of a processed sample (vlmkit/tasks/samples.py): ``prediction``,
        ``reference``, ``score`` (the official per-item score, None where there is none), ``unparsed``,
        ``category``. Tasks override it; the default records the prediction only."""
        return {"prediction": self._predictions.get(sample_id), "reference": None, "score": None, "unparsed": False}

    def item_scores(self, predictions: Mapping[str, Any]) -> dict[str, float]:
        """Per-item scores that need the whole split (per-image CIDEr); after :meth:`evaluate`, on rank 0."""
        return {}


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
    samples: SampleLog | None = None,
    index_of: Mapping[str, int] | None = None,
    done: Mapping[str, Mapping[str, Any]] | None = None,
    prepare: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Generate over this rank's shard, gather and deduplicate predictions, score on rank 0; metrics on every rank.

    ``samples`` (rank 0's record file, None elsewhere) gets every batch's per-sample rows; ``index_of`` maps sample
    ids to dataset positions; ``done``: rows recorded by an earlier, interrupted run of this evaluation (rank 0),
    whose generations are taken instead of generated again; ``prepare``: called with each batch before generation
    (the vision cache puts the batch's visual tokens into it).
    """
    from tqdm import tqdm

    evaluator.reset()
    if done:
        evaluator.process(list(done), [row["generation"] for row in done.values()])
    for batch in tqdm(loader, desc=desc, disable=not dist.is_main(), dynamic_ncols=True):
        ids = [str(i) for i in batch["ids"]]
        if prepare is not None:
            prepare(batch)
        outputs = model.generate(batch, **gen_kwargs)
        evaluator.process(ids, outputs)
        if index_of is not None:
            rows = batch_rows(evaluator, ids, outputs, batch, index_of)
            gathered = dist.gather_objects(rows)
            if samples is not None:
                samples.append(row for part in gathered for row in part)
    merged = merge_predictions(dist.gather_objects(evaluator.predictions()))
    metrics = None
    if dist.is_main():
        metrics = evaluator.evaluate(merged)
        if predictions_path is not None:
            write_json_atomic(predictions_path, evaluator.format_predictions(merged))
        if samples is not None:
            samples.finish(evaluator.item_scores(merged))
    return dist.broadcast_object(metrics)


def batch_rows(evaluator: Evaluator, ids: Sequence[str], outputs: Sequence[str], batch: Mapping[str, Any],
               index_of: Mapping[str, int]) -> list[dict[str, Any]]:
    """The per-sample rows of one batch (prompts and demo ids as the collator passed them on)."""
    prompts = batch.get("prompts") or [None] * len(ids)
    demo_ids = batch.get("demo_ids") or [None] * len(ids)
    rows = []
    for sample_id, output, prompt, demos in zip(ids, outputs, prompts, demo_ids):
        row = {"id": sample_id, "index": index_of[sample_id], "prompt": prompt}
        if demos is not None:
            row["demo_ids"] = list(demos)
        rows.append({**row, "generation": output, **evaluator.item(sample_id)})
    return rows


def sample_ids(dataset: Any) -> list[str]:
    """The sample id of every position of ``dataset`` (without loading images where the dataset can say)."""
    if hasattr(dataset, "sample_id"):
        return [str(dataset.sample_id(i)) for i in range(len(dataset))]
    return [str(dataset[i]["id"]) for i in range(len(dataset))]
