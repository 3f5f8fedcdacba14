"""Run by tests/test_fsdp.py under torchrun (2 CPU ranks): generation with FSDP-sharded models equals generation with
the unsharded model, also when one rank's batch finishes many steps before the other's (the finished rank must keep
stepping, or the other rank's all-gathers would wait forever).

Usage: fsdp_generation_script.py <tokenizer.model> <tiny LLaMA Meta root> <out dir>; writes <out dir>/rank<r>.json.
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_flamingo_model import randomize_trainable, tiny_config  # noqa: E402
from test_lavin_model import greedy_by_full_forward, trained_looking  # noqa: E402

from vlmkit.engine.fsdp import shard_model  # noqa: E402
from vlmkit.models.lavin import LaVIN  # noqa: E402
from vlmkit.models.tiny import tiny_lavin_config  # noqa: E402
from vlmkit.registry import MODELS  # noqa: E402

MAX_NEW = 6
RUN = {"strategy": "fsdp", "optimizer": "adamw"}


def make_batch(model, rank, prompt):
    """One sample on rank 0 (it will stop early), two on rank 1 (they run to MAX_NEW)."""
    gen = torch.Generator().manual_seed(10 + rank)
    samples = [{"id": f"{rank}-{i}", "images": [torch.randn(3, 32, 32, generator=gen)],
                "prompt": prompt + " a" * (i + rank), "target": ""} for i in range(1 + rank)]
    return model.collator(train=False)(samples)


def early_stop_token(ids):
    """A token the greedy continuation first emits at step >= 1 (else its first token): made EOS, generation stops
    right there, long before MAX_NEW."""
    return next((t for k, t in enumerate(ids) if k >= 1 and t not in ids[:k]), ids[0])


def main() -> None:
    tokenizer, llama_root, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    device = torch.device("cpu")
    results = {}

    flamingo = MODELS.build(tiny_config(tokenizer)).eval()
    randomize_trainable(flamingo)
    batch = make_batch(flamingo, rank, "<image>a photo of")
    if rank == 0:  # rank 0 now finishes within a few tokens, rank 1 only after MAX_NEW
        flamingo.eoc_token_id = early_stop_token(flamingo.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1)[0].tolist())
    reference = {f"beams{b}": flamingo.generate(batch, max_new_tokens=MAX_NEW, num_beams=b) for b in (1, 3)}
    reference["ids"] = flamingo.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1).tolist()
    reference["lengths"] = [sum(t != flamingo.pad_token_id for t in row) for row in reference["ids"]]
    sharded = shard_model(copy.deepcopy(flamingo), RUN, device)
    results["flamingo"] = {
        "reference": reference,
        "sharded": {**{f"beams{b}": sharded.generate(batch, max_new_tokens=MAX_NEW, num_beams=b, synced_gpus=True)
                       for b in (1, 3)},
                    "ids": sharded.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1, synced_gpus=True).tolist()},
        "steps": len(reference["ids"][0]),
    }

    lavin = trained_looking(LaVIN.from_config(tiny_lavin_config(llama_root, adapter_dropout=0.0)))
    batch = make_batch(lavin, rank, "what is shown")
    if rank == 0:
        lavin.tokenizer.eos_token_id = early_stop_token(greedy_by_full_forward(lavin, batch, MAX_NEW))
    reference = lavin.generate(batch, max_new_tokens=MAX_NEW)
    steps = len(greedy_by_full_forward(lavin, {k: v[:1] if hasattr(v, "shape") else v for k, v in batch.items()},
                                       MAX_NEW))
    sharded = shard_model(copy.deepcopy(lavin), RUN, device)
    sharded.tokenizer.eos_token_id = lavin.tokenizer.eos_token_id  # a copied tokenizer reloads its own
    results["lavin"] = {"reference": reference, "steps": steps,
                        "sharded": sharded.generate(batch, max_new_tokens=MAX_NEW, synced_gpus=True)}

    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
