"""Per-rank memory of parameters, gradients and AdamW state, and step time, of DDP vs FSDP (2 CPU ranks, gloo).

    python benchmarks/fsdp_cpu.py --tokenizer data/coco_tiny/tokenizer/tokenizer.model   # launches torchrun itself

A small OpenFlamingo (random LLaMA of hidden 512 × 8 layers, frozen as in the 9B recipe; Perceiver + cross-attention
trainable) takes 5 timed training steps (after 2 warm-up steps) under each strategy. Bytes are counted from the tensors
each rank holds (for FSDP: its local shards), so they are exact, not sampled. The numbers that matter on GPUs are the
ratios; CPU step times only show the communication overhead of all-gathers over gloo.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LM = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
      "num_key_value_heads": 8, "tie_word_embeddings": False}
VISION = {"image_size": 64, "layers": 4, "width": 256, "head_width": 64, "patch_size": 16, "mlp_ratio": 4.0}


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def worker(tokenizer: str, strategy: str, out: Path) -> None:
    import torch
    import torch.distributed as tdist

    sys.path.insert(0, str(REPO))
    from vlmkit.engine.build import wrap_model
    from vlmkit.registry import MODELS

    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    cfg = {"arch": "openflamingo", "lm": {"path": None, "tiny": LM, "tokenizer": tokenizer},
           "vision": {"tiny": VISION, "weights": None},
           "perceiver": {"depth": 2, "heads": 8, "dim_head": 64, "num_latents": 32},
           "cross_attn": {"every_n_layers": 2, "heads": 8, "dim_head": 64}}
    model = MODELS.build(cfg)
    run = {"strategy": strategy, "optimizer": "adamw"}
    wrapped = wrap_model(model, run, torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    gen = torch.Generator().manual_seed(rank)
    samples = [{"id": str(i), "images": [torch.randn(3, 64, 64, generator=gen)], "prompt": "<image>a photo of",
                "target": " a red square on a blue background"} for i in range(4)]
    batch = model.collator(train=True)(samples)
    times = []
    for step in range(7):
        tdist.barrier()
        t0 = time.perf_counter()
        wrapped(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        tdist.barrier()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    result = {"strategy": strategy, "rank": rank,
              "params_all": local_bytes(model.parameters()), "params_trainable": local_bytes(trainable),
              "grads": local_bytes(p.grad for p in trainable), "optimizer": local_bytes(state),
              "step_s": sorted(times)[len(times) // 2]}
    (out / f"{strategy}_{rank}.json").write_text(json.dumps(result))
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a sentencepiece tokenizer.model (e.g. from prepare_data)")
    parser.add_argument("--out", default="runs/bench_fsdp")
    parser.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.worker:
        worker(args.tokenizer, args.worker, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    for strategy in ("ddp", "fsdp"):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__,
                        "--tokenizer", args.tokenizer, "--out", str(out), "--worker", strategy],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = {s: json.loads((out / f"{s}_0.json").read_text()) for s in ("ddp", "fsdp")}
    mib = 2**20
    print("| per rank (rank 0) | DDP | FSDP | FSDP / DDP |\n|---|---|---|---|")
    for key, label in (("params_all", "parameters (MiB)"), ("params_trainable", "trainable parameters (MiB)"),
                       ("grads", "gradients (MiB)"), ("optimizer", "AdamW state (MiB)"), ("step_s", "step time (s)")):
        a, b = rows["ddp"][key], rows["fsdp"][key]
        scale = 1 if key == "step_s" else mib
        print(f"| {label} | {a / scale:.3f} | {b / scale:.3f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
