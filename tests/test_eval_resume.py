"""An evaluation killed part-way (SIGKILL, 1 and 2 ranks) continues with `--resume` and ends with the predictions,
metrics and per-sample records of an uninterrupted one; records of another checkpoint are refused; `--limit` and `--ids`
evaluate subsets that are marked and kept apart from full results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_one_error_line, free_port, run_tool

EVALUATE = str(REPO / "tools/evaluate.py")
PROJECT = str(REPO / "projects/quickstart/lavin_sqa_tiny.yaml")


def evaluate_args(quickstart_run, out, *extra, checkpoint=None):
    checkpoint = checkpoint or quickstart_run["out"] / "model.safetensors"
    return [EVALUATE, "--cfg-path", PROJECT, "--checkpoint", str(checkpoint), "--split", "test", *extra,
            "--options", f"run.output_dir={out}", "run.eval_batch_size=4"]


def kill_part_way(quickstart_run, out, ranks: int) -> int:
    """Start the evaluation, SIGKILL its whole process group once a few batches are recorded; the lines recorded."""
    env = {**os.environ, **quickstart_run["env"], "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    f"--nproc_per_node={ranks}", f"--master_port={free_port()}"]
    proc = subprocess.Popen([*launcher, *evaluate_args(quickstart_run, out)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    samples = out / "samples" / "scienceqa_test.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.is_file() and len(samples.read_text().splitlines()) >= 12:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_processes_with(f"run.output_dir={out}")  # torchrun's workers may sit in their own process groups
    done = len(samples.read_text().splitlines())
    assert 12 <= done < 200, "the evaluation was not cut part-way"
    assert not json.loads((out / "samples" / "scienceqa_test.meta.json").read_text())["complete"]
    return done


def kill_processes_with(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker``, and wait until they are gone."""
    from pathlib import Path

    def matching() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return [pid for pid in pids if pid != os.getpid()]

    for pid in matching():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while matching() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not matching()


@pytest.mark.parametrize("ranks", [1, 2])
def test_killed_evaluation_resumes_to_the_uninterrupted_result(quickstart_run, tmp_path, ranks):
    full = tmp_path / "full"
    res = run_tool(evaluate_args(quickstart_run, full), env=quickstart_run["env"])
    assert res.returncode == 0, res.stderr[-3000:]

    cut = tmp_path / "cut"
    kill_part_way(quickstart_run, cut, ranks)
    before = (cut / "samples" / "scienceqa_test.jsonl").read_text()
    other = quickstart_run["out"] / "checkpoints" / "last.pt"  # other weights file: another fingerprint
    refused = run_tool(evaluate_args(quickstart_run, cut, "--resume", checkpoint=other), env=quickstart_run["env"])
    assert_one_error_line(refused, "--resume: ", "was written by another evaluation", "checkpoint")
    assert (cut / "samples" / "scienceqa_test.jsonl").read_text() == before  # nothing overwritten

    res = run_tool(evaluate_args(quickstart_run, cut, "--resume"), env=quickstart_run["env"], torchrun=ranks)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "items recorded; evaluating the other" in res.stdout
    for name in ("predictions/scienceqa_test.json", "samples/scienceqa_test.jsonl"):
        assert (cut / name).read_text() == (full / name).read_text(), name
    assert json.loads((cut / "metrics.json").read_text()) == json.loads((full / "metrics.json").read_text())


def test_limit_and_ids_are_subsets_kept_apart(quickstart_run, tmp_path):
    out = tmp_path / "eval"
    res = run_tool(evaluate_args(quickstart_run, out, "--limit", "7"), env=quickstart_run["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    limited = out / "subsets" / "limit7"
    metrics = json.loads((limited / "metrics.json").read_text())["test"]
    assert metrics["subset"] == "the first 7 of 200 items" and metrics["n"] == 7
    assert not (out / "metrics.json").exists()  # never where a full result would be read
    rows = [json.loads(line) for line in (limited / "samples" / "scienceqa_test.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(7))
    assert "== test (subset: the first 7 of 200 items) ==" in res.stdout

    ids = tmp_path / "ids.txt"
    ids.write_text(f"# two problems\n{rows[5]['id']}\n{rows[2]['id']}\n")
    res = run_tool(evaluate_args(quickstart_run, out, "--ids", str(ids)), env=quickstart_run["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    (picked,) = (out / "subsets").glob("ids-*")
    chosen = [json.loads(line) for line in (picked / "samples" / "scienceqa_test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in chosen] == [rows[2]["id"], rows[5]["id"]]
    assert [r["generation"] for r in chosen] == [rows[2]["generation"], rows[5]["generation"]]

    ids.write_text("no-such-problem\n")
    assert_one_error_line(run_tool(evaluate_args(quickstart_run, out, "--ids", str(ids)), env=quickstart_run["env"]),
                          "--ids: 1 ids are not samples of scienceqa_test", "no-such-problem")
    assert_one_error_line(run_tool(evaluate_args(quickstart_run, out, "--limit", "0"), env=quickstart_run["env"]),
                          "--limit must be >= 1, got 0")
