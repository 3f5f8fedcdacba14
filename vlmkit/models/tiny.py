"""Tiny random-weight models in the real on-disk formats, for tests and the CPU quickstart.

``write_meta_checkpoint`` writes exactly what Meta released (``params.json``, ``consolidated.NN.pth`` with Meta's key
names, sharded as Meta shards, ``tokenizer.model`` at the root), so every loader path a 7B run takes is exercised.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlmkit.models.llama import _SHARD_DIM_GLOBAL, _SHARD_DIM_LAYER, ffn_hidden_dim, load_llama_tokenizer

#: A 2-layer LLaMA small enough for CPU tests (vocab_size -1: taken from the tokenizer, as in Meta's files).
TINY_LLAMA_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": -1}
#: open_clip ``vision_cfg`` of a 2-block ViT on 32×32 images (2 CLS taps with ``tap_every: 1``).
TINY_CLIP_VISION_CFG = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0,
                        "quick_gelu": True}
#: Model-config keys that turn the 7B recipe (vlmkit/configs/models/lavin.yaml) into the tiny CPU model.
TINY_LAVIN_OVERRIDES = {"llama_size": "tiny", "dtype": "float32", "clip_vision_cfg": TINY_CLIP_VISION_CFG,
                        "clip_weights": None, "tap_every": 1, "hidden_proj": 32, "max_seq_len": 256}
#: Standard deviation of the random weights: large enough that logits differ between tokens, small enough to stay finite.
INIT_STD = 0.08


def random_meta_state_dict(params: Mapping[str, Any], vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A full (unsharded) LLaMA state dict with Meta's key names and random fp32 weights."""
    gen = torch.Generator().manual_seed(seed)
    dim, n_layers = int(params["dim"]), int(params["n_layers"])
    n_heads = int(params["n_heads"])
    kv_dim = dim // n_heads * int(params.get("n_kv_heads") or n_heads)
    hidden = ffn_hidden_dim(dim, int(params["multiple_of"]), params.get("ffn_dim_multiplier"))

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * INIT_STD

    def norm() -> torch.Tensor:  # not all ones, so a loader that drops a norm weight is caught
        return 1.0 + 0.2 * torch.randn(dim, generator=gen)

    sd = {"tok_embeddings.weight": torch.randn(vocab_size, dim, generator=gen), "norm.weight": norm(),
          "output.weight": rand(vocab_size, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        sd.update({
            p + "attention.wq.weight": rand(dim, dim), p + "attention.wk.weight": rand(kv_dim, dim),
            p + "attention.wv.weight": rand(kv_dim, dim), p + "attention.wo.weight": rand(dim, dim),
            p + "feed_forward.w1.weight": rand(hidden, dim), p + "feed_forward.w2.weight": rand(dim, hidden),
            p + "feed_forward.w3.weight": rand(hidden, dim),
            p + "attention_norm.weight": norm(), p + "ffn_norm.weight": norm(),
        })
    return sd


def shard_meta_state_dict(sd: Mapping[str, torch.Tensor], n_shards: int) -> list[dict[str, torch.Tensor]]:
    """Split as Meta's model-parallel checkpoints are split (replicated norms, column/row-parallel slices)."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for key, tensor in sd.items():
        name = key.split(".", 2)[2] if key.startswith("layers.") else key
        dim = _SHARD_DIM_LAYER[name] if key.startswith("layers.") else _SHARD_DIM_GLOBAL[key]
        parts = [tensor] * n_shards if dim is None else torch.chunk(tensor, n_shards, dim=dim)
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()
    return shards


def write_meta_checkpoint(root: str | Path, size_name: str, params: Mapping[str, Any], tokenizer_model: str | Path,
                          seed: int = 0, n_shards: int = 1) -> Path:
    """Write a random tiny LLaMA in Meta's layout under ``root``; returns ``root``.

    ``<root>/tokenizer.model`` (copied), ``<root>/<size_name>/params.json``, ``<root>/<size_name>/consolidated.NN.pth``.
    """
    root = Path(root)
    size_dir = root / size_name
    size_dir.mkdir(parents=True, exist_ok=True)
    if Path(tokenizer_model).resolve() != (root / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_model, root / "tokenizer.model")
    vocab_size = int(params.get("vocab_size", -1))
    if vocab_size <= 0:
        vocab_size = load_llama_tokenizer(root / "tokenizer.model").vocab_size
    full = random_meta_state_dict(params, vocab_size, seed)
    # Meta's files also carry the rotary table; loaders skip it. Kept so the tiny checkpoint has the same keys.
    head_dim = int(params["dim"]) // int(params["n_heads"])
    rope = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i, shard in enumerate(shard_meta_state_dict(full, n_shards)):
        shard["rope.freqs"] = rope.clone()
        torch.save(shard, size_dir / f"consolidated.{i:02d}.pth")
    (size_dir / "params.json").write_text(json.dumps(dict(params)))
    return root


def tiny_lavin_config(llama_root: str | Path, **overrides: Any) -> Any:
    """vlmkit/configs/models/lavin.yaml with ``TINY_LAVIN_OVERRIDES`` and ``overrides`` applied (an OmegaConf DictConfig).

    For the tiny CPU model only: the tiny overrides always apply, among them ``tap_every: 1`` and ``hidden_proj: 32``
    (the recipe's are 4 and 128), so a full-size shape built from this config has the wrong adapters and trainable
    count unless ``overrides`` restores them. Full-size configs start from ``defaults_of(MODELS.get("lavin"))``.
    """
    from omegaconf import OmegaConf

    from vlmkit.registry import MODELS
    from vlmkit.schema import defaults_of

    cfg = defaults_of(MODELS.get("lavin"))
    given = {**TINY_LAVIN_OVERRIDES, "llama_root": str(llama_root), **overrides}
    return OmegaConf.merge(cfg, OmegaConf.create(given))
