"""The run directory's rules: one writer at a time, a finished run is never overwritten by accident, a resume continues
only the run it was, and an evaluation gets a directory of its own.

- Lock: ``<output_dir>/.vlmkit.lock`` holds the writer's pid and host while a run writes; a second writer is refused with
  one line naming that pid. A lock whose process is gone (killed) is taken over.
- A new (not ``--resume``) training run into a directory that holds a run is refused unless ``--overwrite``; with it the
  old run's files are moved, whole, into ``<output_dir>/.previous/`` and deleted only once the new run has finished, so a
  failing new run never leaves the directory half old, half new (the old files stay in ``.previous``).
- ``--resume`` compares the checkpoint's config with the new one: a changed key that alters the data order, the
  effective batch, the model or the optimisation is refused with one line naming it (``--force-config`` accepts it and the
  log records it); evaluation, logging and bookkeeping keys may change (:data:`RESUME_SAFE`).
- ``vlmkit evaluate`` writes into ``run.output_dir`` (or ``--output-dir``) unless that directory holds a training run:
  then into ``<dir>/evaluations/<time>/``, so the run's own predictions and metrics are never replaced.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmkit.errors import ConfigError
from vlmkit.io import process_alive

logger = logging.getLogger("vlmkit")

LOCK_FILE = ".vlmkit.lock"
PREVIOUS_DIR = ".previous"
#: Files whose presence means a directory holds a training run (finished or not).
RUN_MARKERS = ("config.yaml", "model.safetensors", "checkpoints")  # an evaluation alone writes none of them
#: Dotted config keys (or prefixes ending in ".") that may differ between a checkpoint and its ``--resume``.
RESUME_SAFE = (
    "run.output_dir", "run.device", "run.num_workers", "run.validate_images", "run.eval_batch_size", "run.val_splits",
    "run.test_splits", "run.eval_every", "run.save_every", "run.log_every", "run.tensorboard", "run.generate.",
    "run.hooks", "run.imports", "run.strategy", "run.fsdp_reshard_after_forward", "run.max_steps",
    "run.find_unused_parameters", "run.vision_cache_gb", "run.vision_cache_spill", "run.group_by_length",
)
#: Safe to change, but worth a line in the log.
RESUME_NOTED = ("run.max_steps",)


# --- lock
def lock_holder(out: Path) -> str | None:
    """``"pid P on HOST"`` of a live process writing ``out``, or None."""
    try:
        pid_text, _, host = (out / LOCK_FILE).read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    host = host.strip()
    if pid == os.getpid() or (host == socket.gethostname() and not process_alive(pid)):
        return None
    return f"pid {pid} on {host or 'this machine'}"


def refuse_if_locked(out: Path) -> None:
    holder = lock_holder(out)
    if holder is not None:
        raise ConfigError(f"run.output_dir {out} is being written by another vlmkit process ({holder}); wait for it "
                          f"to end, stop it, or choose another run.output_dir (a killed run's stale {LOCK_FILE} is "
                          "taken over automatically)")


class RunDirLock:
    """``with RunDirLock(out):`` — this process is the directory's only writer for the block."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE

    def __enter__(self) -> RunDirLock:
        refuse_if_locked(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()} {socket.gethostname()}\n")
        os.replace(tmp, self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path.read_text().split(" ", 1)[0] == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


# --- a run already there
def existing_run(out: Path) -> str | None:
    """What ``out`` holds, in words ("a finished run of model 'lavin'"), or None when it holds no run."""
    present = [name for name in RUN_MARKERS if (out / name).exists()]
    if not present:
        return None
    arch = _arch_of(out)
    state = "a finished run" if (out / "model.safetensors").is_file() else "an unfinished run"
    return f"{state}{f' of model {arch!r}' if arch else ''} ({', '.join(present)})"


def _arch_of(out: Path) -> str | None:
    from vlmkit.engine.checkpoint import peek_arch

    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.load(out / "config.yaml").model.arch)
    except Exception:  # no or unreadable config: the checkpoint may say; the markers still say a run is there
        last = out / "checkpoints" / "last.pt"
        return peek_arch(last) if last.is_file() else None


def move_previous_run(out: Path) -> Path:
    """Move every entry of ``out`` (except the lock) into ``out/.previous`` (replacing an older one); return it."""
    previous = out / PREVIOUS_DIR
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for entry in out.iterdir():
        if entry.name not in (PREVIOUS_DIR, LOCK_FILE):
            os.replace(entry, previous / entry.name)
    return previous


def drop_previous_run(out: Path) -> None:
    shutil.rmtree(out / PREVIOUS_DIR, ignore_errors=True)


# --- resume
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) or key.startswith(s + ".") for s in RESUME_SAFE)


def resume_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(changed keys a resume must refuse, changed keys that are safe), as ``key: old -> new``."""
    old_flat, new_flat = _flatten(stored), _flatten(new)
    refused, safe = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        if old != value:
            (safe if _safe(key) else refused).append(f"{key}: {old!r} -> {value!r}")
    return refused, safe


# --- evaluations
def evaluation_dir(target: Path) -> Path:
    """Where an evaluation aimed at ``target`` writes: ``target`` itself, or a fresh ``target/evaluations/<time>`` when
    ``target`` holds a training run."""
    if not (target / "checkpoints").exists() and not (target / "model.safetensors").exists():
        return target
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = target / "evaluations" / stamp
    n = 1
    while out.exists():
        n += 1
        out = target / "evaluations" / f"{stamp}-{n}"
    return out


def claim_output_dir(out: Path, overwrite: bool) -> Path | None:
    """Before a training run writes into ``out`` (every rank calls it): refuse a directory that holds a run unless
    ``overwrite``; with it, move the old run aside into ``.previous/`` and return where it went."""
    from vlmkit import dist

    held = dist.broadcast_object(existing_run(out) if dist.is_main() else None)  # before rank 0 writes there
    if held is None:
        return None
    if not overwrite:
        raise ConfigError(f"run.output_dir {out} already holds {held}; --resume continues it, --overwrite "
                          f"replaces it (the old files are kept in {out / PREVIOUS_DIR} until the new run "
                          "finishes), or choose another run.output_dir")
    moved = move_previous_run(out) if dist.is_main() else out / PREVIOUS_DIR
    dist.barrier()
    return moved
