"""The ScienceQA task: datasets in the official layout, answer extraction, the official accuracy breakdown.

A generation is parsed with the reference's rule (the first ``The answer is X.``). Where it names no valid option the
reference picks an unseeded random option; vlmkit instead records index -1 — never equal to an answer, so the official
scorer counts it wrong — and reports how many there were as ``unparsed``. Results are written in the official format
``{"results": {qid: index}}`` (plus ``"outputs": {qid: generated text}``, which the official scorer ignores).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from vlmkit.processors.prompts import extract_answer
from vlmkit.registry import DATASETS, TASKS
from vlmkit.tasks.base import Evaluator, Task

#: The prediction recorded for a generation without a valid answer; no choice has this index, so it scores wrong.
UNPARSED = -1
#: The category table, in the paper's column order.
TABLE_COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average")


class ScienceQAEvaluator(Evaluator):
    """Predictions are ``{qid: {"pred": index or -1, "output": generated text}}``."""

    def __init__(self, problems: Mapping[str, Mapping[str, Any]]) -> None:
        self.problems = problems
        self.reset()

    def process(self, ids: list[str], outputs: list[str]) -> None:
        for qid, text in zip(ids, outputs):
            index = extract_answer(text, len(self.problems[qid]["choices"]))
            self._predictions[qid] = {"pred": UNPARSED if index is None else index, "output": text}

    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        from vlmkit.metrics.scienceqa import scienceqa_scores

        results = {qid: int(p["pred"]) for qid, p in predictions.items()}
        scores = dict(scienceqa_scores(self.problems, results))
        scores["unparsed"] = sum(1 for idx in results.values() if idx == UNPARSED)
        scores["n"] = len(results)
        return scores

    def item(self, sample_id: str) -> dict[str, Any]:
        from vlmkit.metrics.scienceqa import _columns

        pred, problem = self._predictions[sample_id]["pred"], self.problems[sample_id]
        return {"prediction": pred, "reference": {"answer": int(problem["answer"]), "choices": list(problem["choices"])},
                "score": float(pred == int(problem["answer"])), "unparsed": pred == UNPARSED,
                "category": _columns(problem)}

    def format_predictions(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        return {"results": {qid: int(p["pred"]) for qid, p in predictions.items()},
                "outputs": {qid: p["output"] for qid, p in predictions.items()}}


def format_table(metrics: Mapping[str, Any]) -> str:
    """The paper's category table (NAT SOC LAN TXT IMG NO G1-6 G7-12 Average) with two decimals, as two lines."""
    widths = [max(len(c), 6) for c in TABLE_COLUMNS]
    header = " ".join(c.rjust(w) for c, w in zip(TABLE_COLUMNS, widths))
    values = " ".join(f"{float(metrics[c]):.2f}".rjust(w) if c in metrics else "-".rjust(w)
                      for c, w in zip(TABLE_COLUMNS, widths))
    lines = [header, values]
    if metrics.get("unparsed"):
        lines.append(f"({metrics['unparsed']} of {metrics.get('n', '?')} generations named no valid option; counted wrong)")
    return "\n".join(lines)


@TASKS.register("scienceqa")
class ScienceQATask(Task):
    """``run.task: scienceqa``. Train splits get targets (the formatted output); val/test splits get prompts only."""

    main_metric = "Average"

    def build_datasets(self, model: Any, splits: Sequence[str] | None = None,
                       train: Sequence[str] | None = None) -> dict[str, dict[str, Dataset]]:
        splits, train_splits = self.run_splits(splits, train)
        transform = getattr(model, "image_transform", None)
        builders = {str(name): DATASETS.build_named(str(name), dcfg, f"datasets.{name}")
                    for name, dcfg in self.cfg.datasets.items()}
        return {name: {split: builder.build(split, transform, train=split in train_splits) for split in splits}
                for name, builder in builders.items()}

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> ScienceQAEvaluator:
        return ScienceQAEvaluator(dataset.problems)  # type: ignore[attr-defined]

    def format_table(self, metrics: Mapping[str, Any]) -> str:
        return format_table(metrics)
