"""`tools/evaluate.py --shots ... --trials ...`: one model, every (shots, trial) written as a plain evaluation writes it,
a summary of the main metric over trials, a Markdown table, the same under torchrun, and bad arguments rejected."""
import json
import statistics

import pytest

from conftest import REPO, assert_one_error_line, run_tool

PROJECT = str(REPO / "projects/quickstart/flamingo_vqav2_tiny.yaml")
EVALUATE = str(REPO / "tools/evaluate.py")
SHOTS, TRIALS = (0, 2), 2
PREDICTIONS = "vqav2_val.json"


@pytest.fixture(scope="module")
def model(tmp_path_factory, fewshot_flamingo):
    """The shared tiny fine-tuned OpenFlamingo (conftest.fewshot_flamingo), outputs under this module's root."""
    return {**fewshot_flamingo, "root": tmp_path_factory.mktemp("fewshot_sweep")}


def _evaluate(model, out, *extra, options=(), torchrun=0):
    return run_tool([EVALUATE, "--cfg-path", PROJECT, "--checkpoint", model["weights"], "--split", "val", *extra,
                     "--options", f"run.output_dir={out}", "run.generate.max_new_tokens=3", *options],
                    env=model["env"], torchrun=torchrun)


def _sweep(model, out, options=(), torchrun=0):
    shots = [str(n) for n in SHOTS]
    res = _evaluate(model, out, "--shots", *shots, "--trials", str(TRIALS), options=options, torchrun=torchrun)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def sweep(model):
    out = model["root"] / "sweep"
    return {"out": out, "stdout": _sweep(model, out).stdout}


def test_layout_and_summary(sweep):
    out = sweep["out"]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fewshot.jsonl", "fewshot.md", "fewshot_summary.json",
                                                     "log.txt", "protocol.json", "shots0", "shots2"]
    log = (out / "log.txt").read_text()  # the terminal's summary table and the outputs line are in the log too
    assert "== few-shot overall (mean ± std over" in log and f"outputs in {out}: fewshot_summary.json" in log
    summary = json.loads((out / "fewshot_summary.json").read_text())
    assert summary["main_metric"] == "overall" and summary["trials"] == TRIALS
    assert list(summary["splits"]) == ["val"]
    for n in SHOTS:
        assert sorted(p.name for p in (out / f"shots{n}").iterdir()) == [f"trial{t}" for t in range(TRIALS)]
        scores = []
        for t in range(TRIALS):
            point = out / f"shots{n}" / f"trial{t}"
            assert sorted(p.name for p in point.iterdir()) == ["metrics.json", "metrics.jsonl", "predictions", "samples"]
            assert (point / "predictions" / PREDICTIONS).is_file()
            assert len((point / "metrics.jsonl").read_text().splitlines()) == 1
            scores.append(json.loads((point / "metrics.json").read_text())["val"]["overall"])
        cell = summary["splits"]["val"][str(n)]
        assert cell["trials"] == scores and cell["num_trials"] == TRIALS
        assert cell["mean"] == pytest.approx(statistics.fmean(scores))
        assert cell["std"] == pytest.approx(statistics.stdev(scores))
    assert any(summary["splits"]["val"][str(n)]["mean"] > 0 for n in SHOTS), summary


def test_trials_draw_other_demos(sweep):
    """The trial reaches the datasets: its demos, hence the model's answers, differ."""
    preds = [(sweep["out"] / "shots2" / f"trial{t}" / "predictions" / PREDICTIONS).read_text() for t in range(TRIALS)]
    assert preds[0] != preds[1]


def test_table_printed(sweep):
    summary = json.loads((sweep["out"] / "fewshot_summary.json").read_text())
    lines = sweep["stdout"].splitlines()
    header = lines.index("| shots | val |")
    assert lines[header + 1] == "|---|---|"
    for i, n in enumerate(SHOTS):
        cell = summary["splits"]["val"][str(n)]
        assert lines[header + 2 + i] == f"| {n} | {cell['mean']:.2f} ± {cell['std']:.2f} |"


def test_point_equals_plain_evaluation(model, sweep):
    plain = model["root"] / "plain"
    res = _evaluate(model, plain, options=("datasets.vqav2.fewshot.shots=2", "datasets.vqav2.fewshot.trial=1"))
    assert res.returncode == 0, res.stderr[-3000:]
    point = sweep["out"] / "shots2" / "trial1"
    assert json.loads((point / "metrics.json").read_text()) == json.loads((plain / "metrics.json").read_text())
    assert (point / "predictions" / PREDICTIONS).read_text() == (plain / "predictions" / PREDICTIONS).read_text()


def test_a_killed_sweep_resumes_to_the_same_result(model, sweep):
    """SIGKILL in the middle of the second point; --resume skips the finished point, continues the cut one, and the
    summary and every point's predictions equal those of the uninterrupted sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = model["root"] / "sweep_cut"
    args = [EVALUATE, "--cfg-path", PROJECT, "--checkpoint", model["weights"], "--split", "val", "--shots",
            *map(str, SHOTS), "--trials", str(TRIALS), "--options", f"run.output_dir={out}",
            "run.generate.max_new_tokens=3", "run.eval_batch_size=2"]
    env = {**os.environ, **model["env"], "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    second = out / "shots0" / "trial1" / "samples" / "vqav2_val.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if second.is_file() and second.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "fewshot_summary.json").exists(), "the sweep finished before it could be cut"
    res = run_tool([*args, "--resume"], env=model["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shots=0 trial=0 finished earlier, skipped" in res.stdout
    assert json.loads((out / "fewshot_summary.json").read_text()) == \
        json.loads((sweep["out"] / "fewshot_summary.json").read_text())
    for n in SHOTS:
        for t in range(TRIALS):
            name = f"shots{n}/trial{t}/predictions/{PREDICTIONS}"
            assert (out / name).read_text() == (sweep["out"] / name).read_text(), name


def test_two_ranks_give_the_same_summary(model, sweep):
    """Sharded (FSDP): the datasets of every point are rebuilt around the model sharded once, and each rank
    evaluates its share of the questions."""
    out = model["root"] / "sweep_2ranks"
    _sweep(model, out, options=("run.strategy=fsdp",), torchrun=2)
    assert json.loads((out / "fewshot_summary.json").read_text()) == \
        json.loads((sweep["out"] / "fewshot_summary.json").read_text())


@pytest.mark.parametrize("cfg, args, needle", [
    ("projects/quickstart/lavin_sqa_tiny.yaml", ["--shots", "0", "4"], "no dataset of this config (scienceqa)"),
    (PROJECT, ["--shots", "0", "-4"], "--shots must be >= 0"),
    (PROJECT, ["--shots", "4", "--trials", "0"], "--trials must be at least 1"),
    (PROJECT, ["--trials", "3"], "--trials needs --shots"),
])
def test_bad_arguments(tmp_path, cfg, args, needle):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    res = run_tool([EVALUATE, "--cfg-path", str(REPO / cfg), *args, "--options", f"run.output_dir={out}"])
    assert_one_error_line(res, needle)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
