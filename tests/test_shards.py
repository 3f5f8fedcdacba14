"""Webdataset shards: the same samples as the official files (ids, fields, order, pixels), and bad shard input."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import ToTensor

from vlmkit.data.coco import COCOCaptionBuilder
from vlmkit.data.shards import prepare_shards_main, shard_args, write_shards
from vlmkit.data.synthetic.coco_vqa import write_synthetic_coco, write_synthetic_vqav2
from vlmkit.data.vqav2 import VQAv2Builder
from vlmkit.errors import DataError

from vlmkit.config import CONFIG_ROOT as CONFIGS  # noqa: E402


def cfg_for(name: str, root: Path, **overrides):
    cfg = OmegaConf.load(CONFIGS / "datasets" / f"{name}.yaml")
    cfg.root = str(root)
    return OmegaConf.merge(cfg, overrides)


def assert_same_samples(a, b) -> None:
    assert len(a) == len(b) and a.records == b.records
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for key in x:
            if key == "images":
                assert len(x[key]) == len(y[key]) and all(torch.equal(p, q) for p, q in zip(x[key], y[key]))
            elif key == "image_keys":  # the vision cache's key names where the image is stored: file vs shard member
                member = [k.split("::", 1)[1] for k in y[key]]
                assert len(member) == len(x[key]) and all(f.endswith("/" + m) for f, m in zip(x[key], member))
            else:
                assert x[key] == y[key], key


def test_vqav2_shards_round_trip(tmp_path: Path) -> None:
    root = write_synthetic_vqav2(tmp_path / "raw", n_train_images=7, n_val_images=3)
    cfg = cfg_for("vqav2", root)
    paths = write_shards("vqav2", cfg, "train", tmp_path / "shards", shard_size=3)
    write_shards("vqav2", cfg, "val", tmp_path / "shards", shard_size=3)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert names[:2] == ["train_000000000.jpg", "train_000000000.json"]  # one image stored once for its questions
    sharded = cfg_for("vqav2", tmp_path / "elsewhere", shards=str(tmp_path / "shards"))
    for split, train in (("train", True), ("val", False)):
        assert_same_samples(VQAv2Builder(cfg).build(split, ToTensor(), train),
                            VQAv2Builder(sharded).build(split, ToTensor(), train))
    # a brace pattern naming only the train shards
    braced = cfg_for("vqav2", root, shards=str(tmp_path / "shards" / "train-{000000..000002}.tar"))
    assert len(VQAv2Builder(braced).build("train", None, True)) == 21
    with pytest.raises(DataError, match="split 'val' is empty"):
        VQAv2Builder(braced).build("val", None, False)


def test_coco_shards_round_trip_via_cli_entry(tmp_path: Path) -> None:
    root = write_synthetic_coco(tmp_path / "raw", n_train=6, n_val=2, n_test=2)
    args = shard_args(["--dataset", "coco_caption", "--splits", "train", "test", "--out", str(tmp_path / "sh"),
                       "--shard-size", "4", "--root", str(root)])
    assert prepare_shards_main(args) == 0
    raw = cfg_for("coco_caption", root)
    sharded = cfg_for("coco_caption", root, shards=str(tmp_path / "sh"))
    assert_same_samples(COCOCaptionBuilder(raw).build("train", ToTensor(), True),
                        COCOCaptionBuilder(sharded).build("train", ToTensor(), True))
    assert_same_samples(COCOCaptionBuilder(raw).build("test", ToTensor(), False),
                        COCOCaptionBuilder(sharded).build("test", ToTensor(), False))
    # image bytes are stored unchanged
    rec = COCOCaptionBuilder(raw).build("test", None, False).records[0]
    stored = COCOCaptionBuilder(sharded).image_source().read_bytes(rec["image"])
    assert stored == (root / rec["image"]).read_bytes()


def test_bad_shards(tmp_path: Path) -> None:
    root = write_synthetic_vqav2(tmp_path / "raw", n_train_images=2, n_val_images=1)
    with pytest.raises(DataError, match="webdataset shards? not found: .*prepare-data shards"):
        VQAv2Builder(cfg_for("vqav2", root, shards=str(tmp_path / "none-{0..1}.tar"))).build("val", None, False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "val-000000.tar").write_bytes(b"not a tar file at all" * 10)
    with pytest.raises(DataError, match="cannot read shard .*val-000000.tar"):
        VQAv2Builder(cfg_for("vqav2", root, shards=str(tmp_path / "broken"))).build("val", None, False)
    # a corrupt image inside a shard is named by key and shard
    write_shards("vqav2", cfg_for("vqav2", root), "val", tmp_path / "ok", shard_size=10)
    shard = tmp_path / "ok" / "val-000000.tar"
    with tarfile.open(shard) as tar:
        members = {m.name: m for m in tar.getmembers()}
        offset = members["val_000000000.jpg"].offset_data
    data = bytearray(shard.read_bytes())
    data[offset:offset + 64] = b"\0" * 64
    shard.write_bytes(bytes(data))
    ds = VQAv2Builder(cfg_for("vqav2", root, shards=str(tmp_path / "ok"))).build("val", None, False)
    with pytest.raises(DataError, match=r"cannot decode image val2014/COCO_val2014_000000000003.jpg in shard .*val-000000"):
        ds[0]
    meta = json.loads(tarfile.open(shard).extractfile("val_000000000.json").read())
    assert meta["split"] == "val" and len(meta["records"]) == 3
