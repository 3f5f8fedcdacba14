#!/usr/bin/env python
"""LaVIN-7B and OpenFlamingo-9B speed on one GPU: one command, random weights, nothing read from disk or a hub.

    python benchmarks/gpu_suite.py --size 7b --out runs/gpu_suite        # one H100/H200, a few minutes
    python benchmarks/gpu_suite.py --size tiny --device cpu --steps 1    # the same code at toy size, fp32, seconds

The project's classes via ``MODELS.build`` (LaVIN on the meta device from a LLaMA-7B params.json; OpenFlamingo's
from_config, ``model.lm.tiny`` = LLaMA-7B, its LM on the meta device) get random weights on the GPU in bf16 (no 13 GB
checkpoint). Rows: training (bf16 autocast, SDPA, 4 x 512 tokens, without / with gradient checkpointing, AdamW);
LaVIN greedy generation at batch 1/16/64; OpenFlamingo 8-shot 3-beam generation (16 queries x 9 images) without / with
``VisionCache`` (demos cached by the warm-up, new query images every call). A failing row (OOM...) records its error.

Model FLOPs of a training step, forward + backward (recomputation under checkpointing NOT counted). N = weights of a
matmul, T = tokens it is applied to. Forward 2 N T for every matmul; backward input-gradient 2 N T for every matmul
the gradient flows through (all LLM layers in both models, as trainable parameters sit at or before layer 0; LaVIN's
CLIP blocks, which hold trainable adapters; not OpenFlamingo's frozen CLIP); weight-gradient 2 N T for trainable
weights only. So frozen in the gradient path 4 N T, trainable 6 N T, frozen outside it 2 N T. Attention: 4 d P
forward per layer (QK^T, AV), 12 d P with backward, P = query-key pairs needed: causal self-attention
sum_b T_b (T_b + 1) / 2, CLIP 257^2 per image, Perceiver 64 x (256 + 64) per image, cross-attention T x 64 (own
image only). LaVIN's LM head runs on answer tokens only. Not counted: routers (one token), embeddings, norms,
activations. At tiny size, all matmuls visible to torch.utils.flop_counter and attention non-causal (as it ran), this
matches the counter within 0.1 % (tests/test_gpu_suite.py). MFU = model FLOPs / s / dense bf16 peak (H100 SXM, H200:
989; H100 NVL 835, H100 PCIe 756, A100 312 TFLOP/s; others: omitted). Memory: torch.cuda.max_memory_allocated over
the row, weights included, GB = 1e9 B. Tokens/s: batch tokens (no padding) in training, batch x decode steps otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import open_clip
import torch
import transformers
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vlmkit.data.synthetic.tokenizer import train_sentencepiece  # noqa: E402
from vlmkit.engine.optim import build_optimizer  # noqa: E402
from vlmkit.engine.trainer import move_to_device  # noqa: E402
from vlmkit.models.flamingo import build as flamingo_build  # noqa: E402
from vlmkit.models.lavin_collate import IGNORE_INDEX  # noqa: E402
from vlmkit.models.tiny import TINY_CLIP_VISION_CFG, TINY_LLAMA_PARAMS  # noqa: E402
from vlmkit.registry import MODELS  # noqa: E402

try:
    from vlmkit.engine.vision_cache import VisionCache
except ImportError as e:  # the cache row then records this
    VisionCache, VISION_CACHE_MISSING = None, f"vlmkit.engine.vision_cache.VisionCache: {e}"

VIT_L14 = {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14, "embed_dim": 768, "quick_gelu": True}
SIZES: dict[str, dict[str, Any]] = {  # batch x seq: training rows; gen_*: LaVIN generation; fl_*: OpenFlamingo 8-shot
    "7b": {"lavin": "LaVIN-7B", "flamingo": "OpenFlamingo-9B", "vocab": 32000, "vit": VIT_L14, "lavin_cfg": {},
           "llama": {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-6},
           "lm": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
           "batch": 4, "seq": 512, "gen_words": 60, "gen_tokens": 64, "fl_batch": 16, "fl_tokens": 5, "blocks": {}},
    "tiny": {"lavin": "LaVIN-tiny", "flamingo": "OpenFlamingo-tiny", "vocab": 512, "vit": TINY_CLIP_VISION_CFG,
             "lavin_cfg": {"tap_every": 1, "hidden_proj": 32}, "llama": TINY_LLAMA_PARAMS,
             "lm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4},
             "blocks": {"perceiver": {"depth": 2, "heads": 2, "dim_head": 16, "num_latents": 8},
                        "cross_attn": {"every_n_layers": 2, "heads": 2, "dim_head": 16}},
             "batch": 4, "seq": 64, "gen_words": 10, "gen_tokens": 4, "fl_batch": 4, "fl_tokens": 3},
}
GEN_BATCHES, SHOTS, BEAMS = (1, 16, 64), 8, 3
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
SQA_TRAIN = 12726  # ScienceQA train problems (pid_splits.json)
OPTIM = {"optimizer": "adamw", "weight_decay": 0.02, "betas": [0.9, 0.95], "eps": 1e-8}  # the recipe's, torch AdamW


def make_tokenizer(path: Path, vocab: int, seed: int = 0) -> list[str]:
    """Train a sentencepiece model of ``vocab`` pieces on random words; returns the words (prompt material)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(max(2000, 2 * vocab))]
    train_sentencepiece([" ".join(rng.choices(words, k=20)) for _ in range(10 * min(vocab, 2000))], path, vocab)
    return words


@torch.no_grad()
def materialize(module: torch.nn.Module, device: torch.device, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Allocate a meta-device module on ``device`` (dtypes and requires_grad kept) and fill it: biases 0, other 1-D
    (norms) 1, everything else N(0, std). LLaMA's rotary table (a non-persistent buffer) is rebuilt."""
    module.to_empty(device=device)
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        p.zero_() if name.endswith("bias") else p.fill_(1.0) if p.ndim == 1 else p.normal_(0.0, std)
    llm = getattr(module, "llm", module)  # a LlamaForCausalLM, or LaVIN's
    llm.model.rotary_emb = LlamaRotaryEmbedding(config=llm.config).to(device)
    return module


def random_language_model(cfg: Any, vocab_size: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """``build.load_language_model`` for ``model.lm.tiny``, built on the meta device, filled on ``device``."""
    with torch.device("meta"):
        lm = LlamaForCausalLM(LlamaConfig(**{"vocab_size": vocab_size, **cfg["tiny"], "tie_word_embeddings": False}))
    return materialize(lm.to(dtype), device)


def build(kind: str, spec: dict, tmp: Path, device: torch.device, dtype: str) -> Any:
    """MODELS.build: LaVIN on the meta device, then filled; OpenFlamingo with :func:`random_language_model`."""
    if kind == "lavin":
        (tmp / "bench").mkdir(exist_ok=True)
        (tmp / "bench" / "params.json").write_text(json.dumps(spec["llama"]))
        cfg = {"arch": "lavin", "llama_root": str(tmp), "llama_size": "bench", "dtype": dtype, "clip_weights": None,
               "clip_vision_cfg": spec["vit"], "max_seq_len": spec["seq"], **spec["lavin_cfg"]}  # rest: lavin.yaml
        return materialize(MODELS.build(cfg, device="meta"), device)
    cfg = {"arch": "openflamingo", "dtype": dtype, "checkpoint": None, "vision": {"tiny": spec["vit"], "weights": None},
           "lm": {"path": None, "tokenizer": str(tmp / "tokenizer.model"), "tiny": spec["lm"]}, **spec["blocks"]}
    with mock.patch.object(flamingo_build, "load_language_model", random_language_model):
        return MODELS.build(cfg, device=device)


def lavin_batch(model: Any, spec: dict, words: list[str], n: int, train: bool) -> dict:
    """Every other sample with an image; training rows cut at max_seq_len, prompts of varied length (left padded)."""
    rng, size = random.Random(n), model.visual.image_size
    return model.collator(train=train)([
        {"id": str(i), "images": [torch.randn(3, size, size)] if i % 2 == 0 else [],
         "prompt": " ".join(rng.choices(words, k=spec["seq"] // 8 if train else spec["gen_words"] + i % 7)),
         "target": " ".join(rng.choices(words, k=spec["seq"])) if train else ""} for i in range(n)])


def flamingo_batch(model: Any, spec: dict, words: list[str], train: bool) -> dict:
    """Training: one image + a caption per sample, cut to exactly ``seq`` tokens. Generation: 8-shot VQA prompts
    (8 demos + the query: 9 images), with ``image_keys`` (one per image slot, as datasets give them)."""
    rng, size, seq = random.Random(int(train)), model.image_size, spec["seq"]
    say = lambda k: " ".join(rng.choices(words, k=k))  # noqa: E731
    if train:
        samples = [{"id": str(i), "images": [torch.randn(3, size, size)], "prompt": "<image>Output:",
                    "target": say(seq)} for i in range(spec["batch"])]
        batch = model.collator(train=True)(samples)  # every caption is longer than seq tokens
        return {**batch, **{k: batch[k][:, :seq] for k in ("input_ids", "attention_mask", "labels")}}
    demo = "<image>Question:{}? Short answer:{}<|endofchunk|>\n"
    samples = [{"id": str(i), "images": [torch.randn(3, size, size) for _ in range(SHOTS + 1)],
                "prompt": "".join(demo.format(say(5), say(1)) for _ in range(SHOTS)) + f"<image>Question:{say(5)}? "
                "Short answer:", "image_keys": [f"demo-{i * SHOTS + j}" for j in range(SHOTS)] + [f"query-{i}"]}
               for i in range(spec["fl_batch"])]
    return {**model.collator(train=False)(samples), "image_keys": [s["image_keys"] for s in samples]}


def mm(module: Any, trainable: bool | None = None, skip: str | None = None) -> int:
    """Weights of the matmuls in ``module`` (parameters with >= 2 dims), optionally only (non-)trainable ones."""
    return sum(p.numel() for m in (module if isinstance(module, list) else [module]) for n, p in m.named_parameters()
               if p.ndim >= 2 and (trainable is None or p.requires_grad == trainable) and not (skip and skip in n))


def clip_flops(vit: Any, n_images: int, grad: bool, adapters: Any = None) -> int:
    """CLIP ViT on ``n_images``: patch stem (forward only), blocks (with / without gradient), adapters (trainable)."""
    s, w, blocks = vit.positional_embedding.shape[0], vit.class_embedding.shape[-1], vit.transformer.resblocks
    lin, att = (4, 12) if grad else (2, 4)
    per_image = lin * mm(blocks) * s + att * len(blocks) * w * s * s + 2 * vit.conv1.weight.numel() * (s - 1)
    return n_images * (per_image + (6 * mm(list(adapters), skip="router") * s if adapters is not None else 0))


def lavin_flops(model: Any, batch: dict) -> int:
    """Model FLOPs of one LaVIN training step (module docstring)."""
    mask, llm, taps = batch["attention_mask"], model.llm, model.visual
    tokens, scored = int(mask.sum()), int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    layers, d, pairs = llm.model.layers, llm.config.hidden_size, int((mask.sum(1) * (mask.sum(1) + 1) // 2).sum())
    f = 4 * mm(layers, trainable=False) * tokens + 6 * mm(layers, trainable=True, skip="router") * tokens
    f += 4 * llm.lm_head.weight.numel() * scored + 12 * d * len(layers) * pairs  # causal
    n_images = mask.shape[0]  # the tower runs on every sample (zeros without an image)
    f += clip_flops(taps.visual, n_images, grad=taps.adapters is not None, adapters=taps.adapters)
    return f + 6 * mm(model.adapter_proj) * taps.n_tokens * n_images


def flamingo_flops(model: Any, batch: dict) -> int:
    """Model FLOPs of one OpenFlamingo training step (module docstring)."""
    mask, lm, layers = batch["attention_mask"], model.lang_encoder, model.flamingo_layers()
    tokens, d, n_lat = int(mask.sum()), lm.config.hidden_size, model.perceiver.latents.shape[0]
    slots, n_images = batch["images"].shape[0] * batch["images"].shape[1], int(batch["image_mask"].sum())
    f = 4 * (mm([la.decoder_layer for la in layers]) + lm.get_output_embeddings().weight.numel()) * tokens
    f += 12 * d * len(layers) * int((mask.sum(1) * (mask.sum(1) + 1) // 2).sum())  # causal self-attention
    for b in (la.gated_cross_attn_layer for la in layers if la.gated_cross_attn_layer is not None):
        kv = b.attn.to_kv.weight.numel()
        f += 6 * (mm(b) - kv) * tokens + 6 * kv * slots * n_lat + 12 * b.attn.to_q.out_features * tokens * n_lat
    v = model.vision_encoder.positional_embedding.shape[0] - 1
    for attn, ff in model.perceiver.layers:
        f += 6 * (attn.to_q.weight.numel() + attn.to_out.weight.numel() + mm(ff)) * n_lat * slots
        f += (6 * attn.to_kv.weight.numel() + 12 * attn.to_q.out_features * n_lat) * (v + n_lat) * slots
    return f + clip_flops(model.vision_encoder, n_images, grad=False)


class Bench:
    """Device, precision, step counts, the chip's peak, and the timed loops of every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = "bfloat16" if self.cuda else "float32"  # frozen weights; bf16 autocast on GPU only
        self.steps, self.warmup, self.calls = args.steps, args.warmup, args.warmup + min(args.steps, 3)  # gen calls
        self.gpu = torch.cuda.get_device_name(self.device) if self.cuda else None
        self.peak = next((v for k, v in PEAK_BF16 if k in (self.gpu or "")), None)

    def autocast(self) -> Any:  # bf16 on GPU; CPU runs fp32 (bf16 matmuls are ~150x slower there)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def timed(self, fn: Callable[[], Any], steps: int) -> dict[str, Any]:
        """Mean seconds per call over ``steps`` calls after the warm-up calls; peak memory of all of them."""
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.cuda else (lambda: None)
        torch.cuda.reset_peak_memory_stats(self.device) if self.cuda else None
        for i in range(self.warmup + steps):
            if i == self.warmup:
                sync()
                start = time.perf_counter()
            fn()
        sync()
        return {"s_per_step": (time.perf_counter() - start) / steps,
                "peak_memory_gb": torch.cuda.max_memory_allocated(self.device) / 1e9 if self.cuda else None}

    def train(self, model: Any, batch: dict, flops: int, checkpointing: bool) -> dict[str, Any]:
        """Forward (autocast, as the trainer) + backward + AdamW step; tokens/s, TFLOP/s, MFU, peak memory."""
        if checkpointing:
            getattr(model, "enable_gradient_checkpointing", lambda: model.set_gradient_checkpointing(True))()
        model.train()
        batch, optimizer = move_to_device(batch, self.device), build_optimizer(model, OPTIM, lr=1e-4)

        def step() -> None:
            with self.autocast():
                loss = model(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            out = self.timed(step, self.steps)
        finally:
            optimizer.zero_grad(set_to_none=True)  # after an OOM too
        rate, lm = flops / out["s_per_step"], getattr(model, "llm", None) or model.lang_encoder
        return {**out, "tokens_per_s": int(batch["attention_mask"].sum()) / out["s_per_step"], "tflops": rate / 1e12,
                "mfu": rate / self.peak if self.peak else None, "flops_per_step": flops, "trainable_params":
                model.num_trainable(), "batch": list(batch["input_ids"].shape), "attn": lm.config._attn_implementation}

    def generate(self, model: Any, batches: list[dict], lm: Any, prepare: Callable[[dict], None] | None = None,
                 **gen: Any) -> dict[str, Any]:
        """``prepare(batch)`` + ``model.generate`` per batch; decoding steps are the forward calls of ``lm``."""
        model.eval()
        calls, it = [0], iter([move_to_device(b, self.device) for b in batches])
        handle = lm.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

        def call() -> None:
            batch, calls[0] = next(it), 0
            with self.autocast():  # as the runner's evaluation
                prepare(batch) if prepare is not None else None
                model.generate(batch, **gen)

        try:
            out = self.timed(call, len(batches) - self.warmup)
        finally:
            handle.remove()
        rows = len(batches[0]["ids"])
        return {**out, "samples_per_s": rows / out["s_per_step"], "tokens_per_s": rows * calls[0] / out["s_per_step"],
                "new_tokens": calls[0], "batch": rows}


def run_model(results: dict, build_model: Callable[[], Any], rows: list[tuple]) -> None:
    """Build one model, run its ``(key, label, fn(model))`` rows, free it. A row's exception (OOM included) becomes
    its ``error`` and the suite goes on; if the build fails, every row of the model carries that error."""
    why = lambda e: f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"  # noqa: E731
    try:
        model, failed = build_model(), None
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        model, failed = None, f"model build failed: {why(e)}"
    for i, (key, label, fn) in enumerate(rows):
        if i == 0 or results[rows[i - 1][0]]["error"]:
            gc.collect()  # the previous model or a failed row's tensors: not in this row's peak memory
        try:
            results[key] = {"label": label, **(fn(model) if failed is None else {}), "error": failed}
        except Exception as e:  # noqa: BLE001
            results[key] = {"label": label, "error": why(e)}


def model_rows(bench: Bench, spec: dict, words: list[str], kind: str) -> list[tuple]:
    """A model's ``(key, label, fn(model))`` rows: training without, then with gradient checkpointing; LaVIN greedy
    generation at batch 1 / 16 / 64; OpenFlamingo 8-shot 3-beam generation without, then with the vision cache."""
    lavin = kind == "lavin"

    def train(m: Any, ckpt: bool) -> dict:
        batch = lavin_batch(m, spec, words, spec["batch"], True) if lavin else flamingo_batch(m, spec, words, True)
        return bench.train(m, batch, (lavin_flops if lavin else flamingo_flops)(m, batch), ckpt)

    def lavin_gen(model: Any, n: int) -> dict:
        return bench.generate(model, [lavin_batch(model, spec, words, n, train=False)] * bench.calls, model.llm,
                              max_new_tokens=spec["gen_tokens"])

    def flamingo_gen(model: Any, cached: bool) -> dict:
        base = flamingo_batch(model, spec, words, train=False)
        batches = [{**base, "image_keys": [keys[:-1] + [f"{keys[-1]}-call{c}"] for keys in base["image_keys"]]}
                   for c in range(bench.calls)]  # the demo images recur, every call has new query images
        if cached and VisionCache is None:
            raise RuntimeError(f"vision cache not available ({VISION_CACHE_MISSING})")
        cache = VisionCache(max_bytes=int(4e9)) if cached else None
        fill = None if cache is None else lambda b: cache.fill(model, b)
        out = bench.generate(model, batches, model.lang_encoder, fill, num_beams=BEAMS, length_penalty=0.0,
                             max_new_tokens=spec["fl_tokens"])
        return {**out, "cache_stats": dict(vars(cache.stats)) if hasattr(cache, "stats") else None}

    name, shape = spec[kind], f"{spec['batch']}x{spec['seq']} tokens"
    rows = [(f"{kind}_train", f"{name} train {shape}", lambda m: train(m, False)),
            (f"{kind}_train_ckpt", f"{name} train {shape}, grad ckpt", lambda m: train(m, True))]
    if lavin:
        return rows + [(f"lavin_gen_b{n}", f"{name} greedy generate {spec['gen_tokens']} tokens, batch {n}",
                        lambda m, n=n: lavin_gen(m, n)) for n in GEN_BATCHES]
    label = f"{name} {SHOTS}-shot {BEAMS}-beam generate {spec['fl_tokens']} tokens, batch {spec['fl_batch']}"
    return rows + [("flamingo_gen", label, lambda m: flamingo_gen(m, False)),
                   ("flamingo_gen_cache", f"{label}, vision cache", lambda m: flamingo_gen(m, True))]


def projection(results: dict) -> dict[str, Any]:
    """Hours of the 20-epoch ScienceQA recipe (projects/lavin/sqa_7b.yaml: epochs, batch per GPU; accumulation keeps
    the micro-steps) on one GPU at the fastest LaVIN training step measured. Rows here are 512 tokens; real batches
    are padded to their longest sample, often shorter, so real steps can be faster. Evaluation not included."""
    run = OmegaConf.load(REPO / "projects/lavin/sqa_7b.yaml").run
    ok = [k for k in ("lavin_train", "lavin_train_ckpt") if k in results and results[k]["error"] is None]
    if not ok:
        return {"hours": None, "error": "no LaVIN training measurement"}
    key = min(ok, key=lambda k: results[k]["s_per_step"])
    batch, epochs, steps = int(run.batch_size), int(run.epochs), math.ceil(SQA_TRAIN / int(run.batch_size))
    seconds = results[key]["s_per_step"] * batch / results[key]["batch"][0]  # per recipe micro-batch
    return {"hours": epochs * steps * seconds / 3600, "from": key, "epochs": epochs, "batch_per_gpu": batch,
            "train_problems": SQA_TRAIN, "steps_per_epoch": steps, "s_per_step": seconds}


def goals(results: dict, proj: dict, size: str) -> list[dict]:
    """Pass/fail of the 7B goals (pass None: not measured, or not a 7b run)."""
    rows = [(f"LaVIN-7B train {what} ({mode})", results.get(key, {}).get(field), target, ok)
            for key, mode in (("lavin_train", "no ckpt"), ("lavin_train_ckpt", "grad ckpt"))
            for what, field, target, ok in (("MFU", "mfu", ">= 45 %", lambda v: v >= 0.45),
                                            ("peak memory GB", "peak_memory_gb", "<= 34 GB", lambda v: v <= 34.0))]
    rows.append(("20-epoch ScienceQA recipe hours, one GPU", proj.get("hours"), "<= 1 h", lambda v: v <= 1.0))
    return [{"goal": g, "value": v, "target": t, "pass": None if v is None or size != "7b" else bool(ok(v))}
            for g, v, t, ok in rows]


def markdown(report: dict) -> str:
    """The results and goals tables and the projection line."""
    m, p = report["meta"], report["projection"]
    kinds = {"tokens_per_s": "{:,.0f}", "mfu": "{:.1%}"}
    f = lambda v, k="": "-" if v is None else kinds.get(k, "{:.4g}").format(v)  # noqa: E731
    lines = [f"# vlmkit GPU suite ({m['size']}): {m['gpu'] or m['device']}, {m['date']}", "",
             f"torch {m['torch']}, transformers {m['transformers']}, open_clip {m['open_clip']}, CUDA {m['cuda']}; "
             f"bf16 dense peak {f(m['peak_tflops'])} TFLOP/s; {m['steps']} timed steps after {m['warmup']} warm-up", "",
             "| measurement | tokens/s | samples/s | TFLOP/s | MFU | peak GB | s / step | error |", "|---" * 8 + "|"]
    cols = "tokens_per_s", "samples_per_s", "tflops", "mfu", "peak_memory_gb", "s_per_step"
    lines += ["| " + " | ".join([r["label"], *(f(r.get(c), c) for c in cols), r["error"] or ""]) + " |"
              for r in report["results"].values()]
    lines += ["", "| goal | measured | target | result |", "|---" * 4 + "|"] + [
        f"| {g['goal']} | {f(g['value'], 'mfu' if 'MFU' in g['goal'] else '')} | {g['target']} | "
        f"{ {True: 'PASS', False: 'FAIL'}.get(g['pass'], 'n/a')} |" for g in report["goals"]]
    if p.get("hours") is not None:
        lines += ["", f"Projection: {p['epochs']} epochs x {p['steps_per_epoch']:,} steps of {p['batch_per_gpu']} "
                  f"({p['train_problems']:,} problems) x {p['s_per_step']:.4g} s = {p['hours']:.2f} h on one GPU "
                  f"(from {p['from']}; evaluation not included)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Run every row, write ``gpu_suite.json`` and ``gpu_suite.md`` to ``--out``, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (generation: min(steps, 3) calls)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each row")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_suite"))
    args = parser.parse_args(argv)
    args.steps, args.warmup = max(1, args.steps), max(0, args.warmup)
    bench, spec, results = Bench(args), SIZES[args.size], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        words = make_tokenizer(tmp / "tokenizer.model", spec["vocab"])
        for kind in ("lavin", "flamingo"):
            run_model(results, lambda: build(kind, spec, tmp, bench.device, bench.dtype),
                      model_rows(bench, spec, words, kind))
    proj = projection(results)
    meta = {"size": args.size, "device": str(bench.device), "gpu": bench.gpu, "cuda": torch.version.cuda, "torch":
            torch.__version__, "transformers": transformers.__version__, "open_clip": open_clip.__version__,
            "peak_tflops": bench.peak and bench.peak / 1e12, "steps": args.steps, "warmup": args.warmup,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "dtype": bench.dtype}
    report = {"meta": meta, "results": results, "projection": proj, "goals": goals(results, proj, args.size),
              "flop_formula": " ".join(__doc__[__doc__.index("Model FLOPs"):].split())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_suite.md").write_text(table := markdown(report))
    print(table, end="")
    return report


if __name__ == "__main__":
    main()
