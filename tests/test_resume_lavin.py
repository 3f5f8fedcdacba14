"""SIGKILL + --resume on the real LaVIN quickstart model gives bit-identical final weights (CPU, fp32)."""
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import REPO, run_tool

OPTIONS = ["run.epochs=1", "run.max_steps=40", "run.save_every=5", "run.test_splits=[]", "run.tensorboard=false"]


def test_lavin_resume_after_sigkill_is_bit_identical(quickstart_run, tmp_path):
    project = str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml")
    full, cut = tmp_path / "full", tmp_path / "cut"
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", project, "--options", f"run.output_dir={full}",
                    *OPTIONS], env=quickstart_run["env"])
    assert res.returncode == 0, res.stderr[-3000:]

    env = {**os.environ, **quickstart_run["env"], "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "tools/train.py"), "--cfg-path", project, "--options",
                             f"run.output_dir={cut}", *OPTIONS], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = cut / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a few steps past the checkpoint: work the resumed run must redo
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert not (cut / "model.safetensors").exists()

    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", project, "--resume", "--options",
                    f"run.output_dir={cut}", *OPTIONS], env=quickstart_run["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
