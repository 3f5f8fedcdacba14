"""Loading OpenFlamingo's frozen parts from local files: tokenizer (+ its new special tokens), language model and
vision tower.

Nothing is fetched from a hub: every path is a local file or directory, and a missing one raises a one-line error that
says how to obtain it.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError, missing_file
from vlmkit.models.clip import HOW_TO_OBTAIN, build_clip_vision
from vlmkit.models.flamingo.modules import EmbeddingWithNewTokens
from vlmkit.models.quantization import quantized_load_options

MEDIA_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"  # added only when the tokenizer has no pad token (LLaMA's has none)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Where the decoder layer list lives in the causal LMs open-flamingo was used with (LLaMA, OPT, GPT-J, Pythia, MPT).
DECODER_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")

LM_HOW_TO_OBTAIN = ("how to obtain: a Hugging Face directory of LLaMA-7B (config.json, weights, tokenizer), e.g. made "
                    "with transformers' convert_llama_weights_to_hf from Meta's files; set model.lm.path or "
                    "VLMKIT_FLAMINGO_LM; see docs/flamingo.md")
CLIP_HOW_TO_OBTAIN = HOW_TO_OBTAIN.format(key="model.vision.weights", env="VLMKIT_FLAMINGO_CLIP") + "; see docs/flamingo.md"


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens OpenFlamingo adds; they are ``base_vocab, base_vocab + 1, ...`` in the order added."""

    eoc_id: int
    media_id: int
    pad_id: int
    base_vocab: int  # tokenizer size before the additions = number of frozen embedding rows
    n_new: int  # 2, or 3 when <PAD> was added


def add_flamingo_tokens(tokenizer: Any) -> SpecialTokens:
    """Add ``<|endofchunk|>``, ``<image>`` (and ``<PAD>`` if there is no pad token) exactly as open-flamingo does.

    A tokenizer saved after that (open-flamingo's own) already has them; either way they must be the last ids, in this
    order, because checkpoints store their embedding rows right after the LM's vocabulary.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_CHUNK_TOKEN, MEDIA_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    eoc_id, media_id = tokenizer.convert_tokens_to_ids([END_OF_CHUNK_TOKEN, MEDIA_TOKEN])
    base_vocab, total = eoc_id, len(tokenizer)
    new_tokens = tokenizer.convert_ids_to_tokens(list(range(base_vocab, total)))
    if new_tokens not in ([END_OF_CHUNK_TOKEN, MEDIA_TOKEN], [END_OF_CHUNK_TOKEN, MEDIA_TOKEN, PAD_TOKEN]):
        raise ConfigError(f"the tokenizer's last ids are {new_tokens[:4]} (from id {base_vocab}), expected "
                          f"{END_OF_CHUNK_TOKEN}, {MEDIA_TOKEN} [, {PAD_TOKEN}]: point model.lm.tokenizer at the "
                          "LM's own tokenizer (or one saved by open-flamingo)")
    return SpecialTokens(eoc_id, media_id, tokenizer.pad_token_id, base_vocab, total - base_vocab)


def load_language_model(cfg: Mapping[str, Any], vocab_size: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The causal LM: random from ``cfg['tiny']`` (LlamaConfig fields) or loaded from the directory ``cfg['path']``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    quantization = cfg.get("quantization")
    if cfg.get("tiny") is not None:
        if quantization is not None:
            raise ConfigError("model.lm.quantization needs an LM saved in a directory (model.lm.path), "
                              "not model.lm.tiny")
        fields = {"vocab_size": vocab_size, "tie_word_embeddings": False, **dict(cfg["tiny"])}
        return LlamaForCausalLM(LlamaConfig(**fields)).to(dtype)
    path = Path(str(cfg["path"]))
    if not (path / "config.json").is_file():
        raise missing_file(path, "language model directory (config.json + weights)", LM_HOW_TO_OBTAIN)
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "dtype": dtype}
    if quantization is not None:
        options.update(quantized_load_options(quantization, dtype, device, "model.lm.quantization"))
    return AutoModelForCausalLM.from_pretrained(str(path), **options)


def extend_vocabulary(lm: nn.Module, tokens: SpecialTokens, generator: torch.Generator) -> None:
    """Give the new tokens embedding rows: trainable input rows (own parameter), frozen output rows.

    New rows are drawn around the mean of the existing rows from ``generator``, so a model built twice from the same
    config is identical (a checkpoint holds the trainable input rows but, like open-flamingo's, not the output rows).
    """
    rows = lm.get_input_embeddings().weight.shape[0]
    if rows < tokens.base_vocab:
        raise CheckpointError(f"the tokenizer has {tokens.base_vocab} tokens but the language model only {rows} "
                              "embedding rows: model.lm.tokenizer is not the tokenizer of model.lm.path")
    lm.resize_token_embeddings(tokens.base_vocab + tokens.n_new, mean_resizing=False)
    embedding, output = lm.get_input_embeddings(), lm.get_output_embeddings()
    with torch.no_grad():
        new_input_rows = _rows_like(embedding.weight[: tokens.base_vocab], tokens.n_new, generator)
        if output is not None:
            output.weight[tokens.base_vocab:] = _rows_like(output.weight[: tokens.base_vocab], tokens.n_new, generator)
    lm.set_input_embeddings(EmbeddingWithNewTokens(embedding.weight.detach()[: tokens.base_vocab], new_input_rows))
    # The input rows now live apart from the output matrix; stop transformers from re-tying them.
    text_config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    text_config.tie_word_embeddings = False


def _rows_like(rows: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    rows = rows.float()
    noise = torch.randn(n, rows.shape[1], generator=generator)
    return (rows.mean(0).cpu() + noise * rows.std(0).cpu()).to(rows.device)


def decoder_layers(lm: nn.Module, attr: str | None) -> tuple[str, nn.ModuleList]:
    """The LM's decoder layer list and its dotted path (``model.layers`` for LLaMA)."""
    for path in [attr] if attr else DECODER_LAYER_PATHS:
        try:
            layers = functools.reduce(getattr, path.split("."), lm)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    tried = attr or ", ".join(DECODER_LAYER_PATHS)
    raise ConfigError(f"cannot find the decoder layers of {type(lm).__name__} (tried {tried}); set "
                      "model.lm.decoder_layers_attr to the dotted path of its nn.ModuleList of layers")


def apply_lora(lm: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Inject peft LoRA adapters into the LM in place (parameter names stay those of the LM, plus ``lora_*``)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=int(cfg["r"]), lora_alpha=int(cfg["alpha"]), lora_dropout=float(cfg["dropout"]),
                        target_modules=list(cfg["target_modules"]), bias="none")
    try:
        inject_adapter_in_model(config, lm)
    except ValueError as e:
        raise ConfigError(f"model.lora.target_modules {list(cfg['target_modules'])} do not match modules of "
                          f"{type(lm).__name__}: {e}") from e


def build_vision_tower(cfg: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    """The frozen CLIP ViT (eval mode) of ``model.vision`` (vlmkit/models/clip.py, the one CLIP loader)."""
    visual = build_clip_vision(str(cfg["model_name"]), cfg.get("weights"), cfg.get("tiny"), CLIP_HOW_TO_OBTAIN)
    return visual.to(dtype).requires_grad_(False).eval()
