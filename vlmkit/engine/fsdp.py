"""``run.strategy: fsdp``: torch's fully-sharded data parallel (``fully_shard``, a.k.a. FSDP2) for models too big to
replicate per GPU (OpenFlamingo-9B with optimizer state on 40/80 GB cards).

How vlmkit uses it:

* **Units.** Every module of a class in ``model.fsdp_wrap_classes()`` (a decoder layer, a cross-attention block, the
  Perceiver, a vision block) becomes one unit, sharded across the ranks and all-gathered just for its own forward and
  backward; everything else (embeddings, LM head, norms, the vision stem) is the root unit. Sharding happens in place:
  parameter names do not change, so checkpoints of sharded and unsharded runs are interchangeable.
* **Entry points.** ``generate`` (or the methods a model lists in ``fsdp_forward_methods``) is registered as a forward
  method, so a call that does not go through ``forward`` gathers the root's parameters too. Every rank must make the same sequence of calls: evaluation shards are padded to equal length and
  models generate with ``synced_gpus=True`` (a rank that finished keeps stepping until all have).
* **Checkpoints.** Trainable weights are gathered to full tensors (:func:`full_tensors`, a collective) and saved as
  usual; the optimizer state is saved keyed by parameter name with full tensors, so a run can resume with any number
  of ranks and with either strategy.
* **Precision.** Parameters stay in the dtype the model gave them (frozen backbone in ``model.dtype``, trainable parts
  in float32); ``run.amp`` autocasts the compute as it does under DDP. Gradients are reduced in their parameter's dtype.

What it cannot shard: bitsandbytes-quantized weights (8-/4-bit LMs) and bitsandbytes optimizers; both are refused.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from vlmkit import dist
from vlmkit.errors import CheckpointError, ConfigError

logger = logging.getLogger("vlmkit")

STRATEGIES = ("ddp", "fsdp")


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def check_fsdp_supported(model: nn.Module, run: Mapping[str, Any]) -> None:
    """Refuse what FSDP cannot shard, naming the setting to change."""
    arch = type(model).__name__
    if not callable(getattr(model, "fsdp_wrap_classes", None)):
        raise ConfigError(f"run.strategy=fsdp: model {arch} does not say how to shard itself (it defines no "
                          "fsdp_wrap_classes(); see docs/extending.md); use run.strategy=ddp")
    quantized = sorted({type(p).__name__ for p in model.parameters() if type(p).__module__.startswith("bitsandbytes")})
    if quantized:
        raise ConfigError(f"run.strategy=fsdp cannot shard bitsandbytes-quantized weights ({', '.join(quantized)}): "
                          "set the model's quantization to null, or train the 8-/4-bit model with run.strategy=ddp")
    optimizer = run.get("optimizer", "adamw")
    if optimizer != "adamw":
        raise ConfigError(f"run.strategy=fsdp needs run.optimizer=adamw (bitsandbytes' '{optimizer}' does not handle "
                          "sharded parameters)")


def shard_model(model: nn.Module, run: Mapping[str, Any], device: torch.device) -> nn.Module:
    """Shard ``model`` in place across all ranks (one unit per ``model.fsdp_wrap_classes()`` module + the root)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    check_fsdp_supported(model, run)
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    reshard = bool(run.get("fsdp_reshard_after_forward", True))
    classes = tuple(model.fsdp_wrap_classes())  # type: ignore[operator]
    units = [m for m in model.modules() if isinstance(m, classes) and m is not model]
    # Innermost first: a unit's parameters are those not already claimed by a unit inside it.
    for module in reversed(units):
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    for name in getattr(model, "fsdp_forward_methods", ("generate",)):
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    logger.info("FSDP: %d units + root sharded over %d ranks", len(units), dist.world_size())
    return model


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally for one micro-batch (DDP ``no_sync``; FSDP: skip the reduce-scatter)."""
    if hasattr(model, "no_sync"):
        with model.no_sync():  # type: ignore[operator]
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
    else:
        yield


def full_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every sharded (DTensor) value gathered to a full tensor. Collective when any is sharded: call it
    on every rank with the same keys."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}


def to_float(value: Any) -> float:
    """A (possibly replicated DTensor) scalar as a Python float."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)


def load_trainable(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load full trainable weights into a (possibly sharded) model: each rank keeps its own shard."""
    if not is_sharded(model):
        model.load_trainable_state_dict(state)  # type: ignore[operator]
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise CheckpointError(f"weights have {len(unknown)} tensors this model does not have (e.g. '{unknown[0]}')")
    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state to checkpoint. Sharded models: keyed by parameter name with full tensors (on rank 0; other
    ranks get ``{}``), so any rank count and strategy can resume it. Collective for sharded models."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Restore either form :func:`optimizer_state_dict` writes into ``optimizer`` (sharded or not)."""
    keyed_by_name = any(isinstance(p, str) for g in state.get("param_groups", []) for p in g.get("params", []))
    try:
        if not keyed_by_name and not is_sharded(model):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not keyed_by_name:
            state = _name_keyed(model, optimizer, state)
        set_optimizer_state_dict(model, optimizer, dict(state), options=StateDictOptions(full_state_dict=True))
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint's optimizer state does not match this run's optimizer: "
                              f"{' '.join(str(e).split())[:300]}") from e


def _name_keyed(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> dict[str, Any]:
    """An index-keyed ``optimizer.state_dict()`` (what an unsharded run saves) re-keyed by parameter name: index i is the
    i-th parameter of this optimizer's groups, as both runs build their optimizer the same way."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    if len(saved) != len(order):
        raise ValueError(f"it holds {len(saved)} parameters, this optimizer {len(order)}")
    by_index = dict(zip(saved, order))
    groups = [{**g, "params": [by_index[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {by_index[i]: v for i, v in state["state"].items()}, "param_groups": groups}
