"""COCO captions: the Karpathy split file for samples and demos, COCO-format ground truth for scoring.

    <root>/dataset_coco.json          {"images": [{split: train|restval|val|test, filepath, filename, cocoid,
                                                   sentences: [{raw, tokens}]}]}
    <root>/annotations/captions_val2014.json   {"images": [{id}], "annotations": [{image_id, id, caption}]}
    <root>/<filepath>/<filename>      e.g. val2014/COCO_val2014_000000391895.jpg

A vlmkit split is a list of Karpathy splits (``train`` = Karpathy train + restval by default). Evaluation samples are
one per image (id = str(cocoid)). Training samples are, with ``train_captions: all`` (default), one per (image,
sentence) — every reference caption is seen once per epoch, id ``<cocoid>_<k>`` — and with ``first`` one per image
with its first sentence. Demos use an image's first sentence, as the reference evaluation does.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmkit.data.records import RecordBuilder, RecordDataset, subset
from vlmkit.io import check_fields, read_json, unique_ids
from vlmkit.errors import ConfigError, DataError
from vlmkit.registry import DATASETS

HOW_TO_OBTAIN_COCO = (
    "download the Karpathy split file dataset_coco.json, the COCO 2014 train/val images and "
    "annotations/captions_val2014.json from cocodataset.org/#download, or generate a small stand-in with "
    "`vlmkit prepare-data synthetic-coco --out DIR`, and set datasets.coco_caption.root or VLMKIT_COCO_ROOT"
)
TRAIN_CAPTION_CHOICES = ("all", "first")
KARPATHY_FIELDS = {"filepath": str, "filename": str, "cocoid": int, "sentences": list}


class COCOCaptionDataset(RecordDataset):
    """Caption samples; ``gt_file`` is the COCO-format ground truth used for scoring (None: built from sentences)."""

    def __init__(self, *args: Any, gt_file: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gt_file = gt_file
        self._gt: dict[str, Any] | None = None

    def prompt_values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def train_answer(self, record: Mapping[str, Any]) -> str:
        return record["caption"]

    def demo_answer(self, record: Mapping[str, Any]) -> str:
        return record["captions"][0].strip()

    def extras(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"image_id": record["image_id"]}

    def ground_truth(self, image_ids: set[int] | None = None) -> dict[str, Any]:
        """COCO-format ground truth restricted to ``image_ids`` (all of this split's images when None)."""
        gt = self._ground_truth()
        if image_ids is None:
            image_ids = {r["image_id"] for r in self.records}
        return {"images": [im for im in gt["images"] if im["id"] in image_ids],
                "annotations": [a for a in gt["annotations"] if a["image_id"] in image_ids]}

    def _ground_truth(self) -> dict[str, Any]:
        if self._gt is None:
            if self.gt_file is not None:
                gt = read_json(self.gt_file, f"COCO {self.split} ground-truth file", HOW_TO_OBTAIN_COCO)
                if not isinstance(gt, dict) or "annotations" not in gt:
                    raise DataError(f"{self.gt_file} has no 'annotations'; it is not a COCO-format caption file")
                gt.setdefault("images", [{"id": i} for i in sorted({a["image_id"] for a in gt["annotations"]})])
            else:  # no file configured: the Karpathy sentences are COCO's own captions of these images
                gt = {"images": [], "annotations": []}
                for r in self.records:
                    gt["images"].append({"id": r["image_id"]})
                    for caption in r["captions"]:
                        gt["annotations"].append({"image_id": r["image_id"], "id": len(gt["annotations"]),
                                                  "caption": caption})
            self._gt = gt
        return self._gt


@DATASETS.register("coco_caption")
class COCOCaptionBuilder(RecordBuilder):
    """``datasets.coco_caption``: COCO captions from the Karpathy split file (train/restval/val/test) or shards."""

    name = "coco_caption"
    default_config = "datasets/coco_caption.yaml"
    how_to_obtain = HOW_TO_OBTAIN_COCO
    answer_field = "caption"

    def raw_records(self, split: str) -> list[dict[str, Any]]:
        path = Path(self.cfg["root"]) / self.cfg["karpathy_file"]
        data = read_json(path, "Karpathy split file", self.how_to_obtain)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{path} has no 'images' list; it is not the Karpathy dataset_coco.json")
        wanted = set(self.cfg["splits"][split])
        records = []
        for im in data["images"]:
            if not isinstance(im, Mapping) or im.get("split") not in wanted:
                continue
            what = f"image {im.get('cocoid', im.get('filename', '?'))!r}"
            check_fields(im, KARPATHY_FIELDS, what, path, self.how_to_obtain)
            for sentence in im["sentences"]:
                check_fields(sentence, {"raw": str}, f"a sentence of {what}", path, self.how_to_obtain)
            captions = [s["raw"] for s in im["sentences"]]
            if not captions:
                raise DataError(f"image {im.get('cocoid')} of {path} has no sentences")
            records.append({"id": str(im["cocoid"]), "image_id": im["cocoid"],
                            "image": f"{im['filepath']}/{im['filename']}", "captions": captions})
        unique_ids((r["image_id"] for r in records), "cocoid", path, self.how_to_obtain)
        return records

    def build(self, split: str, transform: Callable[[Any], Any] | None, train: bool) -> COCOCaptionDataset:
        records = self.records(split)
        if train:
            how = self.cfg["train_captions"]
            if how not in TRAIN_CAPTION_CHOICES:
                raise ConfigError(f"datasets.coco_caption.train_captions must be one of "
                                  f"{', '.join(TRAIN_CAPTION_CHOICES)}, got '{how}'")
            if how == "all":
                records = [{**r, "id": f"{r['id']}_{k}", "caption": c.strip()}
                           for r in records for k, c in enumerate(r["captions"])]
            else:
                records = [{**r, "caption": r["captions"][0].strip()} for r in records]
        else:
            records = subset(records, self.cfg.get("max_samples"), int(self.cfg["subset_seed"]))
        gt_name = (self.cfg.get("gt_files") or {}).get(split)
        return COCOCaptionDataset(records, self.image_source(), transform, self.template(), train, self.name, split,
                                  gt_file=Path(self.cfg["root"]) / gt_name if gt_name else None)
