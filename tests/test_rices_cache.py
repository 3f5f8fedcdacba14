"""`vlmkit prepare-data rices-features`: CLIP features of a split computed once (progress bar, one encoding per image),
cached with the vision weights' and the data's keys; kept when up to date, replaced only with --force; a sweep with
fewshot.rices uses the cache and refuses one made with other weights or other data (one line, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.config import load_config

PROJECT = str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml")
PREPARE, EVALUATE = str(REPO / "tools/prepare_data.py"), str(REPO / "tools/evaluate.py")


def _generate(out: Path, n_train: int) -> Path:
    res = run_tool([PREPARE, "synthetic-vqav2", "--out", str(out), "--n-train-images", str(n_train),
                    "--n-val-images", "3"])
    assert res.returncode == 0, res.stderr
    return out


def _options(data: Path, cache: Path, *extra: str) -> list[str]:
    return [f"datasets.vqav2.root={data}", f"model.lm.tokenizer={data}/tokenizer/tokenizer.model",
            "datasets.vqav2.fewshot.rices=true", f"datasets.vqav2.fewshot.rices_features_dir={cache}", *extra]


def _prepare(data: Path, cache: Path, *extra: str, args: tuple[str, ...] = ()):
    return run_tool([PREPARE, "rices-features", "--cfg-path", PROJECT, "--split", "train", "val", *args,
                     "--options", *_options(data, cache, *extra)])


def _sweep(data: Path, cache: Path, out: Path, *extra: str):
    return run_tool([EVALUATE, "--cfg-path", PROJECT, "--split", "val", "--shots", "2",
                     "--options", f"run.output_dir={out}", "run.generate.max_new_tokens=2",
                     *_options(data, cache, *extra)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("rices")
    data, other = _generate(root / "data", 12), _generate(root / "other_data", 14)
    cache = root / "cache"
    res = _prepare(data, cache)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "data": data, "other": other, "cache": cache, "res": res,
            "bytes": {s: (cache / f"{s}.pt").read_bytes() for s in ("train", "val")}}


def _questions(data: Path, split: str) -> list[dict]:
    name = {"train": "train2014", "val": "val2014"}[split]
    return json.loads((data / f"v2_OpenEnded_mscoco_{name}_questions.json").read_text())["questions"]


def test_cache_holds_one_feature_per_item_keyed_by_weights_and_data(prepared):
    from vlmkit.data.fewshot import FEATURE_KIND, data_key, vision_key
    from vlmkit.models.clip import build_clip_vision
    from vlmkit.processors.image import center_crop_transform
    from vlmkit.io import decode_image
    from vlmkit.registry import DATASETS

    res, cache, data = prepared["res"], prepared["cache"], prepared["data"]
    questions = _questions(data, "train")
    assert f"wrote {cache / 'train.pt'} ({len(questions)} items, 12 images, dim 64" in res.stdout
    assert "RICES features vqav2 train" in res.stderr and "12/12" in res.stderr  # the progress bar, over images
    cfg = load_config(PROJECT, _options(data, cache))
    stored = torch.load(cache / "train.pt", weights_only=True)
    assert stored["ids"] == [str(q["question_id"]) for q in questions]
    assert stored["features"].shape == (len(questions), 64)
    meta = stored["meta"]
    assert meta["vision"] == vision_key(cfg.model) and meta["vision"]["kind"] == FEATURE_KIND
    assert meta["vision"]["tiny"]["width"] == 64 and meta["vision"]["init_seed"] == 0
    train = DATASETS.build_named("vqav2", cfg.datasets.vqav2).build("train", None, train=False)
    assert meta["data_sha256"] == data_key(train) and (meta["dataset"], meta["split"]) == ("vqav2", "train")
    # every row is the CLIP embedding of that question's own image (the tiny tower seeded by model.init_seed)
    torch.manual_seed(0)
    visual = build_clip_vision("ViT-L-14-quickgelu", None, dict(cfg.model.vision.tiny), "").eval()
    transform = center_crop_transform(32, cfg.model.vision.image_mean, cfg.model.vision.image_std)
    for k in (0, 1, len(questions) - 1):
        q = questions[k]
        image = decode_image(data / "train2014" / f"COCO_train2014_{q['image_id']:012d}.jpg", "test image")
        with torch.no_grad():
            expected = visual(transform(image)[None])[0]
        assert torch.allclose(stored["features"][k], expected, atol=1e-5)
    same_image = [k for k, q in enumerate(questions) if q["image_id"] == questions[0]["image_id"]]
    assert len(same_image) > 1 and all(torch.equal(stored["features"][k], stored["features"][0]) for k in same_image)
    assert torch.load(cache / "val.pt", weights_only=True)["meta"]["split"] == "val"


def test_rerun_keeps_an_up_to_date_cache(prepared):
    res = _prepare(prepared["data"], prepared["cache"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{prepared['cache'] / 'train.pt'} is up to date" in res.stdout and "wrote" not in res.stdout
    assert (prepared["cache"] / "train.pt").read_bytes() == prepared["bytes"]["train"]


def test_other_weights_or_data_need_force(prepared, tmp_path):
    cache = prepared["cache"]
    res = _prepare(prepared["data"], cache, "model.init_seed=1")
    assert_one_error_line(res, f"{cache / 'train.pt'} holds RICES features made with other vision weights",
                          "--force")
    res = _prepare(prepared["other"], cache)
    assert_one_error_line(res, "made with other data", "--force")
    for split in ("train", "val"):
        assert (cache / f"{split}.pt").read_bytes() == prepared["bytes"][split]
    # --force replaces the cache (elsewhere, to keep the module's cache)
    copy = tmp_path / "cache"
    copy.mkdir()
    for split in ("train", "val"):
        (copy / f"{split}.pt").write_bytes(prepared["bytes"][split])
    res = _prepare(prepared["data"], copy, "model.init_seed=1", args=("--force",))
    assert res.returncode == 0, res.stderr[-2000:]
    stored = torch.load(copy / "train.pt", weights_only=True)
    assert stored["meta"]["vision"]["init_seed"] == 1
    assert not torch.equal(stored["features"], torch.load(cache / "train.pt", weights_only=True)["features"])


def test_sweep_uses_the_cache(prepared):
    from vlmkit.data.fewshot import rices_select
    from vlmkit.engine.build import build_task

    out = prepared["root"] / "sweep"
    res = _sweep(prepared["data"], prepared["cache"], out)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "fewshot.jsonl").read_text().splitlines()]
    assert [(r["shots"], r["sampler"]) for r in rows] == [(2, "rices")]
    protocol = json.loads((out / "protocol.json").read_text())["datasets"]["vqav2"]
    assert protocol["sampler"] == "rices" and "query_sets" not in protocol
    train = torch.load(prepared["cache"] / "train.pt", weights_only=True)
    assert protocol["rices"]["vision"] == train["meta"]["vision"]
    # the demos the sweep's datasets give each item: the cached nearest neighbours, most similar last
    cfg = load_config(PROJECT, _options(prepared["data"], prepared["cache"], "datasets.vqav2.fewshot.shots=2"))
    ds = build_task(cfg).build_datasets(None, splits=["val"], train=[])["vqav2"]["val"]
    val = torch.load(prepared["cache"] / "val.pt", weights_only=True)
    order = rices_select(val["features"], train["features"], 3).tolist()
    for i in range(len(ds)):
        row = order[val["ids"].index(ds[i]["id"])]
        assert ds[i]["demo_ids"] == [train["ids"][j] for j in row][-2:]


def test_sweep_refuses_a_cache_of_other_weights(prepared):
    out = prepared["root"] / "sweep_other_weights"
    res = _sweep(prepared["data"], prepared["cache"], out, "model.init_seed=1")
    assert_one_error_line(res, f"RICES feature file {prepared['cache'] / 'train.pt'} was made with other vision "
                               "weights", "init_seed 0", "init_seed 1", "vlmkit prepare-data rices-features")
    assert not out.exists()


def test_sweep_refuses_a_cache_of_other_data(prepared):
    out = prepared["root"] / "sweep_other_data"
    res = _sweep(prepared["other"], prepared["cache"], out)
    assert_one_error_line(res, "was made from other data than vqav2 split 'train'", "vlmkit prepare-data rices-features")
    assert not out.exists()


def test_sweep_without_cache_or_with_a_handmade_file(prepared, tmp_path):
    from vlmkit.data.fewshot import save_features

    out = tmp_path / "sweep"
    res = _sweep(prepared["data"], tmp_path / "empty", out)
    assert_one_error_line(res, "RICES feature file", "vlmkit prepare-data rices-features --cfg-path <yaml> --split train")
    handmade = tmp_path / "handmade"
    for split in ("train", "val"):
        stored = torch.load(prepared["cache"] / f"{split}.pt", weights_only=True)
        save_features(handmade / f"{split}.pt", stored["ids"], stored["features"])  # no cache keys
    res = _sweep(prepared["data"], handmade, out)
    assert_one_error_line(res, "records no vision weights")
    assert not out.exists()


@pytest.mark.parametrize("args, options, needle", [
    (["--split", "minival"], [], "no split 'minival'"),
    (["--split", "train"], ["datasets.vqav2.fewshot.rices_features_dir=null"], "pass --out DIR or set "
                                                                               "datasets.vqav2.fewshot.rices_features_dir"),
    (["--split", "train", "--batch-size", "0"], [], "--batch-size must be >= 1"),
])
def test_bad_arguments(prepared, tmp_path, args, options, needle):
    data = prepared["data"]
    res = run_tool([PREPARE, "rices-features", "--cfg-path", PROJECT, *args, "--options",
                    f"datasets.vqav2.root={data}", f"model.lm.tokenizer={data}/tokenizer/tokenizer.model",
                    f"datasets.vqav2.fewshot.rices_features_dir={tmp_path / 'cache'}", *options])
    assert_one_error_line(res, needle)
    assert not (tmp_path / "cache").exists()
