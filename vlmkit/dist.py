"""Distributed helpers: torchrun environment, rank queries, object gathering, a barrier that works without a group.

Every function works unchanged in a plain single-process run (no process group): rank 0 of world size 1.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as tdist


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto") -> torch.device:
    """Join the torchrun process group when launched by torchrun (nccl on GPU, gloo on CPU); return this rank's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_dist():
        if use_cuda:
            torch.cuda.set_device(local_rank())
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if use_cuda:
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a one-element list without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: float) -> float:
    """The mean of a scalar across ranks."""
    if not is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if tdist.get_backend() == "nccl":
        t = t.cuda()
    tdist.all_reduce(t)
    return float(t.item()) / world_size()


def all_ranks(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (a collective; ``flag`` itself without a process group)."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if tdist.get_backend() == "nccl":
        t = t.cuda()
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item())


def cleanup() -> None:
    if is_dist():
        tdist.destroy_process_group()
