#!/usr/bin/env python
"""CLIP ViT patch tokens (OpenFlamingo's vision features) with PyTorch's native multi-head-attention fast path on and
off, on the same random tower and images, as ratios measured in one run.

    python benchmarks/vision_fastpath.py [--images 72] [--repeats 5]

In inference (no grad, eval mode) ``nn.MultiheadAttention`` may run a fused native kernel ("fast path") instead of its
Python composition; which is faster depends on the shapes and the machine. The towers: the scaled OpenFlamingo tower of
benchmarks/fewshot_throughput.py (width 128 × 12 layers, 224-pixel images, patch 14) and a ViT-B/16-shaped one
(width 768 × 12 layers) at fewer images. Outputs are compared (they agree to float rounding).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOWERS = {"scaled OpenFlamingo (w128 x 12, 224/14)": {"image_size": 224, "layers": 12, "width": 128, "head_width": 64,
                                                      "patch_size": 14, "mlp_ratio": 4.0, "embed_dim": 128},
          "ViT-B/16 shape (w768 x 12, 224/16)": {"image_size": 224, "layers": 12, "width": 768, "head_width": 64,
                                                 "patch_size": 16, "mlp_ratio": 4.0, "embed_dim": 512}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=72, help="images per call (8 queries x 9 images at 8 shots)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from vlmkit.models.clip import build_clip_vision, clip_patch_tokens

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| tower | images | fast path on | fast path off | off / on |\n|---|---|---|---|---|")
    for name, tiny in TOWERS.items():
        torch.manual_seed(0)
        visual = build_clip_vision("tiny", None, {**tiny, "quick_gelu": True}, "").eval()
        n = args.images if tiny["width"] <= 256 else max(8, args.images // 4)
        images = torch.randn(n, 3, tiny["image_size"], tiny["image_size"])
        results = {}
        for fast in (True, False):
            with torch.no_grad():
                results[fast] = (timed(lambda: clip_patch_tokens(visual, images, fastpath=fast), args.repeats),
                                 clip_patch_tokens(visual, images, fastpath=fast))
        torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-4)
        on, off = results[True][0], results[False][0]
        print(f"| {name} | {n} | {on:.3f} s | {off:.3f} s | {off / on:.2f} |")


if __name__ == "__main__":
    main()
