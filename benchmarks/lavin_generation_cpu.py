#!/usr/bin/env python
"""Generation speed of LaVIN on the CPU, as ratios measured in one run.

Compares, on the same random-weight model (LLaMA dim 256 × 4 layers, tiny CLIP) and the same 16 prompts:
  * KV-cache decoding (vlmkit's default) against recomputing the whole sequence every step (the baseline);
  * one left-padded batch of 16 against 16 single-sample calls.
Usage: python benchmarks/lavin_generation_cpu.py [--tokens 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(tmp: Path):
    from conftest import train_tokenizer

    from vlmkit.models.lavin import LaVIN
    from vlmkit.models.tiny import tiny_lavin_config, write_meta_checkpoint

    tok = train_tokenizer(tmp / "tokenizer.model")
    params = {"dim": 256, "n_layers": 4, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": -1}
    write_meta_checkpoint(tmp, "tiny", params, tok, seed=0)
    return LaVIN.from_config(tiny_lavin_config(tmp))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp)).eval()
    from PIL import Image

    image = model.image_transform(Image.new("RGB", (32, 32), (200, 30, 30)))
    samples = [{"id": str(i), "images": [image] if i % 2 else [],
                "prompt": "Question: which color is shown in the picture? " * (1 + i % 3) + "\nResponse:", "target": ""}
               for i in range(16)]
    collate = model.collator(train=False)
    batch = collate(samples)
    singles = [collate([s]) for s in samples]
    gen = {"max_new_tokens": args.tokens, "temperature": 0.0}
    # The model stops at EOS; a random model rarely emits it, so every call decodes ~args.tokens steps.
    t_cache = timed(lambda: model.generate(batch, use_cache=True, **gen), args.repeats)
    t_nocache = timed(lambda: model.generate(batch, use_cache=False, **gen), args.repeats)
    t_single = timed(lambda: [model.generate(b, use_cache=True, **gen) for b in singles], args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} new tokens, batch 16")
    print(f"| KV cache, batch 16            | {t_cache:7.3f} s | 1.00x |")
    print(f"| recompute each step, batch 16 | {t_nocache:7.3f} s | {t_nocache / t_cache:.2f}x slower |")
    print(f"| KV cache, 16 single calls     | {t_single:7.3f} s | {t_single / t_cache:.2f}x slower |")


if __name__ == "__main__":
    main()
