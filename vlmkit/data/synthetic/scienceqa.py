"""A small synthetic ScienceQA in the official layout, for tests and the quickstart.

Five question types cover every subject (natural / social / language science), both grade bands and every context
category of the official scorer (IMG: image, TXT: hint, NO: neither):

    color      IMG  natural science   "Which color is the shape in the picture?"   answer only in the pixels
    shape      IMG  natural science   "Which shape is in the picture?"              answer only in the pixels
    direction  TXT  social science    the hint says where a person lives            answer only in the hint
    antonym    NO   language science  "Which word is the opposite of hot?"          answer follows from the question
    legs       NO   natural science   "How many legs does a spider have?"           answer follows from the question

Every question type lists the SAME options in the SAME order (colors are always (A) red (B) green (C) blue (D) yellow):
the letter then follows from the content, which a tiny model learns quickly; with shuffled options it must also learn
to map content to a position-dependent letter, which it learns very slowly. Lectures and solutions are one short
sentence each (they are training targets in QCM-ALE) and the vocabulary is small. docs/scienceqa.md explains this.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
#: Fill colours; fully saturated-ish and far apart so a tiny vision encoder separates them at 32 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 30)}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("north", "south", "east", "west")
NAMES = ("Tom", "Ann", "Sam", "Mia")
ANTONYMS = {"hot": "cold", "big": "small", "up": "down", "day": "night"}
LEGS = {"bird": "two", "dog": "four", "ant": "six", "spider": "eight"}
GRADE_BANDS = (tuple(f"grade{g}" for g in range(1, 7)), tuple(f"grade{g}" for g in range(7, 13)))
#: Side of the drawn shape as a fraction of the image side (a range: drawn uniformly). Measured for the CPU quickstart
#: (tiny ViT trained from scratch in 2 minutes): with sizes 0.55-0.8 and free positions shape questions stayed near
#: chance; with 0.7-0.78 and ±2 px, image accuracy varied 72-95 % between seeds; fixed size and position gave 90-100 %.
#: The answer still comes only from the pixels (colour and outline), which is what the quickstart must show.
SHAPE_FRACTION = (0.75, 0.75)
#: Largest offset of the shape from the image centre, in pixels (see SHAPE_FRACTION).
SHAPE_JITTER = 0
#: Composite splits of the official pid_splits.json hold this fraction of their base split (at least MINI_MIN ids).
MINI_FRACTION, MINI_MIN = 0.25, 10


@dataclass(frozen=True)
class Item:
    """What a question type makes of one random draw."""

    question: str
    choices: tuple[str, ...]
    answer: int
    solution: str
    hint: str = ""
    drawing: tuple[str, str] | None = None  # (shape, colour) to draw, for image questions
    caption: str = ""


@dataclass(frozen=True)
class QuestionType:
    name: str
    subject: str
    topic: str
    category: str
    skill: str
    lecture: str
    make: Callable[[random.Random], Item]


def _color(rng: random.Random) -> Item:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    return Item("Which color is the shape in the picture?", tuple(COLORS), list(COLORS).index(color),
                f"The shape is {color}.", drawing=(shape, color), caption=f"A {color} {shape} on a white background.")


def _shape(rng: random.Random) -> Item:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    return Item("Which shape is in the picture?", SHAPES, SHAPES.index(shape), f"The picture shows a {shape}.",
                drawing=(shape, color), caption=f"A {color} {shape} on a white background.")


def _direction(rng: random.Random) -> Item:
    name, direction = rng.choice(NAMES), rng.choice(DIRECTIONS)
    return Item(f"Where does {name} live?", DIRECTIONS, DIRECTIONS.index(direction),
                f"The text says {name} lives in the {direction}.", hint=f"{name} lives in the {direction} of the town.")


def _antonym(rng: random.Random) -> Item:
    word = rng.choice(list(ANTONYMS))
    options = tuple(ANTONYMS.values())
    return Item(f"Which word is the opposite of {word}?", options, options.index(ANTONYMS[word]),
                f"The opposite of {word} is {ANTONYMS[word]}.")


def _legs(rng: random.Random) -> Item:
    animal = rng.choice(list(LEGS))
    options = tuple(LEGS.values())
    return Item(f"How many legs does a {animal} have?", options, options.index(LEGS[animal]),
                f"A {animal} has {LEGS[animal]} legs.")


QUESTION_TYPES = (
    QuestionType("color", "natural science", "physics", "Identify colors", "Identify the color of a shape",
                 "Look at the picture to find the color.", _color),
    QuestionType("shape", "natural science", "physics", "Identify shapes", "Identify a shape",
                 "Look at the picture to find the shape.", _shape),
    QuestionType("direction", "social science", "geography", "Cardinal directions", "Use cardinal directions",
                 "Read the text to find the direction.", _direction),
    QuestionType("antonym", "language science", "vocabulary", "Antonyms", "Identify antonyms",
                 "Opposites are words with opposite meanings.", _antonym),
    QuestionType("legs", "natural science", "biology", "Animal bodies", "Count the legs of an animal",
                 "Animals have different numbers of legs.", _legs),
)


def draw_shape(shape: str, color: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    """One filled shape on a white background; size and position drawn from SHAPE_FRACTION and SHAPE_JITTER."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    side = max(3, round(size * rng.uniform(*SHAPE_FRACTION)))
    centre = (size - side) // 2
    x0, y0 = (max(0, min(size - side, centre + rng.randint(-SHAPE_JITTER, SHAPE_JITTER))) for _ in range(2))
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(x0 + (side - 1) / 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def _problem(kind: QuestionType, item: Item, grade: str, split: str) -> dict[str, Any]:
    return {"question": item.question, "choices": list(item.choices), "answer": item.answer, "hint": item.hint,
            "image": "image.png" if item.drawing else None, "task": "closed choice", "grade": grade,
            "subject": kind.subject, "topic": kind.topic, "category": kind.category, "skill": kind.skill,
            "lecture": kind.lecture, "solution": item.solution, "split": split}


def write_synthetic_scienceqa(out: Path, n_train: int = 200, n_val: int = 50, n_test: int = 50, seed: int = 0,
                              image_size: int = 32) -> None:
    """Write problems.json, pid_splits.json, captions.json and images/<split>/<qid>/image.png under ``out``.

    Items cycle through the question types and, every full cycle, the grade band, so any split of at least
    ``2 * len(QUESTION_TYPES)`` items covers every type, subject, category and grade band.
    """
    out = Path(out)
    rng = random.Random(seed)
    problems: dict[str, dict[str, Any]] = {}
    captions: dict[str, str] = {}
    pid_splits: dict[str, list[str]] = {}
    next_id = 1
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        pid_splits[split] = []
        for i in range(n):
            qid = str(next_id)
            next_id += 1
            kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]
            band = GRADE_BANDS[(i // len(QUESTION_TYPES)) % len(GRADE_BANDS)]
            item = kind.make(rng)
            problems[qid] = _problem(kind, item, rng.choice(band), split)
            if item.drawing is not None:
                shape, color = item.drawing
                image_dir = out / "images" / split / qid
                image_dir.mkdir(parents=True, exist_ok=True)
                draw_shape(shape, COLORS[color], image_size, rng).save(image_dir / "image.png")
                captions[qid] = item.caption
            pid_splits[split].append(qid)
    pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    for split in SPLITS:
        ids = pid_splits[split]
        pid_splits[f"mini{split}"] = ids[: min(len(ids), max(MINI_MIN, math.ceil(MINI_FRACTION * len(ids))))]

    out.mkdir(parents=True, exist_ok=True)
    (out / "problems.json").write_text(json.dumps(problems, indent=1))
    (out / "pid_splits.json").write_text(json.dumps(pid_splits, indent=1))
    (out / "captions.json").write_text(json.dumps({"captions": captions}, indent=1))


def scienceqa_corpus(root: Path, prompt_format: str = "QCM-ALE") -> list[str]:
    """Every prompt, target and caption text of a ScienceQA-layout directory (to train a tokenizer on)."""
    from vlmkit.processors.prompts import build_scienceqa_prompt

    problems = json.loads((Path(root) / "problems.json").read_text())
    captions_path = Path(root) / "captions.json"
    captions = json.loads(captions_path.read_text())["captions"] if captions_path.is_file() else {}
    texts: list[str] = []
    for qid, problem in problems.items():
        texts.extend(build_scienceqa_prompt(problem, prompt_format, captions.get(qid, "")))
    texts.extend(captions.values())
    return texts
