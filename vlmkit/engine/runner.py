"""What ``tools/train.py`` and ``tools/evaluate.py`` run: build everything from the config, train and/or evaluate.

Nothing is written to ``run.output_dir`` until the config, the model and the data have all been built, so a bad input
leaves no half-written run behind.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vlmkit import dist
from vlmkit.config import save_config, to_dict
from vlmkit.engine.checkpoint import (is_vlmkit_state, load_state, load_weights, peek_arch, save_state,
                                      save_weights)
from vlmkit.engine.fsdp import STRATEGIES, check_fsdp_supported, full_tensors, is_sharded, load_trainable, shard_model
from vlmkit.engine.hooks import CheckpointHook, EvalHook, LoggingHook, LRHook, MetricsFiles
from vlmkit.engine.optim import build_optimizer, effective_batch_size, resolve_lr
from vlmkit.engine.schedulers import build_scheduler
from vlmkit.engine.trainer import AMP_DTYPES, ResumableSampler, Trainer, hash_seed
from vlmkit.errors import CheckpointError, ConfigError, DataError, VlmkitError, missing_file
from vlmkit.registry import MODELS, TASKS
from vlmkit.tasks.base import Task, run_evaluation

logger = logging.getLogger("vlmkit")

LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_WEIGHTS = Path("checkpoints") / "best.safetensors"
FINAL_WEIGHTS = "model.safetensors"


# --- building blocks


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Every rank uses the same seed: models start identical."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds Python's random and itself per worker from the loader's generator; NumPy needs the same.
    np.random.seed(torch.initial_seed() % 2**32)


def build_loader(dataset: Dataset, model: Any, run: Mapping[str, Any], train: bool) -> DataLoader:
    """A loader over this rank's shard: shuffled per epoch (``set_epoch``) when training, padded shards otherwise."""
    sampler = ResumableSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train,
                               seed=int(run["seed"]), drop_last=False)
    generator = torch.Generator()
    generator.manual_seed(hash_seed(int(run["seed"]), 0, dist.rank()))
    return DataLoader(dataset, batch_size=int(run["batch_size"] if train else run["eval_batch_size"]), sampler=sampler,
                      collate_fn=model.collator(train), num_workers=int(run["num_workers"]), generator=generator,
                      worker_init_fn=_seed_worker, pin_memory=torch.cuda.is_available())


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
    once the run may write into its output directory."""
    handlers: list[logging.Handler] = []
    if log_file is None:
        logger.setLevel(logging.INFO if dist.is_main() else logging.WARNING)
        logger.propagate = False
        handlers.append(logging.StreamHandler(sys.stdout))
    elif dist.is_main():
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def metric_key(dataset: str, split: str, n_datasets: int) -> str:
    """``<split>`` for a run over one dataset, ``<dataset>_<split>`` when several share a split name."""
    return split if n_datasets == 1 else f"{dataset}_{split}"


def evaluate_splits(model: Any, task: Task, datasets: Mapping[str, Mapping[str, Dataset]], splits: Sequence[str],
                    run: Mapping[str, Any], device: torch.device, metrics: MetricsFiles, epoch: int | None,
                    step: int | None) -> dict[str, dict[str, Any]]:
    """Evaluate every dataset's ``splits`` (those it has); write predictions, metrics.jsonl and metrics.json."""
    out = Path(run["output_dir"])
    amp = AMP_DTYPES.get(run.get("amp") or "")
    results: dict[str, dict[str, Any]] = {}
    model.eval()
    for name, by_split in datasets.items():
        for split in splits:
            if split not in by_split:
                continue
            ds = by_split[split]
            key = metric_key(name, split, len(datasets))
            evaluator = task.build_evaluator(name, split, ds)
            loader = build_loader(ds, model, run, train=False)
            gen_kwargs = task.generation_kwargs()
            if is_sharded(model):  # every generation step is a collective: ranks that finished keep stepping
                gen_kwargs["synced_gpus"] = True
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                result = run_evaluation(model, _on_device(loader, device), evaluator, gen_kwargs,
                                        out / "predictions" / f"{name}_{split}.json", desc=f"eval {key}")
            results[key] = result
            metrics.append({"split": key, "dataset": name, "epoch": epoch, "step": step, **result})
            metrics.update_latest(key, result)
    return results


def _on_device(loader: DataLoader, device: torch.device) -> Iterator[dict[str, Any]]:
    from vlmkit.engine.trainer import move_to_device

    for batch in loader:
        yield move_to_device(batch, device)


def format_metrics(task: Task, key: str, metrics: Mapping[str, Any]) -> str:
    """The task's own table if it has one, else ``metric  value`` rows of the scalar metrics."""
    if hasattr(task, "format_table"):
        body = task.format_table(metrics)
    else:
        rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        width = max((len(k) for k, _ in rows), default=0)
        body = "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows)
    return f"== {key} ==\n{body}"


def print_tables(task: Task, results: Mapping[str, Mapping[str, Any]]) -> None:
    if dist.is_main():
        for key, metrics in results.items():
            print(format_metrics(task, key, metrics), flush=True)


def _main_score(task: Task, results: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean of the task's main metric over the evaluated validation splits (higher is better)."""
    if not results:
        return None
    scores = []
    for key, metrics in results.items():
        if task.main_metric not in metrics:
            raise VlmkitError(f"task '{type(task).__name__}' reported no main metric '{task.main_metric}' for {key} "
                              f"(it reported: {', '.join(metrics)})")
        scores.append(float(metrics[task.main_metric]))
    return sum(scores) / len(scores)


# --- entry points


def train(cfg: DictConfig, resume: bool = False) -> dict[str, dict[str, Any]]:
    """Train per ``cfg.run``, evaluate on the test splits, return the final metrics by split."""
    device = dist.init(cfg.run.device)
    try:
        with run_logging():
            return _train(cfg, resume, device)
    finally:
        dist.cleanup()


def apply_effective_batch(run: DictConfig, world_size: int) -> None:
    """``run.effective_batch`` fixes the global batch whatever the GPU count: derive ``run.accum_iter`` from it."""
    if run.get("effective_batch") is None:
        return
    per_step = int(run.batch_size) * world_size
    if int(run.effective_batch) % per_step:
        raise ConfigError(f"run.effective_batch={run.effective_batch} is not a multiple of run.batch_size × ranks = "
                          f"{run.batch_size} × {world_size}: change run.batch_size or the number of processes")
    run.accum_iter = int(run.effective_batch) // per_step


def _train(cfg: DictConfig, resume: bool, device: torch.device) -> dict[str, dict[str, Any]]:
    run = cfg.run
    check_strategy(run)
    apply_effective_batch(run, dist.world_size())
    out = Path(run.output_dir)
    last_path, best_path = out / LAST_CHECKPOINT, out / BEST_WEIGHTS
    if resume and not last_path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {last_path} (run.output_dir={out}); "
                              "start without --resume, or point run.output_dir at the interrupted run")
    seed_everything(int(run.seed))
    task = build_task(cfg)
    model = build_model(cfg, device)
    datasets = task.build_datasets(model)
    check_datasets(datasets)
    train_sets = [by_split[s] for by_split in datasets.values() for s in run.train_splits if s in by_split]
    if not train_sets:
        raise DataError(f"no training data: none of the datasets has the splits run.train_splits={list(run.train_splits)}")

    state = None
    if resume:
        state = load_state(last_path)
        if state.get("arch") != cfg.model.arch:
            raise CheckpointError(f"{last_path} is a checkpoint of model '{state.get('arch')}', but this config builds "
                                  f"'{cfg.model.arch}'; resume with the config it was trained with")
        model.load_trainable_state_dict(state["model"])
    elif last_path.is_file():
        old_arch = peek_arch(last_path)
        if old_arch is not None and old_arch != cfg.model.arch:
            raise ConfigError(f"{out} holds a run of model '{old_arch}' ({last_path}); this config builds "
                              f"'{cfg.model.arch}': choose another run.output_dir")

    wrapped = wrap_model(model, run, device)
    loader = build_loader(ConcatDataset(train_sets), model, run, train=True)
    lr = resolve_lr(run, dist.world_size())
    optimizer = build_optimizer(model, run, lr)
    steps_per_epoch = math.ceil(len(loader) / int(run.accum_iter))
    total_steps = steps_per_epoch * int(run.epochs)
    if run.max_steps is not None:
        total_steps = min(total_steps, int(run.max_steps))
    scheduler = build_scheduler(optimizer, run.scheduler, lr, float(run.min_lr), total_steps, steps_per_epoch)
    trainer = Trainer(wrapped, model, loader, optimizer, scheduler, run, device)

    metrics = MetricsFiles(out)
    val_splits = list(run.val_splits)

    def evaluate_val(epoch: int, step: int) -> float | None:
        results = evaluate_splits(model, task, datasets, val_splits, run, device, metrics, epoch, step)
        for key, result in results.items():
            logging_hook.log_eval(key, result, step)
        print_tables(task, results)
        return _main_score(task, results)

    def save_best() -> None:
        save_weights_from_all_ranks(model, best_path, cfg.model.arch)

    def save_last() -> None:
        # Collectives: the trainer gathers every rank's RNG state (and FSDP optimizer shards), full_tensors the weights.
        trainer_state = trainer.state_dict()
        weights = full_tensors(model.trainable_state_dict())
        if dist.is_main():
            save_state({"arch": cfg.model.arch, "config": to_dict(cfg), "model": weights, **trainer_state}, last_path)
        dist.barrier()

    logging_hook = LoggingHook(metrics, int(run.log_every), total_steps,
                               out / "tensorboard" if run.tensorboard else None)
    eval_hook = EvalHook(evaluate_val, save_best, int(run.eval_every) if val_splits else 0)
    trainer.register_hooks([LRHook(scheduler), logging_hook, eval_hook, CheckpointHook(save_last, int(run.save_every))])
    if state is not None:
        trainer.load_state_dict(state)
        del state

    # Everything is built and valid: from here on the run writes into output_dir.
    with run_logging(out / "log.txt"):
        if dist.is_main():
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        if resume:
            metrics.truncate_after(trainer.step)
            logger.info("resuming from %s at epoch %d, batch %d of %d (step %d)", last_path, trainer.epoch,
                        trainer.iter_in_epoch, len(loader), trainer.step)
        else:
            metrics.reset()
            if last_path.is_file():
                logger.info("%s exists from an earlier run of the same model; starting fresh (it will be overwritten)", last_path)
        logger.info("effective batch %d (batch %d x %d ranks x accum %d); lr %.4g%s; %d steps (%d per epoch)",
                    effective_batch_size(run, dist.world_size()), run.batch_size, dist.world_size(), run.accum_iter, lr,
                    "" if run.lr is not None else f" = blr {run.blr:g} x {effective_batch_size(run, dist.world_size())} / 256",
                    total_steps, steps_per_epoch)
        dist.barrier()

        trainer.train()

        save_weights_from_all_ranks(model, out / FINAL_WEIGHTS, cfg.model.arch)
        logger.info("trained weights: %s (%d skipped steps)", out / FINAL_WEIGHTS, trainer.skipped_steps)
        test_splits = list(run.test_splits)
        if not test_splits:
            return {}
        if eval_hook.evaluated and best_path.is_file():
            load_trainable(model, load_weights(best_path))
            logger.info("testing the best validation weights (epoch %s)", eval_hook.best_epoch)
        results = evaluate_splits(model, task, datasets, test_splits, run, device, metrics, trainer.epoch, trainer.step)
        print_tables(task, results)
        return results


def evaluate(cfg: DictConfig, checkpoint: str | None = None, splits: list[str] | None = None,
             evaluate_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate ``splits`` (default ``run.test_splits``) with optional trained weights; return metrics by split.

    ``evaluate_fn(cfg, task, model, datasets, splits, device)`` replaces the single evaluation once everything is built
    and checked (the few-shot sweep of :mod:`vlmkit.engine.sweep` evaluates many dataset settings with one model).
    """
    device = dist.init(cfg.run.device)
    try:
        with run_logging():
            return _evaluate(cfg, checkpoint, splits, device, evaluate_fn)
    finally:
        dist.cleanup()


def _evaluate(cfg: DictConfig, checkpoint: str | None, splits: list[str] | None, device: torch.device,
              evaluate_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    splits = list(splits) if splits else list(cfg.run.test_splits)
    if not splits:
        raise ConfigError("nothing to evaluate: run.test_splits is empty and no --split was given")
    # The task builds only what this run uses: the evaluated splits.
    cfg.run.train_splits, cfg.run.val_splits, cfg.run.test_splits = [], [], splits
    strategy = check_strategy(cfg.run)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise missing_file(checkpoint, "checkpoint", "pass --checkpoint <output_dir>/model.safetensors of a finished run")
    seed_everything(int(cfg.run.seed))
    task = build_task(cfg)
    model = build_model(cfg, device)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, cfg.model.arch)
    datasets = task.build_datasets(model)
    check_datasets(datasets)
    if strategy == "fsdp":
        model = wrap_model(model, cfg.run, device)  # a model too big for one device is evaluated sharded too
    found = {s for by_split in datasets.values() for s in by_split}
    missing = [s for s in splits if s not in found]
    if missing:
        raise DataError(f"no dataset of this config has the split(s) {', '.join(missing)} (available: {', '.join(sorted(found))})")
    out = Path(cfg.run.output_dir)
    with run_logging(out / "log.txt"):
        if evaluate_fn is not None:
            return evaluate_fn(cfg, task, model, datasets, splits, device)
        results = evaluate_splits(model, task, datasets, splits, cfg.run, device, MetricsFiles(out), None, None)
        print_tables(task, results)
    return results
