"""The pieces a run is built from: seeding, loaders, the model and its wrapper (DDP/FSDP), checkpoint loading, logging.

:class:`vlmkit.engine.runner.Runner` puts them together; they are separate so that a reader (or a notebook) can use one
without the others.
"""
from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlmkit import dist
from vlmkit.engine.batching import LengthGroupedBatches, prompt_lengths
from vlmkit.engine.checkpoint import is_vlmkit_state, load_weights, save_weights
from vlmkit.engine.fsdp import STRATEGIES, check_fsdp_supported, full_tensors, shard_model
from vlmkit.engine.trainer import ResumableSampler, move_to_device
from vlmkit.errors import CheckpointError, ConfigError, DataError, missing_file
from vlmkit.io import stable_seed
from vlmkit.registry import MODELS, TASKS
from vlmkit.tasks.base import Task

logger = logging.getLogger("vlmkit")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Every rank uses the same seed: models start identical."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds Python's random and itself per worker from the loader's generator; NumPy needs the same.
    np.random.seed(torch.initial_seed() % 2**32)


def build_loader(dataset: Dataset, model: Any, run: Mapping[str, Any], train: bool) -> DataLoader:
    """A loader over this rank's shard: shuffled per epoch (``set_epoch``) when training; for evaluation, batches of
    similar prompt length (``run.group_by_length``, vlmkit/engine/batching.py) or padded shards in dataset order."""
    generator = torch.Generator()
    generator.manual_seed(stable_seed("loader", int(run["seed"]), dist.rank()))
    common = {"collate_fn": model.collator(train), "num_workers": int(run["num_workers"]), "generator": generator,
              "worker_init_fn": _seed_worker, "pin_memory": torch.cuda.is_available()}
    if not train and run.get("group_by_length", True):
        lengths = prompt_lengths(dataset, getattr(model, "tokenizer", None))
        if lengths is not None:
            batches = LengthGroupedBatches(lengths, int(run["eval_batch_size"]), dist.rank(), dist.world_size())
            return DataLoader(dataset, batch_sampler=batches, **common)
    sampler = ResumableSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train,
                               seed=int(run["seed"]), drop_last=False)
    return DataLoader(dataset, batch_size=int(run["batch_size"] if train else run["eval_batch_size"]), sampler=sampler,
                      **common)


def build_task(cfg: DictConfig) -> Task:
    if not cfg.run.get("task"):
        raise ConfigError(f"run.task is not set (one of: {', '.join(TASKS.names())})")
    return TASKS.get(cfg.run.task).from_config(cfg)


def build_model(cfg: DictConfig, device: torch.device) -> nn.Module:
    model = MODELS.build(cfg.model, device=device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %s trainable of %s parameters", cfg.model.arch, f"{n_train:,}", f"{n_all:,}")
    return model


def check_datasets(datasets: Mapping[str, Mapping[str, Dataset]]) -> None:
    for name, by_split in datasets.items():
        for split, ds in by_split.items():
            if len(ds) == 0:  # type: ignore[arg-type]
                raise DataError(f"dataset '{name}' split '{split}' is empty (0 samples): check datasets.{name} "
                                f"(its root/annotation files) or remove '{split}' from the run's splits")


def check_strategy(run: Mapping[str, Any]) -> str:
    strategy = run.get("strategy", "ddp")
    if strategy not in STRATEGIES:
        raise ConfigError(f"run.strategy '{strategy}' is not one of: {', '.join(STRATEGIES)}")
    return str(strategy)


def wrap_model(model: nn.Module, run: Mapping[str, Any], device: torch.device) -> nn.Module:
    """DDP or FSDP across ranks (a single process trains the model itself). FSDP shards ``model`` in place and returns
    it; DDP returns a wrapper around it."""
    strategy = check_strategy(run)
    if strategy == "fsdp":
        check_fsdp_supported(model, run)  # also on one process: the run must not fail only once it gets more GPUs
    if dist.world_size() == 1:
        return model
    if strategy == "fsdp":
        return shard_model(model, run, device)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=bool(run.get("find_unused_parameters", False)))


def save_weights_from_all_ranks(model: Any, path: Path, arch: str) -> None:
    """Write the trainable weights (``.safetensors``) from rank 0; every rank calls it (FSDP gathers the shards)."""
    weights = full_tensors(model.trainable_state_dict())
    if dist.is_main():
        save_weights(weights, path, {"arch": arch})
    dist.barrier()


def load_checkpoint_into(model: Any, path: str | Path, arch: str) -> None:
    """Load trained weights: ``.safetensors`` (trainable weights), a vlmkit ``.pt`` checkpoint, or a model's own format."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "checkpoint", "pass --checkpoint <output_dir>/model.safetensors of a finished run")
    try:
        _load_checkpoint_file(model, path, arch)
    except CheckpointError as e:
        message = str(e)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from e
    logger.info("loaded weights from %s", path)


def _load_checkpoint_file(model: Any, path: Path, arch: str) -> None:
    if path.suffix == ".safetensors":
        model.load_trainable_state_dict(load_weights(path))
        return
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        obj = None  # not a plain-tensor file; the model's own loader may still read it
    if is_vlmkit_state(obj):
        if obj.get("arch") != arch:
            raise CheckpointError(f"{path} is a checkpoint of model '{obj.get('arch')}', but this config builds '{arch}'")
        model.load_trainable_state_dict(obj["model"])
    elif hasattr(model, "load_external_checkpoint"):
        model.load_external_checkpoint(str(path))
    else:
        raise CheckpointError(f"{path} is neither a .safetensors file nor a vlmkit checkpoint, and model '{arch}' "
                              "reads no other checkpoint format")


@contextlib.contextmanager
def run_logging(log_file: Path | None = None) -> Iterator[None]:
    """Without ``log_file``: INFO to stdout on rank 0 (warnings elsewhere). With it: also to that file (rank 0), used
    once the run may write into its output directory; the result tables (logger ``vlmkit.tables``) go there too."""
    tables = logging.getLogger("vlmkit.tables")
    tables.setLevel(logging.INFO)
    tables.propagate = False
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    if log_file is None:
        logger.setLevel(logging.INFO if dist.is_main() else logging.WARNING)
        logger.propagate = False
        attached.append((logger, logging.StreamHandler(sys.stdout)))
    elif dist.is_main():
        log_file.parent.mkdir(parents=True, exist_ok=True)
        attached.append((logger, logging.FileHandler(log_file)))
        attached.append((tables, logging.FileHandler(log_file)))
    for target, handler in attached:
        handler.setFormatter(logging.Formatter("%(message)s") if target is tables else
                             logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        target.addHandler(handler)
    try:
        yield
    finally:
        for target, handler in attached:
            target.removeHandler(handler)
            handler.close()


def apply_effective_batch(run: DictConfig, world_size: int) -> None:
    """``run.effective_batch`` fixes the global batch whatever the GPU count: derive ``run.accum_iter`` from it."""
    if run.get("effective_batch") is None:
        return
    per_step = int(run.batch_size) * world_size
    if int(run.effective_batch) % per_step:
        raise ConfigError(f"run.effective_batch={run.effective_batch} is not a multiple of run.batch_size × ranks = "
                          f"{run.batch_size} × {world_size}: change run.batch_size or the number of processes")
    run.accum_iter = int(run.effective_batch) // per_step


def on_device(loader: DataLoader, device: torch.device) -> Iterator[dict[str, Any]]:
    for batch in loader:
        yield move_to_device(batch, device)
