"""Webdataset tar shards of a dataset split, and map-style reading of them.

One shard entry per image: ``<key>.jpg`` (or ``.png``: the original file's bytes, not re-encoded) and ``<key>.json`` =
``{"split", "image", "records", "positions"}`` — every record (question / Karpathy image) of that image and its
position in the split. Reading loads the index of all shards (the JSON members and the byte ranges of the images), so
a dataset built from shards is map-style with the same ids, fields and order as one built from the official files;
images are read by seeking into the tar. Point a builder at shards with ``datasets.<name>.shards: <dir or brace
pattern>``; a directory means every ``*.tar`` in it, and the records of the requested split are taken from them.
"""
from __future__ import annotations

import argparse
import glob
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlmkit.errors import DataError, missing_file
from vlmkit.extras import require
from vlmkit.io import decode_image

if TYPE_CHECKING:  # vlmkit.data.validate imports torch; `vlmkit prepare-data --help` needs neither
    from vlmkit.data.validate import ImageRef

SHARD_PATTERN = "{split}-%06d.tar"  # ShardWriter fills %06d with the shard number
HOW_TO_MAKE_SHARDS = "write them with `vlmkit prepare-data shards --dataset NAME --splits SPLIT --out DIR`"


def write_shards(dataset_name: str, builder_cfg: Mapping[str, Any], split: str, out_dir: str | Path,
                 shard_size: int = 1000) -> list[Path]:
    """Write ``split`` of ``dataset_name`` (read from its official files) as tar shards of ``shard_size`` images."""
    from vlmkit.registry import DATASETS

    wds = require("webdataset", "shards", "writing shards")

    builder = DATASETS.get(dataset_name)(dict(builder_cfg, shards=None))
    records = builder.records(split)
    source = builder.image_source()
    by_image: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        by_image.setdefault(record["image"], []).append(position)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = str(out_dir / SHARD_PATTERN.format(split=split))
    existing = SHARD_PATTERN.format(split=split).replace("%06d", "*")
    for stale in out_dir.glob(existing):  # a rewrite with fewer shards must not leave old ones behind
        stale.unlink()
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for n, (image_key, positions) in enumerate(by_image.items()):
            ext = Path(image_key).suffix.lower().lstrip(".") or "jpg"
            meta = {"split": split, "image": image_key, "positions": positions,
                    "records": [records[p] for p in positions]}
            sink.write({"__key__": f"{split}_{n:09d}", ext: source.read_bytes(image_key),
                        "json": json.dumps(meta).encode()})
    return sorted(out_dir.glob(existing))


def expand_shards(spec: str | Path) -> list[Path]:
    """Shard files named by a directory (all its ``*.tar``), a brace pattern (``a-{000000..000003}.tar``) or a glob."""
    braceexpand = require("braceexpand", "shards", "reading shards")
    spec = str(spec)
    if Path(spec).is_dir():
        paths = sorted(Path(spec).glob("*.tar"))
    else:
        paths = []
        for part in braceexpand.braceexpand(spec):
            matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
            paths.extend(Path(p) for p in matches)
    if not paths:
        raise missing_file(spec, "webdataset shards", HOW_TO_MAKE_SHARDS)
    for path in paths:
        if not path.is_file():
            raise missing_file(path, "webdataset shard", HOW_TO_MAKE_SHARDS)
    return paths


class ShardIndex:
    """Records by split and the byte range of every image, for all shards of ``spec``."""

    def __init__(self) -> None:
        self._records: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._images: dict[str, tuple[Path, int, int]] = {}  # image key -> (tar, data offset, size)

    @classmethod
    def load(cls, spec: str | Path) -> "ShardIndex":
        index = cls()
        for path in expand_shards(spec):
            index._add_shard(path)
        for entries in index._records.values():
            entries.sort(key=lambda e: e[0])
        return index

    def _add_shard(self, path: Path) -> None:
        metas: dict[str, dict[str, Any]] = {}
        images: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if ext == "json":
                        metas[key] = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    else:
                        images[key] = (member.offset_data, member.size)
        except (tarfile.TarError, json.JSONDecodeError, OSError) as e:
            raise DataError(f"cannot read shard {path}: {' '.join(str(e).split())} ({HOW_TO_MAKE_SHARDS})") from e
        for key, meta in metas.items():
            if key not in images:
                raise DataError(f"shard {path} entry '{key}' has metadata but no image ({HOW_TO_MAKE_SHARDS})")
            self._images[meta["image"]] = (path, *images[key])
            entries = self._records.setdefault(meta["split"], [])
            entries.extend(zip(meta["positions"], meta["records"]))

    def splits(self) -> list[str]:
        return sorted(self._records)

    def records(self, split: str) -> list[dict[str, Any]]:
        return [record for _, record in self._records.get(split, [])]

    def shard_of(self, key: str) -> str:
        """The shard holding image ``key`` ("?" when none does)."""
        return str(self._images[key][0]) if key in self._images else "?"

    def read_bytes(self, key: str) -> bytes:
        if key not in self._images:
            raise DataError(f"image {key} is in no shard ({HOW_TO_MAKE_SHARDS})")
        path, offset, size = self._images[key]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)


class ShardImageSource:
    """Images read from shards by key (see :class:`vlmkit.data.records.ImageSource`)."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index

    def read_bytes(self, key: str) -> bytes:
        return self.index.read_bytes(key)

    def load(self, key: str) -> Image.Image:
        return decode_image(self.read_bytes(key), f"{key} in shard {self.index.shard_of(key)}")

    def cache_key(self, key: str) -> str:
        """A name of the image unique across sources (the vision cache's key)."""
        return f"{self.index.shard_of(key)}::{key}"

    def ref(self, key: str, used_by: str) -> ImageRef:
        from vlmkit.data.validate import ImageRef

        shard = self.index.shard_of(key)
        return ImageRef(f"{key} in shard {shard} ({used_by})", Path(shard), member=key, how=HOW_TO_MAKE_SHARDS,
                        read=lambda: self.index.read_bytes(key))


def add_shards_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlmkit prepare-data shards``."""
    parser.add_argument("--dataset", required=True, help="dataset name: vqav2 | coco_caption")
    parser.add_argument("--splits", nargs="+", required=True, help="splits to write, e.g. train val")
    parser.add_argument("--out", required=True, help="output directory for the .tar shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    parser.add_argument("--root", default=None, help="dataset root (default: the dataset config's root)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override keys of the dataset config, e.g. splits.val.image_dir=val2014")


def prepare_shards_main(args: argparse.Namespace) -> int:
    """Write shards of ``args.splits`` of ``args.dataset`` into ``args.out``; prints one line per split."""
    from omegaconf import OmegaConf

    from vlmkit.config import defaults_for

    defaults = defaults_for("datasets", args.dataset)
    if defaults is None:
        from vlmkit.registry import DATASETS

        DATASETS.get(args.dataset)  # unknown name: error listing the registered ones
        raise DataError(f"dataset {args.dataset} has no vlmkit/configs/datasets/{args.dataset}.yaml to read its layout from")
    cfg = OmegaConf.merge(defaults, OmegaConf.from_dotlist(list(args.options)))
    if args.root is not None:
        cfg.root = args.root
    plain = OmegaConf.to_container(cfg, resolve=True)
    for split in args.splits:
        paths = write_shards(args.dataset, plain, split, args.out, args.shard_size)
        print(f"{args.dataset} {split}: {len(paths)} shards in {args.out}")
    return 0


def shard_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``prepare_data.py shards`` arguments (for tests and the CLI)."""
    parser = argparse.ArgumentParser(prog="prepare_data.py shards")
    add_shards_arguments(parser)
    return parser.parse_args(list(argv))
