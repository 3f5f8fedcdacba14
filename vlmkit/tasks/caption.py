"""COCO caption task: caption generation scored with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr).

Postprocessing (``datasets.coco_caption.postprocess``, defaults from the reference evaluation): cut the generation at
"Output" (the model starting the next chunk), drop double quotes, strip. Scores use the ground truth of the evaluated
images only; results are written as ``[{image_id, caption}]``, one per image. Tables show the scores ×100.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from vlmkit.errors import DataError
from vlmkit.registry import TASKS
from vlmkit.tasks.generative import GenerationEvaluator, GenerativeTask


class CaptionEvaluator(GenerationEvaluator):
    def evaluate(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        if not predictions:
            raise DataError(f"no predictions to score for {self.dataset.name} split '{self.dataset.split}'")
        from vlmkit.metrics.caption import caption_scores

        results = self.format_predictions(predictions)
        ground_truth = self.dataset.ground_truth({r["image_id"] for r in results})
        scored = {a["image_id"] for a in ground_truth["annotations"]}
        unscored = [r["image_id"] for r in results if r["image_id"] not in scored]
        if unscored:
            raise DataError(f"{len(unscored)} evaluated images (e.g. {unscored[0]}) have no captions in the ground "
                            f"truth of {self.dataset.name} split '{self.dataset.split}'; check datasets."
                            f"{self.dataset.name}.gt_files")
        per_image: dict[int, float] = {}
        metrics: dict[str, Any] = {k: float(v) for k, v in
                                   caption_scores(ground_truth, results, per_image=per_image).items()}
        metrics["num_images"] = len(results)
        self._per_image = per_image
        return metrics

    def item(self, sample_id: str) -> dict[str, Any]:
        record = self.dataset.record_by_id(sample_id)
        prediction = self._predictions[sample_id]
        return {"prediction": prediction, "reference": list(record["captions"]), "score": None,
                "unparsed": not prediction}

    def item_scores(self, predictions: Mapping[str, Any]) -> dict[str, float]:
        """Per-image CIDEr of the last :meth:`evaluate` (the values pycocoevalcap averages)."""
        per_image = getattr(self, "_per_image", {})
        return {i: per_image[self.dataset.record_by_id(i)["image_id"]] for i in predictions
                if self.dataset.record_by_id(i)["image_id"] in per_image}

    def format_predictions(self, predictions: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Official results format: ``[{image_id: int, caption: str}]``, one per image, by image id."""
        rows = [{"image_id": self.dataset.record_by_id(i)["image_id"], "caption": c} for i, c in predictions.items()]
        return sorted(rows, key=lambda r: r["image_id"])


@TASKS.register("caption")
class CaptionTask(GenerativeTask):
    """``run.task: caption``: image captioning (COCO), generations scored with pycocoevalcap (CIDEr, BLEU, METEOR, ROUGE-L)."""

    main_metric = "CIDEr"
    table_metrics = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")
    table_scale = 100.0

    def build_evaluator(self, dataset_name: str, split: str, dataset: Dataset) -> CaptionEvaluator:
        return CaptionEvaluator(dataset, self.postprocess_cfg(dataset_name))
