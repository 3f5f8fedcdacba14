"""Small stand-ins for VQAv2 and COCO captions in the official layouts, with answers determined by the image.

Each image shows 1-3 copies of one shape (circle / square / triangle) in one colour on a plain background, so the
question answers (colour, count, presence) and the captions follow from what is drawn: a model that scores well
must look at the image. A few of the ten VQA answers disagree (another value, or a number written as a word), as
real annotators do, which exercises the official scorer's consensus and normalisation rules.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
MAX_COUNT = 3
ANSWERS_PER_QUESTION = 10  # as in VQAv2
DISAGREEMENT_RATE = 0.3    # share of questions where some annotators give another answer
SENTENCES_PER_IMAGE = 5    # as in COCO
JPEG_QUALITY = 90


def _draw(rng: random.Random, size: int) -> tuple[Image.Image, dict[str, Any]]:
    """An image and what is in it: {colour, shape, count, background}."""
    scene = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "count": rng.randint(1, MAX_COUNT),
             "background": rng.choice(list(BACKGROUNDS))}
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    cell = size // 2  # four cells, one shape per cell, so shapes never overlap and counting is unambiguous
    cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], scene["count"])
    for row, col in cells:
        pad = cell // 6
        x0, y0, x1, y1 = col * cell + pad, row * cell + pad, (col + 1) * cell - pad, (row + 1) * cell - pad
        fill = COLOURS[scene["colour"]]
        if scene["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif scene["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return img, scene


def _plural(scene: dict[str, Any]) -> str:
    return scene["shape"] + ("s" if scene["count"] > 1 else "")


def _questions(rng: random.Random, scene: dict[str, Any]) -> list[dict[str, Any]]:
    """Colour, count and presence questions with their true answer, wrong-answer pool, type and answer type."""
    asked = rng.choice(SHAPES)
    colour_q = ("What color are the {}?" if scene["count"] > 1 else "What color is the {}?").format(_plural(scene))
    return [
        {"question": colour_q, "answer": scene["colour"], "wrong": [c for c in COLOURS if c != scene["colour"]],
         "question_type": "what color are the" if scene["count"] > 1 else "what color is the", "answer_type": "other"},
        {"question": f"How many {scene['shape']}s are there?", "answer": str(scene["count"]),
         "wrong": [str(n) for n in range(1, MAX_COUNT + 1) if n != scene["count"]] + [COUNT_WORDS[scene["count"]]],
         "question_type": "how many", "answer_type": "number"},
        {"question": f"Is there a {asked}?", "answer": "yes" if asked == scene["shape"] else "no",
         "wrong": ["no" if asked == scene["shape"] else "yes"], "question_type": "is there a",
         "answer_type": "yes/no"},
    ]


def _ten_answers(rng: random.Random, q: dict[str, Any]) -> list[dict[str, Any]]:
    answers = [q["answer"]] * ANSWERS_PER_QUESTION
    if rng.random() < DISAGREEMENT_RATE:
        for j in rng.sample(range(ANSWERS_PER_QUESTION), rng.randint(1, 3)):
            answers[j] = rng.choice(q["wrong"])
    return [{"answer": a, "answer_confidence": "yes" if a == q["answer"] else "maybe", "answer_id": j + 1}
            for j, a in enumerate(answers)]


def _captions(scene: dict[str, Any]) -> list[str]:
    n, colour, shapes, bg = COUNT_WORDS[scene["count"]], scene["colour"], _plural(scene), scene["background"]
    return [f"A picture of {n} {colour} {shapes}.", f"{n.capitalize()} {colour} {shapes} on a {bg} background.",
            f"An image showing {n} {colour} {shapes}.", f"There {'are' if scene['count'] > 1 else 'is'} {n} {colour} "
            f"{shapes} in the picture.", f"{n} {colour} {shapes}"][:SENTENCES_PER_IMAGE]


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=JPEG_QUALITY)


def write_synthetic_vqav2(out: Path, n_train_images: int = 32, n_val_images: int = 16, seed: int = 0,
                          image_size: int = 64) -> Path:
    """VQAv2 layout under ``out``: questions/annotations files for train2014 and val2014, 3 questions per image."""
    out = Path(out)
    rng = random.Random(seed)
    for split, n_images, first_id in (("train", n_train_images, 1), ("val", n_val_images, 1 + n_train_images)):
        questions, annotations = [], []
        for image_id in range(first_id, first_id + n_images):
            img, scene = _draw(rng, image_size)
            _save(img, out / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg")
            for k, q in enumerate(_questions(rng, scene)):
                qid = image_id * 1000 + k  # VQAv2's own convention
                answers = _ten_answers(rng, q)
                counts = Counter(a["answer"] for a in answers)
                questions.append({"question_id": qid, "image_id": image_id, "question": q["question"]})
                annotations.append({"question_id": qid, "image_id": image_id, "question_type": q["question_type"],
                                    "answer_type": q["answer_type"], "answers": answers,
                                    "multiple_choice_answer": counts.most_common(1)[0][0]})
        (out / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(
            json.dumps({"data_subtype": f"{split}2014", "task_type": "Open-Ended", "questions": questions}))
        (out / f"v2_mscoco_{split}2014_annotations.json").write_text(
            json.dumps({"data_subtype": f"{split}2014", "annotations": annotations}))
    return out


def write_synthetic_coco(out: Path, n_train: int = 32, n_val: int = 8, n_test: int = 8, seed: int = 0,
                         image_size: int = 64) -> Path:
    """COCO caption layout under ``out``: Karpathy dataset_coco.json, annotations/captions_val2014.json, images."""
    out = Path(out)
    rng = random.Random(seed)
    images, gt_images, gt_annotations = [], [], []
    plan = [("train", "train2014")] * n_train + [("val", "val2014")] * n_val + [("test", "val2014")] * n_test
    for cocoid, (split, folder) in enumerate(plan, start=1):
        img, scene = _draw(rng, image_size)
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        _save(img, out / folder / filename)
        if split == "train" and cocoid % 4 == 0:
            split = "restval"  # Karpathy's extra training images, so that train = train + restval is exercised
        captions = _captions(scene)
        images.append({"split": split, "filepath": folder, "filename": filename, "cocoid": cocoid, "imgid": cocoid - 1,
                       "sentences": [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in captions]})
        if folder == "val2014":
            gt_images.append({"id": cocoid, "file_name": filename})
            for c in captions:
                gt_annotations.append({"image_id": cocoid, "id": len(gt_annotations) + 1, "caption": c})
    (out / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"info": {"description": "synthetic"}, "images": gt_images, "annotations": gt_annotations}))
    return out


def add_synthetic_arguments(parser: argparse.ArgumentParser, coco: bool) -> None:
    """Arguments of ``vlmkit prepare-data synthetic-vqav2`` (coco=False) / ``synthetic-coco`` (coco=True)."""
    parser.add_argument("--out", required=True, help="output directory (the dataset root)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    if coco:
        parser.add_argument("--n-train", type=int, default=32)
        parser.add_argument("--n-val", type=int, default=8)
        parser.add_argument("--n-test", type=int, default=8)
    else:
        parser.add_argument("--n-train-images", type=int, default=32)
        parser.add_argument("--n-val-images", type=int, default=16)


def synthetic_main(args: argparse.Namespace, coco: bool) -> int:
    if coco:
        write_synthetic_coco(Path(args.out), args.n_train, args.n_val, args.n_test, args.seed, args.image_size)
    else:
        write_synthetic_vqav2(Path(args.out), args.n_train_images, args.n_val_images, args.seed, args.image_size)
    print(f"wrote synthetic {'COCO captions' if coco else 'VQAv2'} to {args.out}")
    return 0
