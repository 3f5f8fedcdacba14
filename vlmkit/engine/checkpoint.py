"""Checkpoint files: the full training state (``checkpoints/last.pt``) and trainable weights (``*.safetensors``).

``last.pt`` is loaded with ``torch.load(weights_only=True)``, so it holds only tensors and plain containers of
primitives: NumPy's RNG state is stored as a tensor plus numbers, the config as a plain dict. Every file is written to a
temporary name first and moved into place with ``os.replace``, so a crash never leaves half a checkpoint.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkit.errors import CheckpointError, DataError, missing_file
from vlmkit.io import atomic_path, remove_stale_temporaries, temporary_sibling, write_atomic

logger = logging.getLogger("vlmkit")

#: Marks a file as a vlmkit training checkpoint (versus e.g. an OpenFlamingo checkpoint.pt).
FORMAT_KEY = "vlmkit_checkpoint"
FORMAT_VERSION = 1


#: Headroom on top of the tensors' bytes when checking free space (pickle framing, the config, RNG states).
SAVE_OVERHEAD_BYTES = 16 * 2**20


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``last.pt`` → ``last.prev.pt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def tensor_bytes(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, Mapping):
        return sum(tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(v) for v in tree)
    return 0


def save_state(state: Mapping[str, Any], path: str | Path, keep_previous: bool = True) -> None:
    """Write a full training state atomically; the state it replaces is kept as ``<name>.prev.pt`` (so there are two
    good checkpoints). Free space is checked first; a failed write is one CheckpointError and leaves both in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = tensor_bytes(state) + SAVE_OVERHEAD_BYTES
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise CheckpointError(f"not enough free space to write {path}: it needs about {needed / 2**20:.0f} MiB and "
                              f"{free / 2**20:.0f} MiB are free; free some space (or move run.output_dir) and "
                              f"--resume{_kept(path)}")
    try:
        with atomic_path(path) as tmp:
            torch.save({FORMAT_KEY: FORMAT_VERSION, **state}, tmp)
            if keep_previous and path.is_file():
                _keep_as_previous(path)  # `path` stays in place until the new file replaces it atomically
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"could not write {path}: {' '.join(str(e).split())[:200]}; free some space (or "
                              f"move run.output_dir) and --resume{_kept(path)}") from e


def _keep_as_previous(path: Path) -> None:
    """Make ``<name>.prev.pt`` the current ``path`` (a hard link, or a copy where links are not supported)."""
    previous = previous_path(path)
    remove_stale_temporaries(previous)
    staging = temporary_sibling(previous)
    try:
        os.link(path, staging)
    except OSError:
        shutil.copyfile(path, staging)
    os.replace(staging, previous)


def _kept(path: Path) -> str:
    kept = [p for p in (path, previous_path(path)) if p.is_file()]
    return f" (kept: {', '.join(map(str, kept))})" if kept else ""


def load_state_or_previous(path: Path) -> tuple[dict[str, Any], Path]:
    """The state at ``path``, or — when that file is missing or unreadable — the previous one, with a warning."""
    try:
        return load_state(path), path
    except (CheckpointError, DataError) as newer_error:
        older = previous_path(path)
        if not older.is_file():
            raise
        state = load_state(older)
        logger.warning("%s; resuming from the checkpoint before it, %s (step %s)", newer_error, older,
                       state.get("step"))
        return state, older


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a vlmkit training checkpoint (tensors are loaded on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "checkpoint", "train first, or pass the path of an existing checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {' '.join(str(e).split())[:300]}") from e
    if not is_vlmkit_state(state):
        raise CheckpointError(f"{path} is not a vlmkit training checkpoint (it has no '{FORMAT_KEY}' key)")
    return state


def is_vlmkit_state(obj: Any) -> bool:
    return isinstance(obj, dict) and FORMAT_KEY in obj


def peek_arch(path: str | Path) -> str | None:
    """The model arch recorded in a checkpoint, or None when the file is unreadable or not a vlmkit checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return state.get("arch") if is_vlmkit_state(state) else None


def save_weights(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write trainable weights as safetensors, atomically."""
    from safetensors.torch import save_file

    # safetensors needs contiguous CPU tensors that share no storage.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata or {})))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "weights file", "train first, or pass the path of an existing .safetensors file")
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {' '.join(str(e).split())[:300]}") from e


# --- random number generators


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, as tensors and plain containers."""
    mt_name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": mt_name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    # weights_only loading turns tuples into lists; random.setstate wants the original tuple shape.
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
