"""``run.task: image_text``: generate an answer for each of your own items and score it by exact match.

A prediction is right when, after the dataset's ``postprocess`` cut, lower-casing, collapsing whitespace and trimming
surrounding punctuation, it equals one of the item's answers treated the same way. Results are written as
``[{id, prediction, answers, correct}]``.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from vlmkit.errors import DataError
from vlmkit.registry import TASKS
from vlmkit.tasks.generative import GenerationEvaluator, GenerativeTask


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, trim surrounding punctuation and spaces."""
    return re.sub(r"\s+", " ", text.lower()).strip().strip(string.punctuation + " ")


class ExactMatchEvaluator(GenerationEvaluator):
    def correct(self, sample_id: str, prediction: str) -> bool:
        answers = self.dataset.record_by_id(sample_id)["answers"]
        return normalize_answer(prediction) in {normalize_answer(a) for a in answers}

    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        if not predictions:
            raise DataError(f"no predictions to score for {self.dataset.name} split '{self.dataset.split}'")
        right = sum(self.correct(i, p) for i, p in predictions.items())
        return {"accuracy": 100.0 * right / len(predictions), "num_samples": len(predictions)}

    def item(self, sample_id: str) -> dict[str, Any]:
        prediction = self._predictions[sample_id]
        return {"prediction": prediction, "reference": list(self.dataset.record_by_id(sample_id)["answers"]),
                "score": float(self.correct(sample_id, prediction)), "unparsed": not prediction}

    def format_predictions(self, predictions: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"id": i, "prediction": p, "answers": self.dataset.record_by_id(i)["answers"],
                 "correct": self.correct(i, p)} for i, p in predictions.items()]


@TASKS.register("image_text")
class ImageTextTask(GenerativeTask):
    """``run.task: image_text``: your own image–text pairs, scored by exact match against the given answers."""

    main_metric = "accuracy"
    table_metrics = ("accuracy",)

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> ExactMatchEvaluator:
        return ExactMatchEvaluator(dataset, self.postprocess_cfg(dataset_name))
