#!/usr/bin/env python
"""Few-shot generation throughput of vlmkit against open-flamingo 2.0.1, on the same weights, demos and prompts.

    python benchmarks/fewshot_throughput.py [--queries 16] [--pool 10] [--batch 8] [--quick] [--no-sweep]

The model: open-flamingo builds it (benchmarks/fewshot_reference.py, in the reference's own environment with
transformers 4.36.2; tests/reference/install_open_flamingo.sh) and writes its files; vlmkit loads them through its
checkpoint interop. Its shape is OpenFlamingo-9B's cut down so that one 8-shot batch takes seconds on a 2-core CPU while
the ratio of vision to language compute per shot stays near the 9B model's (printed: :func:`flops`): CLIP ViT with
224-pixel images in 14-pixel patches (257 tokens, as ViT-L/14) of width 128 × 22 layers, open-flamingo's fixed
Perceiver (6 layers, 8 × 64 heads, 64 latents) and cross-attention blocks (8 × 64, ff × 4), a LLaMA of width 768 × 12
layers with a block before every 4th layer (as the 9B). Vision per image against language per shot: 0.72 here (a shot
is 26 tokens with the benchmark's 512-piece tokenizer), 0.71 for the 9B (≈ 16 LLaMA tokens a shot) — so neither
tower's speed-up is over-weighted.

The prompts: ``--queries`` VQA queries, each with its own image, at 0, 4 and 8 shots; the demos are drawn for each query
from a pool of ``--pool`` images (a demo image is used ~``queries × shots / pool`` times, as in a real sweep where 5,000
queries draw from a 2,048-item query set). Generation: 5 new tokens, greedy and 3 beams (length penalty 0). vlmkit runs
as its evaluation does: batches grouped by prompt length, the vision cache (empty at the start of every point, so only
reuse within the point counts), the shared prefill. The generated ids must be identical to the reference's, per query
(open-flamingo's ids of each query generated alone; whether its batched run agrees is a column of its own).
Also measured: the whole tiny VQAv2 quickstart sweep (``vlmkit evaluate --shots 0 4 8 --trials 2``) with and without
the cache. Writes nothing into the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
REFERENCE_DIR = Path(os.environ.get("VLMKIT_REFERENCE_DIR", REPO / ".reference" / "open_flamingo"))

SCALED = {"vision": {"image_size": 224, "layers": 22, "width": 128, "head_width": 64, "patch_size": 14,
                     "mlp_ratio": 4.0},
          "embed_dim": 128, "cross_attn_every_n_layers": 4,
          "lm": {"hidden_size": 768, "intermediate_size": 2064, "num_hidden_layers": 12, "num_attention_heads": 6,
                 "num_key_value_heads": 6, "tie_word_embeddings": False}}
QUICK = {"vision": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
         "embed_dim": 32, "cross_attn_every_n_layers": 2,
         "lm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 4, "tie_word_embeddings": False}}
NINE_B = {"vision": {"width": 1024, "layers": 24, "mlp": 4096, "tokens": 257},
          "lm": {"hidden": 4096, "layers": 32, "ff": 11008, "every": 4}}
QUESTIONS = ["what color is the shape?", "what shape is shown?", "which animal is in the picture?",
             "how many objects are there?", "is it daytime?", "what is on the table?", "where is the dog?"]
ANSWERS = ["red", "circle", "dog", "two", "yes", "cat", "outside", "blue", "square"]
SHOTS = (0, 4, 8)
MAX_NEW_TOKENS = 5


def flops(vision: dict, lm: dict, tokens_per_shot: float, shots: int = 8) -> dict[str, float]:
    """Forward FLOPs (2 per multiply-add) of one image (ViT + open-flamingo's Perceiver) and of one shot's text
    (LLaMA layers + cross-attention blocks at the mean context of an ``shots``-shot prompt), and their ratio."""
    w, n = vision["width"], vision["tokens"]
    vit = vision["layers"] * n * (2 * (4 * w * w + 2 * w * vision["mlp"]) + 4 * n * w)
    inner, lat = 512, 64  # Perceiver: 8 heads x 64, 64 latents, depth 6, ff x 4
    perceiver = 6 * (2 * (lat * w * inner + (n + lat) * w * 2 * inner + lat * inner * w) + 4 * lat * (n + lat) * inner
                     + 2 * lat * 2 * w * w * 4)
    h, ctx, media = lm["hidden"], tokens_per_shot * (shots + 1) / 2, lat * (shots + 1) / 2
    layer = 2 * (4 * h * h + 3 * h * lm["ff"]) + 4 * ctx * h
    block = 2 * (2 * h * inner + 2 * h * h * 4) + 4 * media * inner
    token = lm["layers"] * layer + lm["layers"] // lm["every"] * block
    image = vit + perceiver
    return {"image_gflop": image / 1e9, "shot_gflop": token * tokens_per_shot / 1e9,
            "ratio": image / (token * tokens_per_shot)}


def shape_of(config: dict) -> tuple[dict, dict]:
    v, m = config["vision"], config["lm"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    return ({"width": v["width"], "layers": v["layers"], "mlp": int(v["width"] * v["mlp_ratio"]), "tokens": tokens},
            {"hidden": m["hidden_size"], "layers": m["num_hidden_layers"], "ff": m["intermediate_size"],
             "every": config["cross_attn_every_n_layers"]})


def make_points(queries: int, pool: int, batch: int, image_size: int, shots_list: tuple[int, ...] = SHOTS,
                seed: int = 0) -> dict:
    """Prompts and image keys of every (shots, beams) point, and the pixels of every image."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    pixels = {f"demo{i}": torch.randn(3, image_size, image_size, generator=gen) for i in range(pool)}
    pixels.update({f"query{q}": torch.randn(3, image_size, image_size, generator=gen) for q in range(queries)})
    demo = [f"<image>Question:{QUESTIONS[i % 7]} Short answer:{ANSWERS[(3 * i) % 9]}<|endofchunk|>\n"
            for i in range(pool)]
    points = {}
    for shots in shots_list:
        prompts, keys = [], []
        for q in range(queries):
            chosen = rng.sample(range(pool), shots if shots else 2)
            context = "".join(demo[d] for d in chosen)
            prompts.append((context.replace("<image>", "") if shots == 0 else context)
                           + f"<image>Question:{QUESTIONS[(q * 5) % 7]} Short answer:")
            keys.append([f"demo{d}" for d in chosen] * (shots > 0) + [f"query{q}"])
        for beams in (1, 3):
            points[f"{shots}-shot {'greedy' if beams == 1 else '3 beams'}"] = {
                "shots": shots, "num_beams": beams, "prompts": prompts, "image_keys": keys, "batch_size": batch,
                "max_new_tokens": MAX_NEW_TOKENS}
    return {"points": points, "pixels": pixels}


def reference(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REFERENCE_DIR), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fewshot_reference.py"), *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the open-flamingo reference failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, end="", flush=True)


def build_vlmkit(out: Path, tokenizer: Path, config: dict):
    from vlmkit.models.flamingo import load_openflamingo_checkpoint
    from vlmkit.registry import MODELS

    cfg = {"arch": "openflamingo", "lm": {"path": str(out / "lm"), "tokenizer": str(tokenizer)},
           "vision": {"tiny": {**config["vision"], "embed_dim": config["embed_dim"], "quick_gelu": True},
                      "weights": str(out / "clip.pt")},
           "cross_attn": {"every_n_layers": config["cross_attn_every_n_layers"]}}
    model = MODELS.build(cfg).eval()
    report = load_openflamingo_checkpoint(model, out / "full_state.pt")
    assert not report.missing and not report.unexpected, report
    return model


def run_vlmkit(model, point: dict, pixels: dict, cache: bool, grouped: bool, shared: bool,
               warm_up: bool = True) -> tuple[dict, float]:
    """Generated ids by query index and the seconds spent in the model (vision cache included); ``warm_up``: as the
    reference side, the point's first batch runs once untimed first."""
    from vlmkit.engine.batching import LengthGroupedBatches
    from vlmkit.engine.vision_cache import VisionCache

    prompts, keys, bs = point["prompts"], point["image_keys"], point["batch_size"]
    collate = model.collator(train=False)
    if grouped:
        lengths = [len(i) for i in model.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        batches = LengthGroupedBatches(lengths, bs).batches
    else:
        batches = [list(range(s, min(s + bs, len(prompts)))) for s in range(0, len(prompts), bs)]
    if warm_up:  # the first batch once untimed (its own cache), so every variant meets this point's shapes warm
        run_vlmkit(model, {**point, "prompts": [prompts[i] for i in batches[0]],
                           "image_keys": [keys[i] for i in batches[0]]}, pixels, cache, False, shared, warm_up=False)
    store = VisionCache(max_bytes=int(2e9)) if cache else None
    if store is not None:
        store.bind(model)
    ids, seconds = {}, 0.0
    for rows in batches:
        batch = collate([{"id": str(i), "prompt": prompts[i], "images": [pixels[k] for k in keys[i]],
                          "image_keys": keys[i], "target": ""} for i in rows])
        began = time.perf_counter()
        with torch.no_grad():
            if store is not None:
                store.fill(model, batch)
            out = model.generate_ids(batch, max_new_tokens=point["max_new_tokens"], num_beams=point["num_beams"],
                                     length_penalty=0.0, share_prefill=shared)
        seconds += time.perf_counter() - began
        ids.update(zip(rows, out.tolist()))
    return ids, seconds


def cut(model, row: list[int]) -> list[int]:
    """A generation up to and including its end-of-chunk token (what follows is padding)."""
    return row[:row.index(model.eoc_token_id) + 1] if model.eoc_token_id in row else row


VARIANTS = {  # name: (cache, grouped, shared prefill); the first is the one every point runs
    "vlmkit": (True, True, True),
    "vlmkit, no vision cache": (False, True, True),
    "vlmkit, no cache, no shared prefill, no grouping": (False, False, False),
}


def compare(args: argparse.Namespace, tmp: Path, config: dict) -> list[dict]:
    """Every point: the reference's samples/s and vlmkit's (variants), and whether the ids are identical."""
    from conftest import train_tokenizer

    tokenizer = train_tokenizer(tmp / "tokenizer.model")
    reference("build", str(tmp / "model"), str(tokenizer), json.dumps(config))
    data = make_points(args.queries, args.pool, args.batch, config["vision"]["image_size"], tuple(args.shots))
    torch.save(data, tmp / "points.pt")
    reference("run", str(tmp / "model"), str(tmp / "points.pt"), str(tmp / "reference.pt"))
    theirs = torch.load(tmp / "reference.pt", weights_only=True)
    model = build_vlmkit(tmp / "model", tokenizer, config)
    rows = []
    for name, point in data["points"].items():
        ref_ids, ref_s = theirs[name]["alone"], theirs[name]["seconds"]
        ref_batched_same = all(cut(model, a) == cut(model, b) for a, b in zip(theirs[name]["ids"], ref_ids))
        n = len(point["prompts"])
        variants = VARIANTS if name == "8-shot 3 beams" or args.all_variants else dict(list(VARIANTS.items())[:2])
        for variant, (cache, grouped, shared) in variants.items():
            ids, seconds = run_vlmkit(model, point, data["pixels"], cache, grouped, shared)
            # A generated <image> token: open-flamingo points the cross-attention of the tokens after it at the
            # first image (of every row of the batch: at none where that step has no <image>); vlmkit keeps the
            # prompt's last image. Such queries are left out of the comparison and counted.
            media = [i for i in range(n) if model.media_token_id in cut(model, ids[i])]
            same = all(cut(model, ids[i]) == cut(model, ref_ids[i]) for i in range(n) if i not in media)
            rows.append({"point": name, "variant": variant, "reference_samples_per_s": n / ref_s,
                         "vlmkit_samples_per_s": n / seconds, "ratio": ref_s / seconds, "identical_ids": same,
                         "compared": n - len(media), "generated_image_token": len(media),
                         "reference_batched_equals_alone": ref_batched_same})
            print(f"{name:16s} {variant:50s} {n / seconds:7.3f} samples/s  {ref_s / seconds:5.2f}x  "
                  f"identical={same}", flush=True)
    return rows


def sweep_figure(tmp: Path) -> list[dict]:
    """The tiny VQAv2 quickstart sweep (untrained tiny model; 3 beams), with and without the vision cache."""
    data = tmp / "vqav2_tiny"
    subprocess.run([sys.executable, str(REPO / "tools/prepare_data.py"), "synthetic-vqav2", "--out", str(data),
                    "--n-train-images", "200", "--n-val-images", "30"], check=True, capture_output=True)
    env = {**os.environ, "VLMKIT_QUICKSTART_VQAV2": str(data)}
    rows = []
    for label, gb in (("vision cache on", 2), ("vision cache off", 0)):
        out = tmp / f"sweep_{gb}"
        began = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "tools/evaluate.py"), "--cfg-path",
                        str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml"), "--shots", "0", "4", "8",
                        "--trials", "2", "--options", f"run.output_dir={out}", f"run.vision_cache_gb={gb}",
                        "run.generate.num_beams=3"], check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - began
        log = [line for line in (out / "log.txt").read_text().splitlines() if "vision cache, val:" in line]
        decoded = sum(int(line.split(" images decoded")[0].rsplit(" ", 1)[1]) for line in log)
        rows.append({"sweep": label, "seconds": seconds, "images_decoded_by_cache": decoded if log else None})
        print(f"sweep, {label}: {seconds:.1f} s" + (f", {decoded} images decoded" if log else ""), flush=True)
    return rows


def markdown(rows: list[dict], sweep: list[dict], config: dict, tokens_per_shot: float) -> str:
    ours, nine = flops(*shape_of(config), tokens_per_shot), flops(*(NINE_B["vision"], NINE_B["lm"]), 16)
    lines = [f"vision/language FLOPs per shot: {ours['ratio']:.2f} here ({ours['image_gflop']:.2f} GFLOP per image, "
             f"{ours['shot_gflop']:.2f} per shot of {tokens_per_shot:.1f} tokens), {nine['ratio']:.2f} for "
             "OpenFlamingo-9B", "",
             "| point | vlmkit variant | open-flamingo samples/s | vlmkit samples/s | vlmkit / open-flamingo | "
             "identical ids | open-flamingo batched = alone |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['point']} | {r['variant']} | {r['reference_samples_per_s']:.3f} | {r['vlmkit_samples_per_s']:.3f} "
              f"| {r['ratio']:.2f}x | {'yes' if r['identical_ids'] else 'NO'} ({r['compared']}"
              f"{'; ' + str(r['generated_image_token']) + ' generated <image>' if r['generated_image_token'] else ''}) | "
              f"{'yes' if r['reference_batched_equals_alone'] else 'no'} |" for r in rows]
    if sweep:
        lines += ["", "| tiny VQAv2 sweep, 0/4/8 shots x 2 trials, 3 beams | seconds | images decoded |", "|---|---|---|"]
        lines += [f"| {r['sweep']} | {r['seconds']:.1f} | {r['images_decoded_by_cache'] or '(every use)'} |"
                  for r in sweep]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--pool", type=int, default=10, help="demo images the queries draw from")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    parser.add_argument("--quick", action="store_true", help="a tiny model (seconds; for the smoke test)")
    parser.add_argument("--all-variants", action="store_true", help="every vlmkit variant at every point")
    parser.add_argument("--no-sweep", action="store_true", help="skip the whole-sweep figure")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if not (REFERENCE_DIR / "open_flamingo").is_dir():
        print(f"error: open-flamingo reference not found in {REFERENCE_DIR}; install it with "
              "tests/reference/install_open_flamingo.sh (or set VLMKIT_REFERENCE_DIR)", file=sys.stderr)
        return 2
    config = QUICK if args.quick else SCALED
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__} (reference: 4.36.2), "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(args, Path(tmp), config)
        sweep = [] if args.no_sweep else sweep_figure(Path(tmp))
        from vlmkit.models.tokenizer import load_tokenizer

        tok = load_tokenizer(str(Path(tmp) / "model" / "ref_tokenizer"), True)
        demo = f"<image>Question:{QUESTIONS[0]} Short answer:{ANSWERS[0]}<|endofchunk|>\n"
        per_shot = len(tok(demo, add_special_tokens=False)["input_ids"])
    table = markdown(rows, sweep, config, per_shot)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sweep": sweep, "table": table}, indent=1))
    return 0 if all(r["identical_ids"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
