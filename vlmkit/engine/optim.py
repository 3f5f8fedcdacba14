"""Optimizer construction: AdamW (torch or bitsandbytes) over the trainable parameters, LaVIN's weight-decay rule."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.extras import require

logger = logging.getLogger("vlmkit")

#: The batch size the base learning rate refers to (MAE/LaVIN convention: lr = blr · effective_batch / 256).
BLR_REFERENCE_BATCH = 256

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw", "paged_adamw8bit")


def effective_batch_size(run: Mapping[str, Any], world_size: int) -> int:
    return int(run["batch_size"]) * world_size * int(run["accum_iter"])


def resolve_lr(run: Mapping[str, Any], world_size: int) -> float:
    """``run.lr`` if set, else ``run.blr · effective_batch / 256``."""
    if run.get("lr") is not None:
        return float(run["lr"])
    return float(run["blr"]) * effective_batch_size(run, world_size) / BLR_REFERENCE_BATCH


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D parameters (norm scales, embeddings of one vector, gates) are not decayed."""
    return param.ndim < 2 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups of the trainable parameters: decayed and not decayed (names kept for inspection)."""
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if no_weight_decay(name, param):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, run: Mapping[str, Any], lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``run.optimizer`` over ``model``'s trainable parameters."""
    groups = param_groups(model, float(run["weight_decay"]))
    if not groups:
        raise ConfigError("the model has no trainable parameters: nothing to train (check the model's trainable settings)")
    name = run.get("optimizer", "adamw")
    betas = tuple(float(b) for b in run["betas"])
    kwargs = dict(lr=lr, betas=betas, eps=float(run["eps"]))
    if name == "adamw":
        # param_names is informational; torch.optim keeps unknown group keys in its state_dict, which is fine.
        return torch.optim.AdamW(groups, **kwargs)
    if name not in OPTIMIZERS:
        raise ConfigError(f"run.optimizer '{name}' is not one of: {', '.join(OPTIMIZERS)}")
    bnb = require("bitsandbytes", "quant", f"run.optimizer '{name}'")
    cls = {
        "adamw8bit": bnb.optim.AdamW8bit,
        "paged_adamw": bnb.optim.PagedAdamW,  # 32-bit paged AdamW, LaVIN's optimizer
        "paged_adamw8bit": bnb.optim.PagedAdamW8bit,
    }[name]
    for g in groups:
        g.pop("param_names")  # bitsandbytes rejects unknown group keys in some versions
    return cls(groups, **kwargs)
