"""Learning-rate schedules: exact values against their closed forms, warmup, stepping and state round trips."""
import math

import pytest
import torch

from vlmkit.engine.schedulers import build_scheduler
from vlmkit.errors import ConfigError
from vlmkit.registry import SCHEDULERS

LR, MIN_LR, S = 1e-2, 1e-4, 10  # base lr, floor, optimizer steps per epoch


def make(name, total=100, warmup_steps=None, warmup_epochs=0.0, optimizer=None, **extra):
    cfg = {"name": name, "warmup_epochs": warmup_epochs, "warmup_steps": warmup_steps, **extra}
    return build_scheduler(optimizer, cfg, lr=LR, min_lr=MIN_LR, total_steps=total, steps_per_epoch=S)


def test_all_names_registered():
    assert {"warmup_cosine", "cyclical", "step_decay", "exponential_decay", "constant"} <= set(SCHEDULERS.names())


def test_warmup_cosine_matches_lavin_formula():
    w, T = 20, 100  # warmup_epochs 2 at 10 steps per epoch
    s = make("warmup_cosine", total=T, warmup_epochs=2.0)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(5) == pytest.approx(LR * 5 / w)
    assert s.lr_at(w) == pytest.approx(LR)
    for t in (21, 50, 77, 99):
        expected = MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * (t - w) / (T - w)))
        assert s.lr_at(t) == pytest.approx(expected, rel=1e-12)
    assert s.lr_at(T) == pytest.approx(MIN_LR)
    assert s.lr_at(T + 5) == pytest.approx(MIN_LR)  # stays at the floor past the end


def test_warmup_steps_override_epochs():
    s = make("constant", warmup_steps=4, warmup_epochs=3.0)
    assert [s.lr_at(t) for t in range(6)] == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4, LR, LR])


def test_step_decay():
    s = make("step_decay", step_epochs=2.0, step_gamma=0.5)
    assert s.lr_at(0) == LR and s.lr_at(19) == LR
    assert s.lr_at(20) == pytest.approx(LR * 0.5)
    assert s.lr_at(45) == pytest.approx(LR * 0.25)
    s = make("step_decay", step_epochs=1.0, step_gamma=0.1)  # the floor min_lr holds
    assert s.lr_at(95) == pytest.approx(MIN_LR)


def test_exponential_decay_is_per_epoch_and_continuous():
    s = make("exponential_decay", gamma=0.9, warmup_steps=5)
    assert s.lr_at(5) == pytest.approx(LR)
    assert s.lr_at(15) == pytest.approx(LR * 0.9)  # one epoch after warmup
    assert s.lr_at(10) == pytest.approx(LR * 0.9 ** 0.5)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclical_clr(mode):
    gamma = 0.98
    s = make("cyclical", mode=mode, cycle_epochs=2.0, base_lr_ratio=0.1, gamma=gamma)
    low, h = LR * 0.1, 10  # half cycle = cycle_epochs * S / 2
    scale = {"triangular": lambda t, c: 1.0, "triangular2": lambda t, c: 0.5 ** (c - 1),
             "exp_range": lambda t, c: gamma ** t}[mode]
    for t in (0, 3, 10, 15, 20, 30, 47):
        cycle = math.floor(1 + t / (2 * h))
        x = abs(t / h - 2 * cycle + 1)
        assert s.lr_at(t) == pytest.approx(low + (LR - low) * max(0, 1 - x) * scale(t, cycle), rel=1e-12)
    assert s.lr_at(0) == pytest.approx(low)
    if mode == "triangular":
        assert s.lr_at(10) == pytest.approx(LR) and s.lr_at(30) == pytest.approx(LR)
    if mode == "triangular2":
        assert s.lr_at(30) == pytest.approx(low + (LR - low) / 2)


def test_cyclical_warmup_ramps_to_the_cycle_start():
    s = make("cyclical", warmup_steps=4, base_lr_ratio=0.1)
    assert s.lr_at(2) == pytest.approx(LR * 0.1 / 2)
    assert s.lr_at(4) == pytest.approx(LR * 0.1)


def test_bad_cyclical_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="triangular"):
        make("cyclical", mode="sawtooth")


def test_steps_set_param_group_lr_and_state_round_trips():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD([{"params": params}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}], lr=1.0)
    s = make("warmup_cosine", optimizer=opt, warmup_steps=10)
    assert opt.param_groups[0]["lr"] == 0.0  # the first update uses lr_at(0)
    for _ in range(37):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(37))
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * s.lr_at(37))
    state = s.state_dict()
    opt2 = torch.optim.SGD(params, lr=1.0)
    s2 = make("warmup_cosine", optimizer=opt2, warmup_steps=10)
    s2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(s.lr_at(37))
    s.step()
    s2.step()
    assert s2.get_last_lr() == s.get_last_lr() == pytest.approx(s.lr_at(38))
