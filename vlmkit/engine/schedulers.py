"""Learning-rate schedules, stepped once per optimizer step (i.e. at gradient-accumulation boundaries).

Every schedule is a closed form of the optimizer step ``t`` (0-based: ``lr_at(t)`` is the rate used by update ``t``):

* a linear warmup over ``w`` steps from 0 to the schedule's first value, ``lr_at(t) = main(0) · t / w`` for ``t < w``;
* after warmup, ``main(t - w)``, defined per schedule below (``S`` = optimizer steps per epoch).

Because the rate depends only on ``t``, a scheduler's whole state is ``t``: resuming restores it exactly.
Each schedule is registered in ``SCHEDULERS`` and built by :func:`build_scheduler` from ``run.scheduler``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer

from vlmkit.errors import ConfigError
from vlmkit.registry import SCHEDULERS


class StepScheduler:
    """Base of vlmkit schedules: sets every param group's ``lr`` to ``lr_at(step)`` (times the group's ``lr_scale``)."""

    def __init__(self, optimizer: Optimizer | None, *, lr: float, total_steps: int, steps_per_epoch: int,
                 warmup_steps: int = 0, min_lr: float = 0.0) -> None:
        if steps_per_epoch < 1 or total_steps < 1:
            raise ConfigError(f"a schedule needs at least one optimizer step (got total {total_steps}, per epoch {steps_per_epoch})")
        self.optimizer = optimizer
        self.base_lr = float(lr)
        self.min_lr = float(min_lr)
        self.total_steps = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_steps = max(0, int(warmup_steps))
        self.step_count = 0
        self._apply()

    # --- the schedule
    def main(self, t: int) -> float:
        """The rate ``t`` steps after warmup."""
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.main(0) * step / self.warmup_steps
        return self.main(step - self.warmup_steps)

    # --- stepping
    def step(self) -> None:
        """Advance one optimizer step and set the rate of the next update."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        return self.lr_at(self.step_count)

    def _apply(self) -> None:
        if self.optimizer is None:
            return
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "name": type(self).__name__}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()


@SCHEDULERS.register("constant")
class ConstantSchedule(StepScheduler):
    """``main(t) = lr``."""

    def main(self, t: int) -> float:
        return self.base_lr


@SCHEDULERS.register("warmup_cosine")
class WarmupCosineSchedule(StepScheduler):
    """LaVIN's schedule: ``main(t) = min_lr + (lr - min_lr) · ½ · (1 + cos(π · t / (T - w)))``."""

    def main(self, t: int) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(t, span) / span
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULERS.register("step_decay")
class StepDecaySchedule(StepScheduler):
    """``main(t) = max(min_lr, lr · step_gamma ^ floor(t / (step_epochs · S)))``."""

    default_config = {"step_epochs": 5.0, "step_gamma": 0.5}

    def __init__(self, optimizer: Optimizer | None, *, steps_per_epoch: int,
                 step_epochs: float = default_config["step_epochs"], step_gamma: float = default_config["step_gamma"],
                 **kwargs: Any) -> None:
        self.step_size = max(1, round(step_epochs * steps_per_epoch))
        self.step_gamma = float(step_gamma)
        super().__init__(optimizer, steps_per_epoch=steps_per_epoch, **kwargs)

    def main(self, t: int) -> float:
        return max(self.min_lr, self.base_lr * self.step_gamma ** (t // self.step_size))


@SCHEDULERS.register("exponential_decay")
class ExponentialDecaySchedule(StepScheduler):
    """``main(t) = max(min_lr, lr · gamma ^ (t / S))``: ``gamma`` per epoch, applied continuously per step."""

    default_config = {"gamma": 0.99}  # per-epoch factor

    def __init__(self, optimizer: Optimizer | None, *, gamma: float = default_config["gamma"], **kwargs: Any) -> None:
        self.gamma = float(gamma)
        super().__init__(optimizer, **kwargs)

    def main(self, t: int) -> float:
        return max(self.min_lr, self.base_lr * self.gamma ** (t / self.steps_per_epoch))


CYCLICAL_MODES = ("triangular", "triangular2", "exp_range")


@SCHEDULERS.register("cyclical")
class CyclicalSchedule(StepScheduler):
    """Smith's cyclical learning rate (CLR) between ``base = lr · base_lr_ratio`` and ``lr``.

    With half-cycle ``h = cycle_epochs · S / 2``: ``cycle = floor(1 + t / 2h)``, ``x = |t / h - 2·cycle + 1|`` and
    ``main(t) = base + (lr - base) · max(0, 1 - x) · scale``, where ``scale`` is 1 (triangular),
    ``1 / 2^(cycle-1)`` (triangular2: the amplitude halves every cycle) or ``gamma^t`` (exp_range).
    A cycle starts at ``base``, peaks at ``lr`` after ``h`` steps and returns to ``base``.
    """

    #: mode: triangular | triangular2 | exp_range; cycle_epochs: a full up-and-down cycle; base_lr_ratio: lowest lr
    #: of a cycle as a fraction of lr; gamma: exp_range's per-step decay of the amplitude.
    default_config = {"mode": "triangular", "cycle_epochs": 2.0, "base_lr_ratio": 0.1, "gamma": 0.99}

    def __init__(self, optimizer: Optimizer | None, *, steps_per_epoch: int, mode: str = default_config["mode"],
                 cycle_epochs: float = default_config["cycle_epochs"],
                 base_lr_ratio: float = default_config["base_lr_ratio"], gamma: float = default_config["gamma"],
                 **kwargs: Any) -> None:
        if mode not in CYCLICAL_MODES:
            raise ConfigError(f"run.scheduler.mode '{mode}' is not one of: {', '.join(CYCLICAL_MODES)}")
        self.mode = mode
        self.half_cycle = max(1.0, cycle_epochs * steps_per_epoch / 2.0)
        self.base_lr_ratio = float(base_lr_ratio)
        self.gamma = float(gamma)
        super().__init__(optimizer, steps_per_epoch=steps_per_epoch, **kwargs)

    def main(self, t: int) -> float:
        low = self.base_lr * self.base_lr_ratio
        cycle = math.floor(1 + t / (2 * self.half_cycle))
        x = abs(t / self.half_cycle - 2 * cycle + 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1.0 / 2 ** (cycle - 1)
        else:
            scale = self.gamma ** t
        return low + (self.base_lr - low) * max(0.0, 1.0 - x) * scale


def warmup_steps_of(sched_cfg: Mapping[str, Any], steps_per_epoch: int) -> int:
    """``warmup_steps`` if set, else ``round(warmup_epochs · steps_per_epoch)``."""
    if sched_cfg.get("warmup_steps") is not None:
        return int(sched_cfg["warmup_steps"])
    return round(float(sched_cfg.get("warmup_epochs") or 0.0) * steps_per_epoch)


def build_scheduler(optimizer: Optimizer | None, sched_cfg: Mapping[str, Any], lr: float, min_lr: float,
                    total_steps: int, steps_per_epoch: int) -> StepScheduler:
    """Build the schedule named by ``sched_cfg["name"]`` (the ``run.scheduler`` section)."""
    name = sched_cfg.get("name", "warmup_cosine")
    cls = SCHEDULERS.get(name)
    # A schedule's own keys are those of its default_config (a user's schedule declares its own the same way).
    extra = {k: sched_cfg[k] for k in (getattr(cls, "default_config", None) or {}) if k in sched_cfg}
    return cls(optimizer, lr=lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
               warmup_steps=warmup_steps_of(sched_cfg, steps_per_epoch), min_lr=min_lr, **extra)
