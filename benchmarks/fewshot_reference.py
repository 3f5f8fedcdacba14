"""The open-flamingo 2.0.1 side of benchmarks/fewshot_throughput.py. Run with PYTHONPATH=<reference dir> (see
tests/reference/install_open_flamingo.sh), so open-flamingo runs with the transformers 4.36.2 it was released with.

    python fewshot_reference.py build OUT TOKENIZER_MODEL CONFIG_JSON   build the model, write its files (the files of
                                                                        tests/reference/openflamingo_reference.py)
    python fewshot_reference.py run OUT POINTS_PT RESULT_PT             generate every point's prompts, timed

The model is built by tests/reference/openflamingo_reference.py's ``build_reference`` with the vision tower, LM and
cross-attention interval of CONFIG_JSON; open-flamingo fixes the Perceiver (depth 6, 8 heads × 64, 64 latents) and the
cross-attention blocks (8 heads × 64, ff × 4). Batches are taken in the order given, as open-flamingo's evaluation
does; each batch's time is that of ``Flamingo.generate`` (which encodes the images of every beam). Every query is then
also generated alone (a batch of one, untimed): the ids vlmkit's are compared with, since open-flamingo's batched
beam search does not always give what it gives for the query alone (see docs/benchmarks.md).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
import openflamingo_reference as ref  # noqa: E402


def build(out: Path, tokenizer_model: Path, config: dict) -> None:
    ref.VISION_CFG = dict(config["vision"])
    ref.EMBED_DIM = int(config["embed_dim"])
    ref.CROSS_ATTN_EVERY_N_LAYERS = int(config["cross_attn_every_n_layers"])
    model, _ = ref.build_reference(out, tokenizer_model, write=True, lm_cfg=dict(config["lm"]))
    torch.save(model.state_dict(), out / "full_state.pt")
    import transformers

    (out / "meta.json").write_text(json.dumps({**config, "transformers": transformers.__version__}, indent=1))


def vision_x(keys: list[list[str]], pixels: dict[str, torch.Tensor]) -> torch.Tensor:
    size = next(iter(pixels.values())).shape[-1]
    out = torch.zeros(len(keys), max(len(k) for k in keys), 1, 3, size, size)
    for i, row in enumerate(keys):
        for j, key in enumerate(row):
            out[i, j, 0] = pixels[key]
    return out


def generate(model, tokenizer, prompts: list[str], keys: list[list[str]], point: dict,
             pixels: dict[str, torch.Tensor]) -> tuple[list[list[int]], float]:
    """``Flamingo.generate`` on one batch (tokenized left-padded, as open-flamingo's evaluation): the new ids and the
    seconds of the generate call alone."""
    enc = tokenizer(prompts, return_tensors="pt", padding="longest")
    images = vision_x(keys, pixels)
    with torch.no_grad():
        began = time.perf_counter()
        gen = model.generate(images, enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=int(point["max_new_tokens"]), num_beams=int(point["num_beams"]),
                             length_penalty=0.0, pad_token_id=tokenizer.pad_token_id)
        spent = time.perf_counter() - began
    return gen[:, enc["input_ids"].shape[1]:].tolist(), spent


def run(out: Path, points_path: Path, result_path: Path) -> None:
    config = json.loads((out / "meta.json").read_text())
    ref.VISION_CFG, ref.EMBED_DIM = dict(config["vision"]), int(config["embed_dim"])
    ref.CROSS_ATTN_EVERY_N_LAYERS = int(config["cross_attn_every_n_layers"])
    model, tokenizer = ref.build_reference(out, None, write=False, lm_cfg=dict(config["lm"]))
    model.load_state_dict(torch.load(out / "full_state.pt"))
    model.eval()
    data = torch.load(points_path)
    tokenizer.padding_side = "left"
    results = {}
    for name, point in data["points"].items():
        prompts, keys, bs = point["prompts"], point["image_keys"], int(point["batch_size"])
        batches = [(prompts[s:s + bs], keys[s:s + bs]) for s in range(0, len(prompts), bs)]
        generate(model, tokenizer, *batches[0], point, data["pixels"])  # untimed: warms up this point's shapes
        ids, seconds = [], 0.0
        for batch_prompts, batch_keys in batches:
            new, spent = generate(model, tokenizer, batch_prompts, batch_keys, point, data["pixels"])
            ids.extend(new)
            seconds += spent
        alone = [generate(model, tokenizer, [q], [k], point, data["pixels"])[0][0] for q, k in zip(prompts, keys)]
        results[name] = {"ids": ids, "seconds": seconds, "alone": alone}
        print(f"reference {name}: {len(prompts) / seconds:.3f} samples/s", flush=True)
    torch.save(results, result_path)


def main() -> None:
    command = sys.argv[1]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if command == "build":
        build(out, Path(sys.argv[3]), json.loads(sys.argv[4]))
    elif command == "run":
        run(out, Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
