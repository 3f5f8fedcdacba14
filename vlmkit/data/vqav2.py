"""VQAv2 in its official layout: question and annotation files per split, COCO images named by image id.

    <root>/v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{question_id, image_id, question}]}
    <root>/v2_mscoco_train2014_annotations.json           {"annotations": [{question_id, image_id, question_type,
                                                             answer_type, multiple_choice_answer, answers: [×10]}]}
    <root>/train2014/COCO_train2014_000000000009.jpg

File names per split live in ``vlmkit/configs/datasets/vqav2.yaml``. A split without an annotation file (test-dev) yields
questions only: it can be answered, not scored.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmkit.data.records import RecordBuilder, RecordDataset, subset
from vlmkit.errors import ConfigError, DataError
from vlmkit.io import check_fields, read_json, unique_ids
from vlmkit.metrics.vqa import ANSWERS_PER_QUESTION
from vlmkit.registry import DATASETS

HOW_TO_OBTAIN_VQAV2 = (
    "download the VQAv2 questions, annotations and COCO 2014 images from visualqa.org/download.html, or generate a "
    "small stand-in with `vlmkit prepare-data synthetic-vqav2 --out DIR`, and set datasets.vqav2.root or "
    "VLMKIT_VQAV2_ROOT"
)
ANSWER_CHOICES = ("first", "multiple_choice_answer", "most_common")
QUESTION_FIELDS = {"question_id": int, "image_id": int, "question": str}
ANNOTATION_FIELDS = {"question_id": int, "answers": list}


def _qid(item: Any) -> str:
    return repr(item.get("question_id")) if isinstance(item, Mapping) else "?"


def pick_answer(record: Mapping[str, Any], how: str) -> str:
    """The answer a record teaches or demonstrates.

    ``first`` is the first of the ten human answers (what the reference few-shot evaluation puts in its demos),
    ``multiple_choice_answer`` the official consensus answer, ``most_common`` the most frequent of the ten.
    """
    answers = record["answers"]
    if how == "multiple_choice_answer" and record.get("multiple_choice_answer") is not None:
        return str(record["multiple_choice_answer"])
    if not answers:
        raise DataError(f"VQAv2 question {record['question_id']} has no answers; a split used for training or as "
                        "demos needs an annotation file")
    if how == "first":
        return answers[0]
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)  # ties: the first of the tied answers, deterministically


class VQAv2Dataset(RecordDataset):
    """One sample per question; sample id = str(question_id)."""

    def __init__(self, *args: Any, train_answer: str, demo_answer: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._train_answer = train_answer
        self._demo_answer = demo_answer

    def prompt_values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"question": record["question"]}

    def train_answer(self, record: Mapping[str, Any]) -> str:
        return pick_answer(record, self._train_answer)

    def demo_answer(self, record: Mapping[str, Any]) -> str:
        return pick_answer(record, self._demo_answer)

    def extras(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"question_id": record["question_id"], "image_id": record["image_id"], "question": record["question"]}

    def annotation(self, sample_id: str) -> dict[str, Any] | None:
        """The official annotation of a question (None on a split without annotations)."""
        return self.record_by_id(sample_id)["annotation"]

    def question(self, sample_id: str) -> dict[str, Any]:
        r = self.record_by_id(sample_id)
        return {"question_id": r["question_id"], "image_id": r["image_id"], "question": r["question"]}


@DATASETS.register("vqav2")
class VQAv2Builder(RecordBuilder):
    """``datasets.vqav2``: VQAv2 questions + annotations in the official file layout, or shards."""

    name = "vqav2"
    default_config = "datasets/vqav2.yaml"
    how_to_obtain = HOW_TO_OBTAIN_VQAV2
    answer_field = "answer"

    def raw_records(self, split: str) -> list[dict[str, Any]]:
        files = self.cfg["splits"][split]
        root = Path(self.cfg["root"])
        qpath = root / files["questions"]
        questions = read_json(qpath, f"VQAv2 {split} questions file", self.how_to_obtain)
        questions = questions.get("questions") if isinstance(questions, dict) else None
        if not isinstance(questions, list):
            raise DataError(f"{qpath} has no 'questions' list; it is not a VQAv2 questions file")
        for q in questions:
            check_fields(q, QUESTION_FIELDS, f"question {_qid(q)}", qpath, self.how_to_obtain)
        unique_ids((q["question_id"] for q in questions), "question_id", qpath, self.how_to_obtain)
        annotations = self._annotations(split, root) if files.get("annotations") else {}
        records = []
        for q in questions:
            ann = annotations.get(q["question_id"])
            if annotations and ann is None:
                raise DataError(f"question {q['question_id']} of {qpath} has no annotation in "
                                f"{root / files['annotations']}; the two files are from different splits")
            records.append(self._record(q, ann, files))
        return records

    def _annotations(self, split: str, root: Path) -> dict[int, dict[str, Any]]:
        path = root / self.cfg["splits"][split]["annotations"]
        data = read_json(path, f"VQAv2 {split} annotations file", self.how_to_obtain)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise DataError(f"{path} has no 'annotations' list; it is not a VQAv2 annotations file")
        for a in data["annotations"]:
            what = f"annotation of question {_qid(a)}"
            check_fields(a, ANNOTATION_FIELDS, what, path, self.how_to_obtain)
            for answer in a["answers"]:
                check_fields(answer, {"answer": str}, f"an answer of {what}", path, self.how_to_obtain)
            if len(a["answers"]) != ANSWERS_PER_QUESTION and not self.cfg["allow_answer_count"]:
                raise DataError(f"{what} in {path} has {len(a['answers'])} answers, not VQAv2's "
                                f"{ANSWERS_PER_QUESTION} (the accuracy formula assumes 10); fix the file, or set "
                                f"datasets.{self.name}.allow_answer_count: true")
        unique_ids((a["question_id"] for a in data["annotations"]), "question_id", path, self.how_to_obtain)
        return {a["question_id"]: a for a in data["annotations"]}

    @staticmethod
    def _record(q: Mapping[str, Any], ann: Mapping[str, Any] | None, files: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": str(q["question_id"]),
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "image": f"{files['image_dir']}/{files['image_name'].format(image_id=q['image_id'])}",
            "question": q["question"],
            "answers": [a["answer"] for a in ann["answers"]] if ann else [],
            "multiple_choice_answer": ann.get("multiple_choice_answer") if ann else None,
            "question_type": ann.get("question_type") if ann else None,
            "answer_type": ann.get("answer_type") if ann else None,
            "annotation": ann,
        }

    def build(self, split: str, transform: Callable[[Any], Any] | None, train: bool) -> VQAv2Dataset:
        for key in ("train_answer", "demo_answer"):
            if self.cfg[key] not in ANSWER_CHOICES:
                raise ConfigError(f"datasets.vqav2.{key} must be one of {', '.join(ANSWER_CHOICES)}, "
                                  f"got '{self.cfg[key]}'")
        records = self.records(split)
        if not train:
            records = subset(records, self.cfg.get("max_samples"), int(self.cfg["subset_seed"]))
        return VQAv2Dataset(records, self.image_source(), transform, self.template(), train, self.name, split,
                            train_answer=self.cfg["train_answer"], demo_answer=self.cfg["demo_answer"])
