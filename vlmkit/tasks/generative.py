"""What the VQAv2 and COCO-caption tasks share: dataset building (with few-shot wrapping), postprocessing, tables.

Datasets come from ``cfg.datasets`` (name → DATASETS builder); training splits are ``cfg.run.train_splits`` (a split
listed there is built for training even if it is also evaluated), evaluation splits ``val_splits`` + ``test_splits``.
An evaluation split is wrapped in :class:`vlmkit.data.fewshot.FewShotDataset` when the dataset's ``fewshot.shots`` is
an int; with ``shots: null`` it is the bare query prompt (how a fine-tuned model is evaluated).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf
from torch.utils.data import Dataset

from vlmkit.data.records import RecordDataset
from vlmkit.registry import DATASETS
from vlmkit.tasks.base import Evaluator, Task


def postprocess_generation(text: str, stop_words: Sequence[str] = (), split_at: str | None = None,
                           strip_quotes: bool = False) -> str:
    """Cut a generation at the first stop word, then at ``split_at``; optionally drop double quotes; strip."""
    if stop_words:
        text = re.split("|".join(re.escape(w) for w in stop_words), text, maxsplit=1)[0]
    if split_at:
        text = text.split(split_at, 1)[0]
    if strip_quotes:
        text = text.replace('"', "")
    return text.strip()


def base_dataset(dataset: Dataset) -> RecordDataset:
    """The record dataset under a few-shot wrapper (or the dataset itself)."""
    return getattr(dataset, "query_dataset", dataset)  # type: ignore[return-value]


class GenerationEvaluator(Evaluator):
    """Postprocesses generations by the dataset config's ``postprocess`` section and keeps them by sample id."""

    def __init__(self, dataset: Dataset, postprocess: Mapping[str, Any]) -> None:
        self.dataset = base_dataset(dataset)
        self.stop_words = list(postprocess.get("stop_words") or [])
        self.split_at = postprocess.get("split_at")
        self.strip_quotes = bool(postprocess.get("strip_quotes", False))
        self.reset()

    def postprocess(self, text: str) -> str:
        return postprocess_generation(text, self.stop_words, self.split_at, self.strip_quotes)

    def process(self, ids: list[str], outputs: list[str]) -> None:
        for sample_id, text in zip(ids, outputs):
            self._predictions[str(sample_id)] = self.postprocess(text)


class GenerativeTask(Task):
    """Base of the VQA and caption tasks."""

    #: metrics shown by :meth:`format_table` and how to scale them for display
    table_metrics: tuple[str, ...] = ()
    table_scale: float = 1.0

    def build_datasets(self, model: Any, splits: Sequence[str] | None = None,
                       train: Sequence[str] | None = None) -> dict[str, dict[str, Dataset]]:
        """``{dataset: {split: Dataset}}``; a split in ``train`` is built for training even if it is also evaluated."""
        splits, train_splits = self.run_splits(splits, train)
        eval_splits = [s for s in splits if s not in train_splits]
        transform = getattr(model, "image_transform", None)
        out: dict[str, dict[str, Dataset]] = {}
        for name, dcfg in self.cfg.datasets.items():
            builder = DATASETS.build_named(str(name), dcfg, f"datasets.{name}")
            sets: dict[str, Dataset] = {s: builder.build(s, transform, train=True) for s in train_splits}
            fewshot = dcfg.get("fewshot")
            demos = None
            for split in dict.fromkeys(eval_splits):
                dataset = builder.build(split, transform, train=False)
                if fewshot is not None and fewshot.get("shots") is not None:
                    from vlmkit.data.fewshot import wrap_fewshot

                    if demos is None:  # the whole demo split: max_samples cuts the evaluated items only
                        pool = DATASETS.build_named(str(name), OmegaConf.merge(dcfg, {"max_samples": None}),
                                                    f"datasets.{name}") if "max_samples" in dcfg else builder
                        demos = pool.build(str(fewshot["demo_split"]), transform, train=False)
                    dataset = wrap_fewshot(dataset, demos, fewshot)
                sets[split] = dataset
            out[str(name)] = sets
        return out

    def postprocess_cfg(self, dataset_name: str) -> Mapping[str, Any]:
        return self.cfg.datasets[dataset_name].get("postprocess") or {}

    def format_table(self, metrics: Mapping[str, Any]) -> str:
        """A Markdown table of the headline metrics (captions ×100, as papers report them)."""
        names = [m for m in self.table_metrics if isinstance(metrics.get(m), (int, float))]
        extra = sorted(k for k, v in metrics.items()
                       if isinstance(v, (int, float)) and k not in names and not k.startswith("num_"))
        rows = [f"| {m} | {metrics[m] * self.table_scale:.2f} |" for m in names + extra]
        counts = [f"| {k} | {metrics[k]} |" for k in sorted(metrics) if k.startswith("num_")]
        return "\n".join(["| metric | value |", "|---|---|", *rows, *counts])
