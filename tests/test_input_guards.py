"""Bad input that used to pass silently or as a traceback: --options items, numeric run keys out of range, and scorer
inputs that would change the number (duplicate JSON keys, VQA questions without 10 answers, partial ScienceQA results).
Each is one error line (CLI) or one DataError/ConfigError (Python)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_one_error_line, run_tool
from vlmkit.config import load_config
from vlmkit.errors import ConfigError, DataError
from vlmkit.io import read_json
from vlmkit.metrics.scienceqa import scienceqa_scores
from vlmkit.metrics.vqa import vqa_scores


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "toy_mlp"}, "datasets": {"toy_points": {}},
                                    "run": {"task": "toy_cls", "imports": ["toy_components"], "device": "cpu"}}))
    return path


@pytest.mark.parametrize("option, message", [
    ("run.lr", "--options item 'run.lr' is not KEY=VALUE (e.g. run.lr=2e-3); to set null write 'run.lr=null'"),
    ("=3", "--options item '=3' is not KEY=VALUE"),
    ("run.betas=[0.9,", "--options item 'run.betas=[0.9,': the value '[0.9,' cannot be parsed"),
    ("run.batch_size=0", "run.batch_size must be >= 1, got 0"),
    ("run.eval_batch_size=0", "run.eval_batch_size must be >= 1, got 0"),
    ("run.lr=-1", "run.lr must be > 0, got -1"),
    ("run.lr=0", "run.lr must be > 0, got 0"),
    ("run.accum_iter=0", "run.accum_iter must be >= 1, got 0"),
    ("run.num_workers=-1", "run.num_workers must be >= 0, got -1"),
    ("run.grad_clip=0", "run.grad_clip must be > 0, got 0"),
    ("run.betas=[0.9,1.5]", "run.betas must be two numbers in [0, 1), got [0.9, 1.5]"),
])
def test_bad_options_and_ranges(project: Path, option: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(project, [option])
    assert message in str(err.value)


def test_bad_option_is_one_line_on_the_command_line(project: Path) -> None:
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(project), "--options", "run.lr"],
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert_one_error_line(res, "--options item 'run.lr' is not KEY=VALUE")
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(project), "--options", "run.batch_size=0"],
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert_one_error_line(res, "run.batch_size must be >= 1, got 0")


def test_duplicate_json_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"results": {"q1": 0, "q2": 1, "q1": 2}}')
    with pytest.raises(DataError, match=r"ScienceQA results file .*results.json has the key 'q1' twice"):
        read_json(path, "ScienceQA results file", "write each id once")
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps({f"q{i}": {"answer": 0, "choices": ["a", "b"]} for i in (1, 2)}))
    res = run_tool(["-m", "vlmkit", "score", "scienceqa", "--problems", str(problems), "--results", str(path)])
    assert_one_error_line(res, "has the key 'q1' twice")


def vqa_annotation(qid: int, answers: list[str]) -> dict:
    return {"question_id": qid, "question_type": "what", "answer_type": "other", "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


def test_vqa_answer_count_other_than_ten_is_refused(tmp_path: Path) -> None:
    annotations = [vqa_annotation(1, ["cat"] * 3)]
    with pytest.raises(DataError, match=r"question_id 1 .* has 3 answers, not VQAv2's 10.*--allow-answer-count"):
        vqa_scores(annotations, [{"question_id": 1, "answer": "cat"}])
    # allowed on request: a perfect prediction then scores 66.67, which is why it is refused by default
    allowed = vqa_scores(annotations, [{"question_id": 1, "answer": "cat"}], allow_answer_count=True)
    assert allowed["overall"] == pytest.approx(200 / 3)
    assert vqa_scores([vqa_annotation(1, ["cat"] * 10)], [{"question_id": 1, "answer": "cat"}])["overall"] == 100
    files = {"questions": {"questions": [{"question_id": 1, "image_id": 1, "question": "what?"}]},
             "annotations": {"annotations": annotations}, "results": [{"question_id": 1, "answer": "cat"}]}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    args = ["-m", "vlmkit", "score", "vqa", *[f"--{n}={tmp_path / (n + '.json')}" for n in files]]
    assert_one_error_line(run_tool(args), "has 3 answers, not VQAv2's 10")
    ok = run_tool([*args, "--allow-answer-count"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["overall"] == pytest.approx(200 / 3)


def test_scienceqa_results_covering_part_of_a_split(tmp_path: Path) -> None:
    problems = {f"q{i}": {"answer": 0, "choices": ["a", "b"], "subject": "natural science", "hint": "", "image": None,
                          "grade": "grade3", "split": "test"} for i in range(4)}
    half = {"q0": 0, "q1": 1}
    with pytest.raises(DataError, match=r"results for 2 of the 4 problems of split 'test' \(2 missing\).*--partial"):
        scienceqa_scores(problems, half, split="test")
    scores = scienceqa_scores(problems, half, split="test", partial=True)
    assert scores["Average"] == 50 and scores["partial"] is True
    assert (scores["num_results"], scores["num_problems"]) == (2, 4)
    full = scienceqa_scores(problems, {**half, "q2": 0, "q3": 0}, split="test", partial=True)
    assert full["partial"] is False and full["Average"] == 75
    assert "partial" not in scienceqa_scores(problems, half)  # without a split every result is scored, as before
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "results.json").write_text(json.dumps({"results": half}))
    args = ["-m", "vlmkit", "score", "scienceqa", "--problems", str(tmp_path / "problems.json"), "--results",
            str(tmp_path / "results.json"), "--split", "test"]
    assert_one_error_line(run_tool(args), "results for 2 of the 4 problems of split 'test'")
    ok = run_tool([*args, "--partial"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["partial"] is True


def test_a_killed_save_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    """A SIGKILLed save leaves `.last.pt.<pid>.tmp`; the next save of that file removes it (its process is gone),
    but never the file of a save still running in another process."""
    import os
    import subprocess
    import sys

    import torch

    from vlmkit.engine.checkpoint import save_state

    target = tmp_path / "checkpoints" / "last.pt"
    target.parent.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = target.parent / f".last.pt.{int(gone.stdout)}.tmp"  # that process has exited
    live = target.parent / f".last.pt.{os.getppid()}.tmp"  # a running process (the one that started pytest)
    for f in (stale, live):
        f.write_bytes(b"x" * 1024)
    save_state({"step": 1, "w": torch.zeros(3)}, target)
    assert target.is_file() and not stale.exists() and live.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["last.pt", live.name])


def test_output_dir_that_is_a_file_is_one_line(project: Path, tmp_path: Path) -> None:
    existing = tmp_path / "a_file"
    existing.write_text("not a directory")
    res = run_tool([str(REPO / "tools/train.py"), "--cfg-path", str(project), "--options", f"run.output_dir={existing}"],
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert_one_error_line(res, f"run.output_dir {existing} is a file, not a directory")
    assert existing.read_text() == "not a directory"
