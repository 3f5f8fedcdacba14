"""Exact resume after a hard kill, and a 2-rank torchrun (gloo) training run, through tools/train.py as a user runs it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "tools" / "train.py")
KILL_TIMEOUT_S = 120  # generous: torch import plus a few slowed steps on a busy 2-core machine


def write_project(tmp_path: Path, name: str, step_sleep: float, **run) -> Path:
    project = {
        "model": {"arch": "toy_mlp", "step_sleep": step_sleep},  # dropout on: the resume must restore the RNG too
        "datasets": {"toy_points": {"sizes": {"train": 128, "val": 16, "test": 16}}},
        "run": {"task": "toy_cls", "imports": ["toy_components"], "output_dir": str(tmp_path / name), "device": "cpu",
                "batch_size": 8, "accum_iter": 2, "epochs": 3, "lr": 0.02, "save_every": 3, "log_every": 1,
                "tensorboard": False, "scheduler": {"name": "warmup_cosine", "warmup_steps": 4}, **run},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(project))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    return e


def train(cfg: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, TRAIN, "--cfg-path", str(cfg), *extra], env=env(), capture_output=True,
                          text=True, timeout=600)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    full = write_project(tmp_path, "full", step_sleep=0.0)
    done = train(full)
    assert done.returncode == 0, done.stderr

    cut = write_project(tmp_path, "cut", step_sleep=0.05)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, TRAIN, "--cfg-path", str(cut)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.12)  # a couple more micro-batches past the checkpoint: work the resumed run must redo
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    state = torch.load(last, weights_only=True)
    assert 0 < state["iter_in_epoch"] < 16, "interrupted at an epoch boundary; the mid-epoch skip was not exercised"

    resumed = train(cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "full" / "model.safetensors", tmp_path / "cut" / "model.safetensors")
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "full" / "metrics.json").read_text())
    # metrics.jsonl: the lines of the interrupted run past the checkpoint were replaced, not duplicated.
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, 3 * 8 + 1))


def test_torchrun_two_ranks_gloo_writes_the_same_outputs(tmp_path):
    cfg = write_project(tmp_path, "ddp", step_sleep=0.0, epochs=2, save_every=0)
    result = train(cfg, nproc=2)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "ddp"
    for f in ("config.yaml", "model.safetensors", "log.txt", "metrics.json", "metrics.jsonl", "checkpoints/last.pt",
              "checkpoints/best.safetensors", "predictions/toy_points_val.json", "predictions/toy_points_test.json"):
        assert (out / f).is_file(), f
    # Each rank saw half of every batch-of-batches: 128 samples / 2 ranks / 8 per batch / accum 2 = 4 steps per epoch.
    train_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_lines if r["split"] == "train"] == list(range(1, 9))
    assert len(json.loads((out / "predictions/toy_points_test.json").read_text())) == 16  # gathered and deduplicated
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert "== test ==" in result.stdout  # the table is printed once, by rank 0
    assert result.stdout.count("== test ==") == 1
