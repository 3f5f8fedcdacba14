#!/usr/bin/env python
"""Prepare data: `python tools/prepare_data.py <command> ...`.

    synthetic-scienceqa --out DIR   a generated ScienceQA in the official layout (+ tokenizer and tiny LLaMA under
                                    DIR/weights/ unless --no-tiny-llama)

Errors a user can cause print one line and exit with status 2 (as tools/train.py does).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without install

from vlmkit.cli import guarded  # noqa: E402
from vlmkit.errors import DataError  # noqa: E402

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


# One entry per subcommand: its parser setup. More generators (synthetic-coco, synthetic-vqav2) and shard writers
# (shards) are added here.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_synthetic_scienceqa,)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate or convert datasets for vlmkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
        p.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    args = parser.parse_args(argv)
    return guarded(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
