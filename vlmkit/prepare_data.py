"""Prepare data: ``vlmkit prepare-data <command> ...`` (also ``python tools/prepare_data.py <command> ...``).

    synthetic-scienceqa --out DIR   a generated ScienceQA in the official layout (+ tokenizer and tiny LLaMA under
                                    DIR/weights/ unless --no-tiny-llama)
    synthetic-coco --out DIR        a generated COCO captions set (Karpathy json, COCO-format ground truth, JPEGs)
                                    + DIR/tokenizer/tokenizer.model trained on its text
    synthetic-vqav2 --out DIR       a generated VQAv2 set (official question/annotation files, JPEGs) + tokenizer
    shards --dataset D --splits S --out DIR   webdataset tar shards of a dataset split (builders read either form)

Errors a user can cause print one line and exit with status 2 (as every vlmkit command does).
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vlmkit.errors import DataError

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


# One entry per subcommand: its parser setup.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_synthetic_scienceqa, add_synthetic_flamingo, add_shards)


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
