"""The trainer and runner on a toy MLP (tests/toy_components.py): learning, accumulation, weight decay, NaN skipping,
output files, best-checkpoint selection, and the errors a user can cause."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import toy_components  # noqa: F401  (registers toy_mlp / toy_points / toy_cls)
from vlmkit.config import load_config
from vlmkit.engine import entrypoints
from vlmkit.engine.optim import build_optimizer, param_groups, resolve_lr
from vlmkit.errors import CheckpointError, ConfigError, DataError, VlmkitError


def toy_config(tmp_path: Path, name: str = "run", sizes=None, **run):
    project = {
        "model": {"arch": "toy_mlp"},
        "datasets": {"toy_points": {"sizes": sizes or {"train": 64, "val": 32, "test": 32}}},
        "run": {"task": "toy_cls", "imports": ["toy_components"], "output_dir": str(tmp_path / name), "device": "cpu",
                "batch_size": 8, "lr": 0.02, "log_every": 1, "tensorboard": False, **run},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(project))
    return load_config(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_learns_and_writes_every_output(tmp_path):
    cfg = toy_config(tmp_path, sizes={"train": 256, "val": 64, "test": 64}, epochs=6, save_every=5)
    before = entrypoints.evaluate(cfg, checkpoint=None, splits=["test"])["test"]["accuracy"]
    results = entrypoints.train(cfg)
    out = Path(cfg.run.output_dir)

    records = read_jsonl(out / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 6 * 256 // 8
    assert {"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "skipped_steps"} <= set(train[0])
    first, last = sum(r["loss"] for r in train[:8]) / 8, sum(r["loss"] for r in train[-8:]) / 8
    assert last < 0.6 * first
    assert results["test"]["accuracy"] > before + 20

    for f in ("config.yaml", "model.safetensors", "log.txt", "checkpoints/last.pt", "checkpoints/best.safetensors",
              "predictions/toy_points_val.json", "predictions/toy_points_test.json"):
        assert (out / f).is_file(), f
    weights = load_file(out / "model.safetensors")
    assert set(weights) == {"fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"}
    assert len(json.loads((out / "predictions/toy_points_test.json").read_text())) == 64
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["epochs"] == 6
    latest = json.loads((out / "metrics.json").read_text())
    assert latest["test"] == results["test"]

    # The best checkpoint is the epoch with the highest validation accuracy, and the test ran with it.
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in val] == list(range(6))
    best = max(r["accuracy"] for r in val)
    best_path = str(out / "checkpoints/best.safetensors")
    assert entrypoints.evaluate(cfg, checkpoint=best_path, splits=["val"])["val"]["accuracy"] == best
    assert entrypoints.evaluate(cfg, checkpoint=best_path, splits=["test"])["test"] == results["test"]
    # The last.pt checkpoint holds the final trainable weights.
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert state["arch"] == "toy_mlp" and state["step"] == 6 * 256 // 8
    assert all(torch.equal(state["model"][k], weights[k]) for k in weights)


def test_grad_accumulation_equals_larger_batch(tmp_path):
    common = dict(epochs=2, val_splits=[], test_splits=[], weight_decay=0.05)
    a = toy_config(tmp_path, "accum", batch_size=2, accum_iter=2, **common)
    b = toy_config(tmp_path, "big", batch_size=4, accum_iter=1, **common)
    for cfg in (a, b):
        cfg.model.dropout = 0.0  # dropout masks would differ between the two batch layouts
        entrypoints.train(cfg)
    wa = load_file(Path(a.run.output_dir) / "model.safetensors")
    wb = load_file(Path(b.run.output_dir) / "model.safetensors")
    init = toy_components.ToyMLP(8, 32, 4, 0.0, 0.0)
    assert not torch.allclose(wa["fc2.weight"], init.fc2.weight)  # it trained
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(Path(a.run.output_dir) / "metrics.jsonl")]
    assert steps == list(range(1, 2 * 64 // 4 + 1))  # one optimizer step per 4 samples


def test_no_weight_decay_on_biases_and_1d_params(tmp_path):
    cfg = toy_config(tmp_path, weight_decay=0.5)
    model = toy_components.ToyMLP.from_config(cfg.model)
    groups = {g["weight_decay"]: set(g["param_names"]) for g in param_groups(model, 0.5)}
    assert groups == {0.5: {"fc1.weight", "fc2.weight"}, 0.0: {"fc1.bias", "norm.weight", "norm.bias", "fc2.bias"}}
    # Behaviour: with zero gradients AdamW changes weights only through decay.
    opt = build_optimizer(model, cfg.run, lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["fc1.weight"], before["fc1.weight"] * (1 - 0.1 * 0.5))
    for n in ("fc1.bias", "norm.weight", "norm.bias", "fc2.bias", "frozen_embed.weight"):
        assert torch.equal(after[n], before[n]), n


def test_max_steps_stops_early_mid_epoch(tmp_path):
    cfg = toy_config(tmp_path, epochs=3, max_steps=5, test_splits=[])
    entrypoints.train(cfg)
    out = Path(cfg.run.output_dir)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"] == [1, 2, 3, 4, 5]
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["iter_in_epoch"]) == (5, 0, 5)
    assert not (out / "checkpoints/best.safetensors").exists()  # the epoch never finished: no validation


def test_lr_from_blr_scales_with_effective_batch():
    run = {"lr": None, "blr": 9e-3, "batch_size": 4, "accum_iter": 4}
    assert resolve_lr(run, world_size=2) == pytest.approx(1.125e-3)  # LaVIN's recipe
    assert resolve_lr({**run, "lr": 5e-4}, world_size=2) == 5e-4


def test_nan_batch_is_skipped_and_counted(tmp_path):
    cfg = toy_config(tmp_path, sizes={"train": 64, "val": 8, "test": 8}, epochs=1)
    cfg.datasets.toy_points.nan_ids = [5]
    entrypoints.train(cfg)
    out = Path(cfg.run.output_dir)
    train = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    assert [r["skipped_steps"] for r in train][-1] == 1
    assert sum(r["grad_norm"] is None for r in train) == 1  # exactly one step had no applied update
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())

    cfg.run.nan_policy = "stop"
    cfg.run.output_dir = str(tmp_path / "stop")
    with pytest.raises(VlmkitError, match="non-finite"):
        entrypoints.train(cfg)


def test_resume_without_checkpoint_names_the_path(tmp_path):
    cfg = toy_config(tmp_path)
    with pytest.raises(CheckpointError, match=str(tmp_path / "run" / "checkpoints" / "last.pt")):
        entrypoints.train(cfg, resume=True)
    assert not (tmp_path / "run").exists()


def test_fresh_run_refuses_an_output_dir_of_another_model(tmp_path):
    cfg = toy_config(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"vlmkit_checkpoint": 1, "arch": "lavin"}, last)
    with pytest.raises(ConfigError, match="lavin"):
        entrypoints.train(cfg)
    with pytest.raises(CheckpointError, match="lavin"):
        entrypoints.train(cfg, resume=True)


def test_empty_split_is_a_data_error_and_writes_nothing(tmp_path):
    cfg = toy_config(tmp_path, sizes={"train": 16, "val": 0, "test": 8})
    with pytest.raises(DataError, match="'val' is empty"):
        entrypoints.train(cfg)
    assert not (tmp_path / "run").exists()


def test_evaluate_errors(tmp_path):
    cfg = toy_config(tmp_path)
    with pytest.raises(DataError, match="checkpoint not found"):
        entrypoints.evaluate(cfg, checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(DataError, match="no split 'dev'"):
        entrypoints.evaluate(cfg, splits=["dev"])
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"fc1.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(CheckpointError, match="shape"):
        entrypoints.evaluate(cfg, checkpoint=str(other))
