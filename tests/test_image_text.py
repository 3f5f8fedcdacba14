"""Your own data from a YAML alone (docs/own_data.md): image, prompt, answer items in JSON Lines or CSV train a tiny
OpenFlamingo that learns to read the image; the same files feed LaVIN; bad items are one-line errors."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.data.synthetic.coco_vqa import _draw
from vlmkit.errors import DataError
from vlmkit.registry import DATASETS


def write_items(root: Path, split: str, n: int, rng: random.Random, fmt: str = "jsonl") -> None:
    """Pictures of one coloured shape; the question asks its colour, so the answer is in the image only."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, scene = _draw(rng, 64)
        name = f"images/{split}_{i}.jpg"
        img.save(root / name)
        rows.append({"image": name, "prompt": "question: what color is the shape? short answer:",
                     "answer": scene["colour"]})
    if fmt == "csv":
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "prompt", "answer"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("my_data")
    rng = random.Random(0)
    write_items(root, "train", 480, rng)
    write_items(root, "val", 40, rng)
    write_items(root, "test", 40, rng, fmt="csv")
    return root


def flamingo_project(tmp_path: Path, data: Path, tokenizer: Path, **run: object) -> Path:
    quickstart = yaml.safe_load((REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml").read_text())
    model = {**quickstart["model"], "lm": {**quickstart["model"]["lm"], "tokenizer": str(tokenizer)}}
    project = {"model": model,
               "datasets": {"image_text": {"root": str(data), "splits": {"test": "test.csv"}}},
               "run": {**quickstart["run"], "task": "image_text", "output_dir": str(tmp_path / "run"), "epochs": 10,
                       "test_splits": ["test"], "generate": {"max_new_tokens": 3, "num_beams": 1}, **run}}
    path = tmp_path / "my_project.yaml"
    path.write_text(yaml.safe_dump(project))
    return path


def test_own_data_trains_a_model_that_reads_the_image(data: Path, tmp_path: Path, spm_tokenizer_path: Path) -> None:
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(flamingo_project(tmp_path, data,
                                                                                        spm_tokenizer_path))])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert metrics["num_samples"] == 40 and metrics["accuracy"] > 60, metrics  # chance: 25 (four colours)
    rows = json.loads((tmp_path / "run" / "predictions" / "image_text_test.json").read_text())
    assert sum(r["correct"] for r in rows) == round(metrics["accuracy"] * 40 / 100)
    assert {r["id"] for r in rows} == {f"test-{i}" for i in range(2, 42)}  # CSV ids: line numbers after the header


def test_the_same_files_feed_lavin(data: Path, tmp_path: Path, spm_tokenizer_path: Path) -> None:
    """LaVIN places its image tokens itself: with empty image/end-of-chunk tokens the items train and generate."""
    from test_lavin_model import build, trained_looking

    from vlmkit.models.tiny import TINY_LLAMA_PARAMS, write_meta_checkpoint

    model = trained_looking(build(write_meta_checkpoint(tmp_path / "llama", "tiny", TINY_LLAMA_PARAMS,
                                                        spm_tokenizer_path, seed=0)))
    cfg = {"root": str(data), "image_token": "", "end_of_chunk_token": ""}  # LaVIN's collator encodes the target
                                                                             # on its own (with its word-start mark)
    builder = DATASETS.build_named("image_text", cfg, "datasets.image_text")
    train = builder.build("train", model.image_transform, train=True)
    assert train[0]["prompt"] == "question: what color is the shape? short answer:" and train[0]["target"].strip()
    batch = model.collator(train=True)([train[i] for i in range(4)])
    assert torch.isfinite(model(batch)["loss"])
    val = builder.build("val", model.image_transform, train=False)
    outputs = model.generate(model.collator(train=False)([val[i] for i in range(3)]), max_new_tokens=3)
    assert len(outputs) == 3 and all(isinstance(o, str) for o in outputs)


def test_bad_items_are_one_line_errors(data: Path, tmp_path: Path, spm_tokenizer_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"image": "x.jpg", "prompt": "q"}\n')
    with pytest.raises(DataError, match=r"train.jsonl line 1 has no 'answer'"):
        DATASETS.build_named("image_text", {"root": str(bad)}, "datasets.image_text").build("train", None, True)
    (bad / "train.jsonl").write_text('{"image": "x.jpg", "prompt": "q", "answer": "a", "uid": 1}\n' * 2)
    with pytest.raises(DataError, match=r"line 2: id '1' appears twice"):
        DATASETS.build_named("image_text", {"root": str(bad), "id_field": "uid"}).build("train", None, True)
    (bad / "train.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"train.jsonl line 1 is not a JSON object"):
        DATASETS.build_named("image_text", {"root": str(bad)}).build("train", None, True)
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(flamingo_project(tmp_path, bad,
                                                                                        spm_tokenizer_path))])
    assert_one_error_line(res, "train.jsonl line 1 is not a JSON object")
