"""Trainer hooks: learning-rate schedule, logging, evaluation with best-checkpoint keeping, checkpointing; and the
hooks a run may add in ``run.hooks`` (registry ``HOOKS``): ``wandb``.

Hooks run on every rank (collectives inside them stay in step); only rank 0 writes files. Their order matters and is set
by the runner: LR first (so the others see the schedule after the step), then logging, evaluation, checkpointing (so a
checkpoint includes the best metric so far).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmkit import dist
from vlmkit.engine.schedulers import StepScheduler
from vlmkit.engine.trainer import HookBase
from vlmkit.extras import require
from vlmkit.io import write_json_atomic
from vlmkit.registry import HOOKS

logger = logging.getLogger("vlmkit")


class MetricsFiles:
    """``metrics.jsonl`` (one JSON object per log step and per evaluation) and ``metrics.json`` (latest per split)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.jsonl = Path(output_dir) / "metrics.jsonl"
        self.json = Path(output_dir) / "metrics.json"

    def append(self, record: Mapping[str, Any]) -> None:
        if not dist.is_main():
            return
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def update_latest(self, key: str, metrics: Mapping[str, Any]) -> None:
        """Replace ``metrics.json[key]``, keeping the other splits already in the file."""
        if not dist.is_main():
            return
        latest: dict[str, Any] = {}
        if self.json.is_file():
            try:
                latest = json.loads(self.json.read_text())
            except json.JSONDecodeError:
                logger.warning("%s is not valid JSON; rewriting it", self.json)
        latest[key] = _jsonable(dict(metrics))
        write_json_atomic(self.json, latest)

    def truncate_after(self, step: int) -> None:
        """On resume: drop the lines the interrupted run wrote after the checkpoint it resumes from."""
        if not dist.is_main() or not self.jsonl.is_file():
            return
        kept = []
        for line in self.jsonl.read_text().splitlines():
            try:
                rec_step = json.loads(line).get("step")
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec_step is None or rec_step <= step:
                kept.append(line)
        self.jsonl.write_text("".join(line + "\n" for line in kept))

    def reset(self) -> None:
        if dist.is_main() and self.jsonl.is_file():
            self.jsonl.unlink()


def _jsonable(obj: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become null; tensors and numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            obj = obj.item()
        except (ValueError, RuntimeError):
            return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class LRHook(HookBase):
    """Advances the learning-rate schedule after every optimizer step."""

    def __init__(self, scheduler: StepScheduler) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class LoggingHook(HookBase):
    """Every ``log_every`` steps: a metrics.jsonl line, a log.txt line, tensorboard scalars; a tqdm bar on rank 0."""

    def __init__(self, metrics: MetricsFiles, log_every: int, total_steps: int, tensorboard_dir: Path | None) -> None:
        self.metrics = metrics
        self.log_every = max(1, log_every)
        self.total_steps = total_steps
        self.tensorboard_dir = tensorboard_dir
        self.writer: Any = None
        self.bar: Any = None

    def before_train(self) -> None:
        t = self.trainer
        self._window: list[float] = []
        self._t0, self._samples0 = time.perf_counter(), t.samples_seen  # type: ignore[attr-defined]
        if not dist.is_main():
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.total_steps, initial=t.step, desc="train", dynamic_ncols=True)
        if self.tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard is not installed; skipping event files")
            else:
                self.writer = SummaryWriter(str(self.tensorboard_dir))

    def after_step(self) -> None:
        t = self.trainer
        last = t.last  # type: ignore[attr-defined]
        if math.isfinite(last["loss"]):
            self._window.append(last["loss"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
        if t.step % self.log_every != 0:
            return
        local = sum(self._window) / len(self._window) if self._window else float("nan")
        loss = dist.all_reduce_mean(local)  # collective: every rank logs at the same steps
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        samples_per_s = (t.samples_seen - self._samples0) * dist.world_size() / elapsed  # type: ignore[attr-defined]
        record = {"split": "train", "epoch": t.epoch, "step": t.step, "loss": loss, "lr": last["lr"],
                  "grad_norm": last["grad_norm"], "samples_per_s": samples_per_s,
                  "skipped_steps": t.skipped_steps}  # type: ignore[attr-defined]
        self.metrics.append(record)
        if dist.is_main():
            logger.info("epoch %d step %d loss %.4f lr %.3e grad_norm %.3f %.1f samples/s skipped %d", t.epoch, t.step,
                        loss, last["lr"], last["grad_norm"], samples_per_s, record["skipped_steps"])
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "samples_per_s", "skipped_steps"):
                value = record[key]
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, t.step)
        self._window = []
        self._t0, self._samples0 = time.perf_counter(), t.samples_seen  # type: ignore[attr-defined]

    def after_eval(self, key: str, metrics: Mapping[str, Any], step: int | None) -> None:
        if self.writer is None or step is None:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{key}/{name}", value, step)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class EvalHook(HookBase):
    """Evaluates the validation splits every ``eval_every`` epochs and keeps the best weights by the main metric.

    ``evaluate(epoch, step)`` runs on every rank and returns the score to maximise (None when nothing was evaluated);
    ``save_best()`` writes the current weights as the best (rank 0 writes, every rank calls it).
    """

    def __init__(self, evaluate: Callable[[int, int], float | None], save_best: Callable[[], None], eval_every: int) -> None:
        self.evaluate = evaluate
        self.save_best = save_best
        self.eval_every = eval_every
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.evaluated = False

    def after_epoch(self) -> None:
        t = self.trainer
        if self.eval_every <= 0 or not t.epoch_finished() or (t.epoch + 1) % self.eval_every != 0:
            return
        score = self.evaluate(t.epoch, t.step)
        t.module.train()  # type: ignore[attr-defined]  # evaluation switched to eval mode
        if score is None:
            return
        self.evaluated = True
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, t.epoch
            self.save_best()
            if dist.is_main():
                logger.info("new best validation score %.4f at epoch %d", score, t.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "evaluated": self.evaluated}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = state.get("best_epoch")
        self.evaluated = bool(state.get("evaluated", False))


class CheckpointHook(HookBase):
    """Writes ``checkpoints/last.pt`` every ``save_every`` optimizer steps (0: never mid-epoch) and at every epoch end."""

    def __init__(self, save: Callable[[], None], save_every: int) -> None:
        self.save = save
        self.save_every = save_every

    def after_step(self) -> None:
        t = self.trainer
        # The epoch-end save follows right after the last step of an epoch (after its evaluation); do not save twice.
        if self.save_every > 0 and t.step % self.save_every == 0 and not t.epoch_finished() and not t.done():
            self.save()

    def after_epoch(self) -> None:
        self.save()


def _scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@HOOKS.register("wandb")
class WandbHook(HookBase):
    """Weights & Biases: the resolved config, training loss/lr/grad-norm and every evaluation's metrics.

    ``mode: offline`` (the default) writes the run under ``<output_dir>/wandb/`` without a network (upload it later
    with ``wandb sync``); ``online`` needs an account. Needs ``pip install "vlmkit[wandb]"``.
    """

    default_config = {"project": "vlmkit", "name": None, "mode": "offline", "log_every": 10, "tags": []}

    def __init__(self, project: str, name: str | None, mode: str, log_every: int, tags: list[str]) -> None:
        self.project, self.name, self.mode = project, name, mode
        self.log_every, self.tags = max(1, int(log_every)), list(tags)
        self.run: Any = None

    def before_train(self) -> None:
        if not dist.is_main() or self.run is not None:
            return
        wandb = require("wandb", "wandb", "the wandb hook (run.hooks)")
        out = Path(self.runner.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf

        self.run = wandb.init(project=self.project, name=self.name or out.name, mode=self.mode, dir=str(out),
                              tags=self.tags, config=OmegaConf.to_container(self.runner.cfg, resolve=True))

    def after_step(self) -> None:
        t = self.trainer
        if self.run is None or t.step % self.log_every != 0:
            return
        last = t.last  # type: ignore[attr-defined]
        self.run.log(_scalars({"loss": last["loss"], "lr": last["lr"], "grad_norm": last["grad_norm"]}, "train"),
                     step=t.step)

    def after_eval(self, key: str, metrics: Mapping[str, Any], step: int | None) -> None:
        if self.run is not None:
            self.run.log(_scalars(metrics, key), step=step)

    def after_run(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

