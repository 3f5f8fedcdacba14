"""LLaMA loading: Meta's released layout or a Hugging Face directory → ``transformers.LlamaForCausalLM``, plus its tokenizer.

Meta layout (what LaVIN reads)::

    <root>/tokenizer.model
    <root>/<size>/params.json            {"dim", "n_layers", "n_heads", "norm_eps", "multiple_of", "vocab_size": -1, ...}
    <root>/<size>/consolidated.NN.pth    1 shard for 7B, 2 for 13B (model-parallel slices, merged here)

HF layout: ``<root>/config.json`` + safetensors/bin weights + ``<root>/tokenizer.model``.

Meta weights are converted to HF names, with wq/wk rows permuted from Meta's interleaved rotary pairs to HF's
half-split layout. Tensors are memory-mapped and assigned into a model built on the meta device, so loading 7B takes one
copy of the weights, not two.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError, missing_file
from vlmkit.models.quantization import quantized_load_options
from vlmkit.models.tokenizer import load_tokenizer

HOW_TO_OBTAIN = ("how to obtain: request LLaMA-1 weights from Meta and place them as <root>/7B/consolidated.00.pth; "
                 "see docs/lavin.md")
#: LLaMA-1 uses RoPE with base 10000 (Meta's ``precompute_freqs_cis(theta=10000.0)``).
LLAMA1_ROPE_THETA = 10000.0
#: Meta's checkpoints may hold the precomputed rotary table; HF recomputes it, so it is skipped.
IGNORED_META_KEYS = ("rope.freqs",)
#: LLaMA's tokenizer has no pad token; id 0 (unk) fills padded positions, which are never attended to and never scored.
PAD_ID = 0
#: Frozen-weight dtype when ``dtype: auto``: fp16 on GPU (the reference recipe), fp32 on CPU (fp16 matmuls are ~150×
#: slower there).
AUTO_DTYPE = {"cuda": torch.float16, "cpu": torch.float32}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# How Meta splits each tensor across model-parallel shards (dimension to concatenate; None = replicated).
_SHARD_DIM_GLOBAL = {"tok_embeddings.weight": 1, "norm.weight": None, "output.weight": 0}
_SHARD_DIM_LAYER = {
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0, "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0, "feed_forward.w2.weight": 1, "feed_forward.w3.weight": 0,
    "attention_norm.weight": None, "ffn_norm.weight": None,
}
_META_TO_HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
}
_META_TO_HF_GLOBAL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                      "output.weight": "lm_head.weight"}


def load_llama_tokenizer(path: str | Path) -> Any:
    """LLaMA's ``tokenizer.model`` with ids identical to sentencepiece's (Meta's code and LaVIN's reference)."""
    if not Path(path).is_file():
        raise missing_file(Path(path), "tokenizer.model", HOW_TO_OBTAIN)
    return load_tokenizer(path, match_sentencepiece=True)


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` | ``float32`` | ``float16`` | ``bfloat16`` → torch dtype (auto: by device type)."""
    if name == "auto":
        return AUTO_DTYPE.get(torch.device(device).type, torch.float32)
    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be auto or one of {', '.join(DTYPES)}, got '{name}'")
    return DTYPES[name]


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's SwiGLU width: 2/3 of 4·dim, optionally scaled, rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def read_meta_params(size_dir: Path) -> dict[str, Any]:
    path = size_dir / "params.json"
    if not path.is_file():
        raise missing_file(path, "params.json", HOW_TO_OBTAIN)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"cannot parse {path}: {e}") from e


def llama_config_from_meta(params: dict[str, Any], vocab_size: int) -> "LlamaConfig":  # noqa: F821
    """The ``LlamaConfig`` equivalent to a Meta ``params.json`` (``vocab_size: -1`` there: taken from the tokenizer)."""
    from transformers import LlamaConfig

    try:
        dim, n_heads = int(params["dim"]), int(params["n_heads"])
        config = LlamaConfig(
            vocab_size=vocab_size if int(params.get("vocab_size", -1)) <= 0 else int(params["vocab_size"]),
            hidden_size=dim,
            intermediate_size=ffn_hidden_dim(dim, int(params["multiple_of"]), params.get("ffn_dim_multiplier")),
            num_hidden_layers=int(params["n_layers"]),
            num_attention_heads=n_heads,
            num_key_value_heads=int(params.get("n_kv_heads") or n_heads),
            rms_norm_eps=float(params["norm_eps"]),
            rope_theta=float(params.get("rope_theta", LLAMA1_ROPE_THETA)),
            tie_word_embeddings=False,
        )
    except KeyError as e:
        raise CheckpointError(f"params.json lacks key {e}; it must hold dim, n_layers, n_heads, norm_eps, multiple_of") from e
    return config


def permute_for_hf_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from Meta's interleaved (re, im) pairs to HF's [first halves | second halves]."""
    out_dim, in_dim = weight.shape
    return weight.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One ``consolidated.NN.pth``, tensors only (``weights_only``: a file that would run code is refused)."""
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # UnpicklingError for code-running pickles, RuntimeError for torn or non-torch files
        raise CheckpointError(f"refusing to load {path}: it is not a plain tensor checkpoint "
                              f"({' '.join(str(e).split())[:160]}); re-download the LLaMA weights ({HOW_TO_OBTAIN})") from e
    if not isinstance(shard, dict):
        raise CheckpointError(f"{path} holds a {type(shard).__name__}, not a state dict of tensors; re-download it")
    return shard


def load_meta_state_dict(size_dir: Path, n_layers: int) -> dict[str, torch.Tensor]:
    """Read ``consolidated.NN.pth`` (memory-mapped) and merge model-parallel shards into full Meta-named tensors."""
    shards = sorted(size_dir.glob("consolidated.*.pth"))
    if not shards:
        raise missing_file(size_dir / "consolidated.00.pth", "LLaMA weights", HOW_TO_OBTAIN)
    loaded = [_load_shard(p) for p in shards]
    expected = dict(_SHARD_DIM_GLOBAL)
    for i in range(n_layers):
        expected.update({f"layers.{i}.{k}": d for k, d in _SHARD_DIM_LAYER.items()})
    for path, shard in zip(shards, loaded):
        extra = sorted(set(shard) - set(expected) - set(IGNORED_META_KEYS))
        missing = sorted(set(expected) - set(shard))
        if extra or missing:
            raise CheckpointError(
                f"{path} does not match params.json ({n_layers} layers): "
                + (f"unexpected key '{extra[0]}'" if extra else f"missing key '{missing[0]}'")
                + " — is it a LLaMA checkpoint of this size?")
    merged = {}
    for key, dim in expected.items():
        parts = [shard[key] for shard in loaded]
        merged[key] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return merged


def meta_to_hf_state_dict(meta: dict[str, torch.Tensor], config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Rename Meta keys to ``LlamaForCausalLM``'s and permute q/k for HF's rotary layout."""
    out = {hf: meta[k].to(dtype) for k, hf in _META_TO_HF_GLOBAL.items()}
    for i in range(config.num_hidden_layers):
        for k, hf in _META_TO_HF_LAYER.items():
            w = meta[f"layers.{i}.{k}"]
            if k == "attention.wq.weight":
                w = permute_for_hf_rotary(w, config.num_attention_heads)
            elif k == "attention.wk.weight":
                w = permute_for_hf_rotary(w, config.num_key_value_heads)
            out[f"model.layers.{i}.{hf}"] = w.to(dtype)
    return out


def _build_on_meta(config: Any, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaForCausalLM

    config.dtype = dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def _fix_rotary_buffers(model: nn.Module) -> None:
    """The rotary table is a non-persistent buffer (not in any state dict): rebuild it on the CPU after ``assign``."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.model.rotary_emb = LlamaRotaryEmbedding(config=model.config)


def load_llama(root: str | Path, size: str = "7B", fmt: str = "meta", dtype: torch.dtype = torch.float32,
               load_weights: bool = True, quantization: str | None = None,
               device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load LLaMA as a ``LlamaForCausalLM`` (on the CPU) and its tokenizer.

    ``fmt``: ``meta`` reads ``<root>/<size>/`` and ``<root>/tokenizer.model``; ``hf`` reads the directory ``<root>``
    (``size`` unused). ``load_weights=False`` builds the model on the meta device from the config alone (for counting
    parameters without the weights on disk). ``quantization`` (``8bit`` | ``4bit``): the decoder's linear layers are
    quantized as they load onto ``device`` (vlmkit/models/quantization.py); otherwise the model is on the CPU.
    """
    quantized = quantized_load_options(quantization, dtype, device) if quantization and load_weights else None
    root = Path(root)
    if fmt == "meta":
        tokenizer = load_llama_tokenizer(root / "tokenizer.model")
        size_dir = root / size
        config = llama_config_from_meta(read_meta_params(size_dir), tokenizer.vocab_size)
        model = _build_on_meta(config, dtype)
        if not load_weights:
            return model, tokenizer
        state = meta_to_hf_state_dict(load_meta_state_dict(size_dir, config.num_hidden_layers), config, dtype)
        if state["model.embed_tokens.weight"].shape[0] != config.vocab_size:
            raise CheckpointError(
                f"{size_dir}: embedding has {state['model.embed_tokens.weight'].shape[0]} rows but {root / 'tokenizer.model'} "
                f"has {config.vocab_size} tokens: the tokenizer does not belong to these weights")
        if state["model.layers.0.mlp.gate_proj.weight"].shape[0] != config.intermediate_size:
            raise CheckpointError(f"{size_dir}: FFN width differs from params.json's multiple_of/ffn_dim_multiplier")
        if quantized:
            from transformers import LlamaForCausalLM

            return LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                                    **quantized), tokenizer
        model.load_state_dict(state, strict=True, assign=True)
        _fix_rotary_buffers(model)
        return model, tokenizer
    if fmt == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        if not (root / "config.json").is_file():
            raise missing_file(root / "config.json", "LLaMA HF config.json",
                               "point model.llama_root at a directory written by save_pretrained; see docs/lavin.md")
        tokenizer = load_llama_tokenizer(root / "tokenizer.model")
        if not load_weights:
            return _build_on_meta(LlamaConfig.from_pretrained(root, local_files_only=True), dtype), tokenizer
        if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
            raise missing_file(root / "model.safetensors", "LLaMA weights", HOW_TO_OBTAIN)
        model = LlamaForCausalLM.from_pretrained(root, local_files_only=True, dtype=dtype, **(quantized or {}))
        return model, tokenizer
    raise ConfigError(f"model.llama_format must be 'meta' or 'hf', got '{fmt}'")
