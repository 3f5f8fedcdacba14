"""The training loop: a small ``TrainerBase`` that runs hooks, and ``Trainer`` whose ``run_step`` is the only hot path.

Positions are counted in three units: ``epoch``; ``iter_in_epoch``, the micro-batches of this epoch already consumed;
and ``step``, the optimizer steps taken (a step happens at every gradient-accumulation boundary and at the end of each
epoch, whether it was applied or skipped for a non-finite loss). Hooks see the trainer after every optimizer step and
at epoch boundaries; checkpoints store the position so that a resumed run continues with the very next micro-batch.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from vlmkit import dist
from vlmkit.engine.checkpoint import rng_state, set_rng_state
from vlmkit.engine.fsdp import is_sharded, load_optimizer_state_dict, no_gradient_sync, optimizer_state_dict, to_float
from vlmkit.engine.schedulers import StepScheduler
from vlmkit.errors import VlmkitError
from vlmkit.io import stable_seed

logger = logging.getLogger("vlmkit")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class HookBase:
    """Called by the trainer at fixed points; ``self.trainer`` is set when the hook is registered.

    A hook of ``run.hooks`` (registry ``HOOKS``) also gets ``self.runner`` (the :class:`~vlmkit.engine.runner.Runner`:
    its ``cfg``, ``output_dir``, ``model``) and sees every evaluation result through ``after_eval``. Hooks run on every
    rank; write files on rank 0 only (``vlmkit.dist.is_main()``).
    """

    trainer: "TrainerBase"
    runner: Any = None

    def before_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def after_step(self) -> None: ...
    def after_epoch(self) -> None: ...
    def after_train(self) -> None: ...

    def after_eval(self, key: str, metrics: Mapping[str, Any], step: int | None) -> None:
        """After each evaluated split (``key`` as in metrics.json), during training and at its end."""

    def after_run(self) -> None:
        """After the whole run: training and the final test evaluation (the runner calls it)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (in dicts, lists and tuples) to ``device``; anything else (ids, strings) untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in batch):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class ResumableSampler(DistributedSampler):
    """A DistributedSampler (also used by a single process) that can start an epoch ``skip`` samples in.

    ``len()`` stays the full shard length, so the loader's batch count (and the accumulation boundaries) do not change
    when a resumed epoch starts part-way; the skipped samples are never loaded.
    """

    skip: int = 0

    def __iter__(self):  # type: ignore[override]
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the epoch being resumed starts late
        return iter(indices[skip:])


class TrainerBase:
    """Epoch/step bookkeeping and hook dispatch; subclasses implement ``run_step``."""

    def __init__(self, epochs: int, max_steps: int | None) -> None:
        self.epochs = epochs
        self.max_steps = max_steps
        self.epoch = 0
        self.iter_in_epoch = 0
        self.step = 0
        self.hooks: list[HookBase] = []
        self.stop_requested = False

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _call(self, name: str) -> None:
        for hook in self.hooks:
            getattr(hook, name)()

    def done(self) -> bool:
        return self.stop_requested or (self.max_steps is not None and self.step >= self.max_steps)

    def train(self) -> None:
        self._call("before_train")
        try:
            while self.epoch < self.epochs and not self.done():
                self._call("before_epoch")
                self.run_epoch()
                self._call("after_epoch")
                if self.iter_in_epoch >= self.batches_per_epoch():
                    self.epoch += 1
                    self.iter_in_epoch = 0
        finally:
            self._call("after_train")

    def run_epoch(self) -> None:
        raise NotImplementedError

    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def epoch_finished(self) -> bool:
        """True between the last micro-batch of an epoch and the epoch counter's increment (epoch-end hooks run here)."""
        return self.iter_in_epoch >= self.batches_per_epoch()


class Trainer(TrainerBase):
    """Gradient accumulation, autocast (bf16/fp16 + grad scaler), clipping, non-finite-loss skipping, no gradient
    sync inside an accumulation group (DDP and FSDP)."""

    def __init__(self, model: nn.Module, module: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scheduler: StepScheduler, run: Mapping[str, Any], device: torch.device) -> None:
        super().__init__(int(run["epochs"]), run.get("max_steps"))
        self.model = model  # possibly DDP/FSDP-wrapped
        self.module = module  # the VLModel itself
        self.loader = loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.accum_iter = int(run["accum_iter"])
        self.grad_clip = run.get("grad_clip")
        self.nan_policy = run.get("nan_policy", "skip")
        self.seed = int(run["seed"])
        amp = run.get("amp")
        if amp not in (None, *AMP_DTYPES):
            raise VlmkitError(f"run.amp '{amp}' is not one of: null, {', '.join(AMP_DTYPES)}")
        self.amp_dtype = AMP_DTYPES.get(amp) if amp else None
        if amp == "fp16" and is_sharded(model):
            # Agrees across ranks on whether any gradient shard overflowed, so every rank skips the same steps.
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler: torch.amp.GradScaler = ShardedGradScaler(device.type)
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.skipped_steps = 0
        # What the last optimizer step did, read by the logging hook.
        self.last: dict[str, float] = {}
        self.samples_seen = 0  # on this rank, for throughput
        self._group_losses: list[float] = []
        self._group_bad = False

    # --- positions
    def batches_per_epoch(self) -> int:
        return len(self.loader)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.accum_iter)

    def _group_size(self, i: int) -> int:
        """How many micro-batches the accumulation group of micro-batch ``i`` has (the last one of an epoch may be short)."""
        start = (i // self.accum_iter) * self.accum_iter
        return min(self.accum_iter, len(self.loader) - start)

    def _set_loader_epoch(self) -> None:
        sampler = self.loader.sampler
        sampler.set_epoch(self.epoch)
        sampler.skip = self.iter_in_epoch * self.loader.batch_size  # type: ignore[attr-defined]
        gen = self.loader.generator
        if gen is not None:
            # The loader's own generator seeds workers; reseeding per (seed, epoch, rank) keeps resumes exact and leaves
            # the global RNG (dropout) untouched by iterator creation.
            gen.manual_seed(stable_seed("sampler", self.seed, self.epoch, dist.rank()))

    # --- the loop
    def run_epoch(self) -> None:
        self._set_loader_epoch()
        self.model.train()
        for i, batch in enumerate(self.loader, start=self.iter_in_epoch):
            self.run_step(i, batch)
            self.iter_in_epoch = i + 1
            if (i + 1) % self.accum_iter == 0 or i + 1 == len(self.loader):
                self.optimizer_step()
                self._call("after_step")
                if self.done():
                    break

    def run_step(self, i: int, batch: dict[str, Any]) -> None:
        """Forward and backward of one micro-batch; gradients accumulate until the group's boundary."""
        batch = move_to_device(batch, self.device)
        boundary = (i + 1) % self.accum_iter == 0 or i + 1 == len(self.loader)
        sync = contextlib.nullcontext() if boundary else no_gradient_sync(self.model)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with sync:
            with autocast:
                out = self.model(batch)
            loss = out["loss"]
            value = float(loss.detach())
            if not math.isfinite(value):
                self._group_bad = True
            # Backward even on a bad loss: under DDP every rank must reach the gradient all-reduce.
            self.scaler.scale(loss / self._group_size(i)).backward()
        self._group_losses.append(value)
        self.samples_seen += len(batch["ids"]) if "ids" in batch else 0

    def optimizer_step(self) -> None:
        """Apply (or skip) the accumulated update, then advance the schedule."""
        bad = self._agree(self._group_bad)
        grad_norm = float("nan")
        if not bad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = self._clip_and_norm()
            # Without a scaler, an overflowed gradient would poison the weights; with one, scaler.step skips it itself.
            if not self.scaler.is_enabled() and not math.isfinite(grad_norm):
                bad = self._agree(True)
        if bad:
            self.skipped_steps += 1
            if self.nan_policy == "stop":
                raise VlmkitError(
                    f"non-finite loss or gradient at epoch {self.epoch} step {self.step} (run.nan_policy=stop); "
                    "lower run.lr, use run.amp=bf16 or run.grad_clip, or set run.nan_policy=skip"
                )
            logger.warning("step %d: non-finite loss/gradient, update skipped (%d skipped so far)", self.step, self.skipped_steps)
            if self.scaler.is_enabled():
                self.scaler.update()  # lets the scaler lower its scale after an overflow
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        finite = [v for v in self._group_losses if math.isfinite(v)]
        self.last = {"loss": sum(finite) / len(finite) if finite else float("nan"), "grad_norm": grad_norm,
                     "lr": self.optimizer.param_groups[0]["lr"]}
        self._group_losses, self._group_bad = [], False
        self.step += 1  # the LRHook advances the schedule

    def _agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank, so all ranks skip the same steps."""
        return not dist.all_ranks(not flag)

    def _clip_and_norm(self) -> float:
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if not grads:
            return 0.0
        # Under FSDP the gradients are shards (DTensors): the norm is computed over all of them, across ranks.
        if self.grad_clip is not None:
            return to_float(torch.nn.utils.clip_grad_norm_(self.trainable, float(self.grad_clip)))
        return to_float(torch.nn.utils.get_total_norm(grads))

    # --- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs except the weights (which the caller adds). Collective: call on every rank."""
        rngs = dist.gather_objects(rng_state())
        return {
            "epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch, "step": self.step,
            "skipped_steps": self.skipped_steps, "world_size": dist.world_size(),
            "optimizer": optimizer_state_dict(self.model, self.optimizer), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs,
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["world_size"]) != dist.world_size():
            logger.warning("checkpoint was written by %d ranks, resuming with %d: data order and RNG will differ",
                           state["world_size"], dist.world_size())
        self.epoch, self.iter_in_epoch, self.step = int(state["epoch"]), int(state["iter_in_epoch"]), int(state["step"])
        if self.iter_in_epoch >= self.batches_per_epoch():
            self.epoch, self.iter_in_epoch = self.epoch + 1, 0
        self.skipped_steps = int(state["skipped_steps"])
        load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for hook in self.hooks:
            hook.load_state_dict(state["hooks"].get(type(hook).__name__, {}))
        rngs = state["rng"]
        set_rng_state(rngs[dist.rank()] if dist.rank() < len(rngs) else rngs[0])
