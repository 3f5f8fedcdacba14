"""Synthetic ScienceQA generator, tokenizer trainer and tools/prepare_data.py synthetic-scienceqa."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.synthetic import scienceqa_corpus, train_sentencepiece, write_synthetic_scienceqa
from vlmkit.data.synthetic.scienceqa import BACKGROUND, COLORS, SHAPES

ROOT = Path(__file__).resolve().parents[1]


def _load_prepare_data():
    from vlmkit import prepare_data

    return prepare_data


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    write_synthetic_scienceqa(root, n_train=40, n_val=10, n_test=10, seed=3, image_size=32)
    problems = json.loads((root / "problems.json").read_text())
    splits = json.loads((root / "pid_splits.json").read_text())
    return root, problems, splits


def _category(problem):
    return "IMG" if problem["image"] else ("TXT" if problem["hint"] else "NO")


def test_layout_and_every_group_in_every_split(generated):
    root, problems, splits = generated
    assert {"train", "val", "test", "trainval", "minitrain", "minival", "minitest"} <= set(splits)
    assert splits["trainval"] == splits["train"] + splits["val"]
    assert len(splits["train"]) == 40 and set(splits["minitest"]) <= set(splits["test"])
    for split in ("train", "val", "test"):
        items = [problems[q] for q in splits[split]]
        assert all(p["split"] == split for p in items)
        assert {p["subject"] for p in items} == {"natural science", "social science", "language science"}
        assert {_category(p) for p in items} == {"IMG", "TXT", "NO"}
        bands = {"G1-6" if int(p["grade"][5:]) <= 6 else "G7-12" for p in items}
        assert bands == {"G1-6", "G7-12"}
    for qid, p in problems.items():
        assert set(p) >= {"question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic",
                          "category", "skill", "lecture", "solution", "split"}
        assert 2 <= len(p["choices"]) <= 5 and 0 <= p["answer"] < len(p["choices"])
        assert (root / "images" / p["split"] / qid / "image.png").is_file() == bool(p["image"])


def test_options_have_a_fixed_order_per_question(generated):
    _, problems, _ = generated
    by_question_kind = {}
    for p in problems.values():
        kind = p["category"]
        by_question_kind.setdefault(kind, set()).add(tuple(p["choices"]))
    assert all(len(orders) == 1 for orders in by_question_kind.values()), by_question_kind
    assert ("red", "green", "blue", "yellow") in {o for s in by_question_kind.values() for o in s}


def _drawn_pixels(path):
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    mask = np.any(pixels != np.array(BACKGROUND), axis=-1)
    return pixels, mask


def test_image_answers_are_in_the_pixels_only(generated):
    root, problems, _ = generated
    n_color = n_shape = 0
    for qid, p in problems.items():
        if not p["image"]:
            continue
        assert p["hint"] == ""  # nothing but the image tells the answer
        pixels, mask = _drawn_pixels(root / "images" / p["split"] / qid / "image.png")
        assert mask.sum() > 0
        answer = p["choices"][p["answer"]]
        assert answer not in p["question"]
        if answer in COLORS:
            n_color += 1
            mean = pixels[mask].mean(axis=0)
            nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - mean).sum())
            assert nearest == answer
        else:
            assert answer in SHAPES
            n_shape += 1
            rows, cols = np.nonzero(mask)
            fill = mask.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
            # filled fraction of the bounding box: square 1, circle ~pi/4, triangle ~1/2
            shape = "square" if fill > 0.95 else ("circle" if fill > 0.65 else "triangle")
            assert shape == answer, (qid, fill)
    assert n_color >= 5 and n_shape >= 5


def test_text_and_no_context_answers(generated):
    _, problems, _ = generated
    for p in problems.values():
        answer = p["choices"][p["answer"]]
        others = [c for i, c in enumerate(p["choices"]) if i != p["answer"]]
        if _category(p) == "TXT":
            assert answer in p["hint"] and not any(o in p["hint"] for o in others)
            assert answer not in p["question"]
        elif _category(p) == "NO":
            assert p["solution"] and answer in p["solution"]
            assert len(p["lecture"].split()) <= 12 and len(p["solution"].split()) <= 12  # short training targets


def test_deterministic_for_a_seed(tmp_path):
    def files(root):
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_synthetic_scienceqa(tmp_path / name, n_train=10, n_val=10, n_test=10, seed=seed, image_size=16)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_tokenizer_llama_ids_and_byte_fallback(generated, tmp_path):
    import sentencepiece as spm

    root, _, _ = generated
    path = train_sentencepiece(scienceqa_corpus(root), tmp_path / "tokenizer.model", vocab_size=400)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert 256 < sp.vocab_size() <= 400
    assert sp.piece_to_id("<0x0A>") in sp.encode("a\nb")  # a newline is a byte piece, as in LLaMA's tokenizer
    for text in ("Question: Which shape is in the picture?\nResponse:", "Ünïcode 字 never seen ☃  x"):
        ids = sp.encode(text)
        assert 0 not in ids  # no <unk>: unseen characters become byte pieces
        assert sp.decode(ids) == text  # newlines and rare characters survive (no normalisation)
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_sentencepiece(["abc"], tmp_path / "t2.model", vocab_size=100)


def test_prepare_data_cli(tmp_path, capsys):
    prepare = _load_prepare_data()
    out = tmp_path / "sqa"
    args = ["synthetic-scienceqa", "--out", str(out), "--n-train", "10", "--n-val", "10", "--n-test", "10",
            "--image-size", "16", "--no-tiny-llama"]
    assert prepare.main(args) == 0
    assert len(json.loads((out / "pid_splits.json").read_text())["test"]) == 10
    (out / "notes.txt").write_text("mine")
    assert prepare.main(args) == 2  # refuses a non-empty --out
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "--force" in err and "\n" not in err
    assert prepare.main([*args[:3], "--n-train", "12", *args[5:], "--force"]) == 0
    assert len(json.loads((out / "pid_splits.json").read_text())["train"]) == 12
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only what the generator writes
    assert prepare.main([*args, "--force", "--n-val", "-1"]) == 2


def test_prepare_data_tiny_llama(tmp_path):
    pytest.importorskip("vlmkit.models.tiny", reason="the tiny LLaMA writer is not installed")
    import sentencepiece as spm
    import torch

    prepare = _load_prepare_data()
    out = tmp_path / "sqa"
    assert prepare.main(["synthetic-scienceqa", "--out", str(out), "--n-train", "10", "--n-val", "10",
                         "--n-test", "10", "--image-size", "16"]) == 0
    params = json.loads((out / "weights" / "tiny" / "params.json").read_text())
    assert params["dim"] == 128 and params["n_layers"] == 4 and params["vocab_size"] == -1
    sp = spm.SentencePieceProcessor(model_file=str(out / "weights" / "tokenizer.model"))
    state = torch.load(out / "weights" / "tiny" / "consolidated.00.pth", weights_only=True)
    assert state["tok_embeddings.weight"].shape == (sp.vocab_size(), 128)
