"""``datasets.image_text``: fine-tune and evaluate on your own image–text pairs from a YAML alone.

Each split is one file of ``image, prompt, answer`` items — JSON Lines or CSV (column names configurable) — with image
paths relative to ``root``. Items become records like the COCO-image benchmarks', so prompt templates, shards, few-shot
demos and both models work unchanged. Every item is checked when the split is read: a missing field, an empty answer
or a duplicated id is a one-line error naming the file and the line.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmkit.data.records import RecordBuilder, RecordDataset, subset
from vlmkit.errors import DataError, missing_file
from vlmkit.registry import DATASETS

HOW_TO_WRITE = ("write one JSON object per line (or a CSV with a header) with the fields image, prompt, answer; "
                "see docs/own_data.md")


def _answers(value: Any) -> list[str]:
    answers = value if isinstance(value, list) else str(value).split("|")
    return [str(a).strip() for a in answers if str(a).strip()]


def read_items(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, item) of a ``.jsonl`` or ``.csv`` file."""
    if not path.is_file():
        raise missing_file(path, "image-text split file", HOW_TO_WRITE)
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [(i + 2, dict(row)) for i, row in enumerate(csv.DictReader(f))]  # line 1 is the header
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i} is not a JSON object ({e.msg}); {HOW_TO_WRITE}") from e
        if not isinstance(item, dict):
            raise DataError(f"{path} line {i} is not a JSON object; {HOW_TO_WRITE}")
        items.append((i, item))
    return items


class ImageTextDataset(RecordDataset):
    """Samples of your own data; ``answers`` (all acceptable answers) ride along for scoring."""

    def prompt_values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"prompt": record["prompt"]}

    def train_answer(self, record: Mapping[str, Any]) -> str:
        return record["answers"][0]

    def demo_answer(self, record: Mapping[str, Any]) -> str:
        return record["answers"][0]

    def extras(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"answers": list(record["answers"])}


@DATASETS.register("image_text")
class ImageTextBuilder(RecordBuilder):
    """``datasets.image_text``: your own image, prompt, answer items from JSON Lines or CSV files."""

    name = "image_text"
    default_config = "datasets/image_text.yaml"
    how_to_obtain = HOW_TO_WRITE

    def raw_records(self, split: str) -> list[dict[str, Any]]:
        cfg = self.cfg
        path = Path(cfg["root"]) / str(cfg["splits"][split])
        fields = {"image": cfg["image_field"], "prompt": cfg["prompt_field"], "answer": cfg["answer_field"]}
        records, seen = [], set()
        for line, item in read_items(path):
            missing = [f for f in fields.values() if item.get(f) in (None, "")]
            if missing:
                raise DataError(f"{path} line {line} has no '{missing[0]}' (fields: {', '.join(sorted(item))}); "
                                f"set datasets.image_text.{'_field, '.join(fields)}_field to your column names")
            answers = _answers(item[fields["answer"]])
            sample_id = str(item[cfg["id_field"]]) if cfg.get("id_field") else f"{split}-{line}"
            if sample_id in seen:
                raise DataError(f"{path} line {line}: id '{sample_id}' appears twice; ids must be unique")
            seen.add(sample_id)
            records.append({"id": sample_id, "image": str(item[fields["image"]]),  # relative to root, or absolute
                            "prompt": str(item[fields["prompt"]]),
                            "answers": answers, "line": line})
        return records

    def build(self, split: str, transform: Callable[[Any], Any] | None, train: bool) -> ImageTextDataset:
        records = self.records(split)
        if not train:
            records = subset(records, self.cfg.get("max_samples"), int(self.cfg["subset_seed"]))
        return ImageTextDataset(records, self.image_source(), transform, self.template(), train, self.name, split)
