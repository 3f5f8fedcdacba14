"""Prepare data: ``vlmkit prepare-data <command> ...`` (also ``python tools/prepare_data.py <command> ...``).

    synthetic-scienceqa --out DIR   a generated ScienceQA in the official layout (+ tokenizer and tiny LLaMA under
                                    DIR/weights/ unless --no-tiny-llama)
    synthetic-coco --out DIR        a generated COCO captions set (Karpathy json, COCO-format ground truth, JPEGs)
                                    + DIR/tokenizer/tokenizer.model trained on its text
    synthetic-vqav2 --out DIR       a generated VQAv2 set (official question/annotation files, JPEGs) + tokenizer
    shards --dataset D --splits S --out DIR   webdataset tar shards of a dataset split (builders read either form)
    rices-features --cfg-path P --split S...  the CLIP features RICES picks demos by, cached per split and keyed by
                                    the vision weights and the data (docs/fewshot.md)

Errors a user can cause print one line and exit with status 2 (as every vlmkit command does).
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlmkit.errors import DataError

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: Files and folders the ScienceQA generator writes; --force replaces exactly these and nothing else in --out.
SCIENCEQA_OUTPUTS = ("problems.json", "pid_splits.json", "captions.json", "images", "weights")


def prepare_out_dir(out: Path, force: bool, owned: Sequence[str]) -> None:
    """Refuse a non-empty ``out`` unless ``force``; with ``force`` remove only what the generator itself writes."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(f"--out {out} is not empty; pass --force to overwrite it or choose another directory")
        for name in owned:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def add_synthetic_scienceqa(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthetic-scienceqa", help="generate a ScienceQA-layout dataset (and a tiny LLaMA for it)")
    p.add_argument("--out", required=True, type=Path, help="output directory (becomes datasets.scienceqa.root)")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32, help="side of the generated PNG images in pixels")
    p.add_argument("--tiny-llama", action=argparse.BooleanOptionalAction, default=True,
                   help="also write DIR/weights/tokenizer.model and a random tiny LLaMA in Meta's layout (DIR/weights/tiny)")
    p.add_argument("--vocab-size", type=int, default=512, help="tokenizer vocabulary size (with --tiny-llama)")
    p.set_defaults(run=run_synthetic_scienceqa)


def run_synthetic_scienceqa(args: argparse.Namespace) -> int:
    from vlmkit.data.synthetic import scienceqa_corpus, write_synthetic_scienceqa, write_tiny_llama

    for name in ("n_train", "n_val", "n_test"):
        if getattr(args, name) < 0:
            raise DataError(f"--{name.replace('_', '-')} must be >= 0")
    if args.image_size < 8:
        raise DataError("--image-size must be at least 8 pixels")
    out: Path = args.out
    prepare_out_dir(out, args.force, SCIENCEQA_OUTPUTS)
    start = time.time()
    write_synthetic_scienceqa(out, args.n_train, args.n_val, args.n_test, seed=args.seed, image_size=args.image_size)
    print(f"wrote ScienceQA layout to {out} ({args.n_train}/{args.n_val}/{args.n_test} train/val/test problems, "
          f"{time.time() - start:.1f}s)")
    if args.tiny_llama:
        try:
            write_tiny_llama(out / "weights", scienceqa_corpus(out), seed=args.seed, vocab_size=args.vocab_size)
        except ValueError as e:  # a vocabulary too small for the corpus
            raise DataError(f"--vocab-size: {e}") from e
        print(f"wrote tokenizer and tiny LLaMA to {out / 'weights'}")
    return 0


#: Words the Flamingo prompts add around the data's own text, so the generated tokenizer has pieces for them.
FLAMINGO_PROMPT_TEXTS = ("Output:", "Question:", "Short answer:", "<image>", "<|endofchunk|>")


def _flamingo_corpus(out: Path, coco: bool) -> list[str]:
    import json

    if coco:
        karpathy = json.loads((out / "dataset_coco.json").read_text())
        texts = [s["raw"] for image in karpathy["images"] for s in image["sentences"]]
    else:
        texts = []
        for path in sorted(out.glob("*questions.json")):
            texts += [q["question"] for q in json.loads(path.read_text())["questions"]]
        for path in sorted(out.glob("*annotations.json")):
            texts += [a["answer"] for ann in json.loads(path.read_text())["annotations"] for a in ann["answers"]]
    return texts + list(FLAMINGO_PROMPT_TEXTS) * 20


def add_synthetic_flamingo(sub: argparse._SubParsersAction) -> None:
    from vlmkit.data.synthetic.coco_vqa import add_synthetic_arguments

    for name, coco in (("synthetic-coco", True), ("synthetic-vqav2", False)):
        p = sub.add_parser(name, help=f"generate a {'COCO captions' if coco else 'VQAv2'}-layout dataset + tokenizer")
        add_synthetic_arguments(p, coco=coco)
        p.add_argument("--vocab-size", type=int, default=512, help="size of the tokenizer trained on the generated text")
        p.set_defaults(run=lambda a, coco=coco: run_synthetic_flamingo(a, coco))


def run_synthetic_flamingo(args: argparse.Namespace, coco: bool) -> int:
    from vlmkit.data.synthetic import train_sentencepiece
    from vlmkit.data.synthetic.coco_vqa import synthetic_main

    out = Path(args.out)
    images = ("train2014", "val2014", "tokenizer")  # COCO image folders, named as the official download
    owned = ("dataset_coco.json", "annotations") + images if coco else images
    prepare_out_dir(out, args.force, owned + tuple(p.name for p in out.glob("v2_*.json")))
    synthetic_main(args, coco=coco)
    tokenizer = train_sentencepiece(_flamingo_corpus(out, coco), out / "tokenizer" / "tokenizer.model", args.vocab_size)
    print(f"wrote tokenizer {tokenizer}")
    return 0


def add_shards(sub: argparse._SubParsersAction) -> None:
    from vlmkit.data.shards import add_shards_arguments, prepare_shards_main

    p = sub.add_parser("shards", help="write webdataset tar shards of a dataset split")
    add_shards_arguments(p)
    p.set_defaults(run=prepare_shards_main)


def add_rices_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rices-features", help="compute and cache the CLIP image features RICES demos are chosen by")
    p.add_argument("--cfg-path", required=True, help="project YAML whose model.vision computes the features")
    p.add_argument("--split", dest="splits", nargs="+", required=True, metavar="SPLIT",
                   help="splits to cache: the demo pool (fewshot.demo_split, e.g. train) and the evaluated split(s)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers components (repeatable)")
    p.add_argument("--dataset", default=None, help="the dataset of the config (default: its one few-shot dataset)")
    p.add_argument("--out", type=Path, default=None,
                   help="cache directory (default: datasets.<name>.fewshot.rices_features_dir)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.set_defaults(run=run_rices_features)


def _rices_target(args: argparse.Namespace) -> tuple[DictConfig, str, Path]:
    """The config, the few-shot dataset and the cache directory of ``rices-features`` (checked)."""
    from vlmkit.config import load_config
    from vlmkit.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = load_config(args.cfg_path, args.options, args.imports)
    names = [str(n) for n, d in cfg.datasets.items() if d.get("fewshot") is not None]
    if args.dataset is not None and args.dataset not in names:
        raise ConfigError(f"--dataset {args.dataset}: the config's few-shot datasets are: {', '.join(names) or 'none'}")
    if args.dataset is None and len(names) != 1:
        raise ConfigError(f"rices-features: the config has {len(names)} few-shot datasets "
                          f"({', '.join(names) or 'none'}); choose one with --dataset")
    name = args.dataset or names[0]
    out = args.out or cfg.datasets[name].fewshot.get("rices_features_dir")
    if not out:
        raise ConfigError(f"rices-features: no cache directory; pass --out DIR or set "
                          f"datasets.{name}.fewshot.rices_features_dir")
    if Path(out).exists() and not Path(out).is_dir():
        raise DataError(f"--out {out} is a file, not a directory")
    return cfg, name, Path(out)


def run_rices_features(args: argparse.Namespace) -> int:
    """Cache ``<out>/<split>.pt`` per split, keyed by the vision weights and the split's data; a cache that matches is
    kept, one made with other weights or data is replaced only with ``--force``. Every split is computed before any
    file is written."""
    import torch
    from omegaconf import OmegaConf

    from vlmkit.data import fewshot as fs
    from vlmkit.registry import DATASETS

    cfg, name, out = _rices_target(args)
    dcfg = cfg.datasets[name]
    vision = fs.vision_key(cfg.model)
    device = str(cfg.run.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encode, transform = fs.build_rices_encoder(cfg.model, device)
    # the whole split: max_samples cuts evaluated items, and the cache serves every subset of them
    builder = DATASETS.build_named(name, OmegaConf.merge(dcfg, {"max_samples": None}) if "max_samples" in dcfg
                                   else dcfg, f"datasets.{name}")
    todo = []
    for split in dict.fromkeys(args.splits):
        dataset = builder.build(split, transform, train=False)
        path = out / f"{split}.pt"
        meta = fs.cache_meta(dataset, vision)
        if path.exists():
            old = fs.read_features(path).get("meta") or {}
            same = (old.get("vision") or {}).get("sha256") == vision["sha256"] and \
                old.get("data_sha256") == meta["data_sha256"]
            if same and not args.force:
                print(f"{path} is up to date ({len(dataset)} items, {fs.describe_vision(vision)})")
                continue
            if not same and not args.force:
                why = "other vision weights" if (old.get("vision") or {}).get("sha256") != vision["sha256"] \
                    else "other data"
                raise DataError(f"{path} holds RICES features made with {why}; pass --force to replace it, or "
                                "choose another --out")
        todo.append((dataset, path, meta))
    computed = []
    for dataset, path, meta in todo:
        start = time.time()
        ids, feats = fs.compute_image_features(dataset, encode, args.batch_size, progress=True)
        computed.append((dataset, path, meta, ids, feats, time.time() - start))
    for dataset, path, meta, ids, feats, seconds in computed:
        fs.save_features(path, ids, feats, meta=meta, images=[r["image"] for r in dataset.records])
        print(f"wrote {path} ({len(ids)} items, {len(set(r['image'] for r in dataset.records))} images, "
              f"dim {feats.shape[1]}, {fs.describe_vision(vision)}, {seconds:.1f}s)")
    return 0


# One entry per subcommand: its parser setup.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_synthetic_scienceqa, add_synthetic_flamingo, add_shards, add_rices_features)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from vlmkit.cli import guarded

    parser = argparse.ArgumentParser(prog=prog, description="Generate or convert datasets for vlmkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
        p.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    args = parser.parse_args(argv)
    return guarded(args.run, args)
