"""VQAv2 task: short-answer generation scored by the official VQA accuracy.

Postprocessing (``datasets.vqav2.postprocess``, defaults from the reference evaluation): cut the generation at
"Question" / "Answer" / "Short" (the model starting the next chunk), then at ", ", then strip. Scores use the official
annotations of the evaluated questions only; results are written as ``[{question_id, answer}]``, one per question.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from vlmkit.errors import DataError
from vlmkit.registry import TASKS
from vlmkit.tasks.generative import GenerationEvaluator, GenerativeTask


class VQAEvaluator(GenerationEvaluator):
    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        if not predictions:
            raise DataError(f"no predictions to score for {self.dataset.name} split '{self.dataset.split}'")
        annotations = [self.dataset.annotation(i) for i in predictions]
        if any(a is None for a in annotations):
            # e.g. test-dev: no public annotations, the results file is what the official server scores
            return {"num_questions": len(predictions)}
        from vlmkit.metrics.vqa import vqa_scores

        questions = [self.dataset.question(i) for i in predictions]
        scores = vqa_scores(annotations, self.format_predictions(predictions), questions=questions)
        metrics: dict[str, Any] = {"overall": float(scores["overall"]), "num_questions": len(predictions)}
        for answer_type, value in scores.get("perAnswerType", {}).items():
            metrics[f"answer_type/{answer_type}"] = float(value)
        metrics["perQuestionType"] = dict(scores.get("perQuestionType", {}))
        return metrics

    def item(self, sample_id: str) -> dict[str, Any]:
        from vlmkit.metrics.vqa import vqa_question_accuracy

        record, prediction = self.dataset.record_by_id(sample_id), self._predictions[sample_id]
        answers = list(record["answers"])
        return {"prediction": prediction, "reference": answers,
                "score": vqa_question_accuracy(answers, prediction) if answers else None,
                "unparsed": not prediction, "category": [record["answer_type"]] if record.get("answer_type") else []}

    def format_predictions(self, predictions: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Official results format: ``[{question_id: int, answer: str}]``, one per question, by question id."""
        rows = [{"question_id": self.dataset.record_by_id(i)["question_id"], "answer": a} for i, a in predictions.items()]
        return sorted(rows, key=lambda r: r["question_id"])


@TASKS.register("vqa")
class VQATask(GenerativeTask):
    """``run.task: vqa``: open-ended visual question answering (VQAv2), scored with the official VQA accuracy."""

    main_metric = "overall"
    table_metrics = ("overall",)

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> VQAEvaluator:
        return VQAEvaluator(dataset, self.postprocess_cfg(dataset_name))
