"""OpenFlamingo checkpoint interop: read released / open-flamingo checkpoints, write ones open-flamingo reads.

open-flamingo's key names (REFERENCE §3) are the names of this model's own parameters, with two exceptions handled
here:

* ``lang_encoder.model.embed_tokens.weight`` is one (vocab + new tokens, dim) matrix there; here the frozen rows are
  ``...embed_tokens.weight`` and the trainable new-token rows ``...embed_tokens.new_weight``.
* v1 files repeat every cross-attention block as ``lang_encoder.gated_cross_attn_layers.{i}.*`` (and full state dicts
  every decoder layer as ``lang_encoder.old_decoder_blocks.{i}.*``); DDP/FSDP add ``module.`` and wrapper segments.

open-flamingo loads with ``strict=False``, which hides a checkpoint that does not fit. Here every key must name a tensor
of the model with the same shape, and every trainable tensor must be in the file: what the file lacks is provably
frozen.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError, missing_file
from vlmkit.io import write_atomic
from vlmkit.models.base import LoadReport


CHECKPOINT_HOW_TO_OBTAIN = ("how to obtain: checkpoint.pt of a released OpenFlamingo model (e.g. Hugging Face repo "
                            "openflamingo/OpenFlamingo-9B-deprecated for LLaMA-7B), or a file written by "
                            "save_openflamingo_checkpoint; see docs/flamingo.md")
#: Segments that distributed wrappers insert into parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_V1_CROSS_ATTN = re.compile(r"^lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)$")
_OLD_DECODER_BLOCK = re.compile(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)$")


@dataclass
class OpenFlamingoLoadReport(LoadReport):
    """``missing`` (trainable tensors the file lacks) is empty after a strict load; ``frozen_absent`` lists the frozen
    tensors the file does not hold, so ``model tensors − loaded == frozen_absent`` is the proof that nothing trained
    was left at its initial value."""

    frozen_absent: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: safetensors, or a torch file of plain tensors (``torch.load(weights_only=True)``).

    Accepts a bare state dict (released ``checkpoint.pt``), open-flamingo's training checkpoints
    (``{"model_state_dict": ...}``) and vlmkit's (``{"model": ...}``).
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "OpenFlamingo checkpoint", CHECKPOINT_HOW_TO_OBTAIN)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read OpenFlamingo checkpoint {path} as plain tensors: "
                              f"{' '.join(str(e).split())[:200]}") from e
    for wrapper_key in ("model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper_key), dict):
            obj = obj[wrapper_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _strip_wrappers(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key


def _with_base_layer(name: str) -> str:
    """peft LoRA moves a wrapped layer's own weight to ``<layer>.base_layer.<weight>``."""
    head, _, leaf = name.rpartition(".")
    return f"{head}.base_layer.{leaf}"


def to_model_names(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """Map checkpoint keys (open-flamingo's or this model's own) to parameter names: ``{name: (file key, tensor)}``."""
    targets = _targets(model)
    layers, embed, vocab = model.layers_param_prefix, model.embedding_param_prefix, model.tokens.base_vocab
    out: dict[str, tuple[str, torch.Tensor]] = {}

    def put(name: str, key: str, value: torch.Tensor) -> None:
        if name in out and not torch.equal(out[name][1], value):
            raise CheckpointError(f"checkpoint holds two different values for '{name}' ('{out[name][0]}' and '{key}'): "
                                  "it is corrupt or was edited")
        out.setdefault(name, (key, value))

    for key, value in state.items():
        name = _strip_wrappers(key)
        if match := _V1_CROSS_ATTN.match(name):
            name = f"{layers}.{match[1]}.gated_cross_attn_layer.{match[2]}"
        elif match := _OLD_DECODER_BLOCK.match(name):
            name = f"{layers}.{match[1]}.decoder_layer.{match[2]}"
        if name == f"{embed}.weight" and value.ndim == 2 and value.shape[0] == vocab + model.tokens.n_new:
            put(f"{embed}.weight", key, value[:vocab])
            put(f"{embed}.new_weight", key, value[vocab:])
            continue
        if name not in targets and _with_base_layer(name) in targets:
            name = _with_base_layer(name)
        put(name, key, value)
    return out


def _targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a state dict of the model holds (parameters and persistent buffers), by name."""
    return dict(model.state_dict(keep_vars=True))


def _is_quantized(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ in ("Int8Params", "Params4bit")


def load_openflamingo_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                                 strict: bool = True) -> OpenFlamingoLoadReport:
    """Load a state dict in open-flamingo's layout or this model's own (trainable-only or full)."""
    named = to_model_names(model, state)
    targets = _targets(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    report = OpenFlamingoLoadReport()
    for name, (key, value) in named.items():
        if name not in targets:
            report.unexpected.append(key)
            continue
        target = targets[name]
        if _is_quantized(target):
            raise CheckpointError(f"checkpoint tensor '{key}' is a frozen language-model weight, but the LM is "
                                  "quantized (model.lm.quantization): load a trainable-only checkpoint instead")
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(f"checkpoint tensor '{key}' has shape {tuple(value.shape)} but the model's '{name}' "
                                  f"has {tuple(target.shape)}: a checkpoint of another shape (another LM or vision "
                                  "size, perceiver/cross_attn settings, or cross_attn.every_n_layers)")
        report.loaded.append(name)
    if report.unexpected:
        raise CheckpointError(f"checkpoint has {len(report.unexpected)} keys this OpenFlamingo model does not have "
                              f"(e.g. '{report.unexpected[0]}'): it is a checkpoint of another model or configuration")
    loaded = set(report.loaded)
    report.missing = sorted(trainable - loaded)
    report.frozen_absent = sorted(set(targets) - trainable - loaded)
    if strict and report.missing:
        raise CheckpointError(f"checkpoint lacks {len(report.missing)} trainable tensors (e.g. '{report.missing[0]}'), "
                              "so they would keep their random initial values: it is a checkpoint of another "
                              "configuration (e.g. cross_attn.every_n_layers) or an incomplete file")
    with torch.no_grad():
        for name in report.loaded:
            targets[name].copy_(named[name][1].to(targets[name].dtype))
    return report


def load_openflamingo_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> OpenFlamingoLoadReport:
    """Load an OpenFlamingo ``checkpoint.pt`` / ``.safetensors`` (released, open-flamingo-trained or vlmkit-saved)."""
    return load_openflamingo_state_dict(model, read_checkpoint(path), strict=strict)


def openflamingo_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights under open-flamingo's key names (what its released ``checkpoint.pt`` files hold)."""
    embed = model.embedding_param_prefix
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_" in name:
            raise ConfigError("open-flamingo has no LoRA adapters, so this model (model.lora.enabled) cannot be saved "
                              "in its format; keep the vlmkit checkpoint (model.safetensors) instead")
        if name == f"{embed}.new_weight":
            state[f"{embed}.weight"] = model.lang_encoder.get_input_embeddings().full_weight().detach()
        else:
            state[name] = param.detach()
    return state


def save_openflamingo_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write :func:`openflamingo_state_dict` to ``path`` (``.safetensors``, else a torch file like ``checkpoint.pt``).

    open-flamingo reads it with ``model.load_state_dict(torch.load(path), strict=False)`` and finds no unexpected keys.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.to("cpu").contiguous().clone() for k, v in openflamingo_state_dict(model).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_atomic(path, lambda tmp: save_file(state, str(tmp)))
    return write_atomic(path, lambda tmp: torch.save(state, tmp))
