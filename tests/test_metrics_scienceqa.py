"""ScienceQA scorer: parity with the official evaluate_acc.py rules, hand-computed values, split selection, CLI."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.errors import DataError
from vlmkit.metrics.scienceqa import SQA_CATEGORIES, SQA_TOPICS, load_scienceqa_results, scienceqa_scores

SUBJECTS = ["natural science", "social science", "language science"]
TOPICS = ["physics", "geography", "grammar", "biology", "my-own-topic"]


def make_problems(n: int = 90, seed: int = 0) -> dict[str, dict]:
    """Problems with every subject, hint/image combination and grade; the test split has no language science."""
    rng = random.Random(seed)
    problems = {}
    for i in range(n):
        split = "test" if i % 3 else "train"
        subject = SUBJECTS[i % 2] if split == "test" else SUBJECTS[(i // 3) % 3]
        choices = [f"option {k}" for k in range(rng.randint(2, 5))]
        problems[str(1000 + i)] = {
            "question": f"question {i}?", "choices": choices, "answer": rng.randrange(len(choices)),
            "hint": rng.choice(["", "", "a context sentence"]), "image": rng.choice([None, "image.png"]),
            "grade": f"grade{rng.randint(1, 12)}", "subject": subject, "topic": rng.choice(TOPICS),
            "split": split, "lecture": "", "solution": "", "task": "closed choice", "category": "c", "skill": "s",
        }
    return problems


def make_results(problems: dict[str, dict], seed: int = 1) -> dict[str, int]:
    """Predictions right about 60% of the time."""
    rng = random.Random(seed)
    return {qid: p["answer"] if rng.random() < 0.6 else (p["answer"] + 1) % len(p["choices"])
            for qid, p in problems.items()}


def official_reference(problems: dict[str, dict], results: dict[str, int]) -> dict[str, float]:
    """A plain re-implementation of tools/evaluate_acc.py's get_scores over the results' problems.

    Rows carry no_context / has_text / has_image flags and true_false; each group is len(correct) / len(total) * 100,
    -1 when the group is empty; the average divides by the number of results.
    """
    rows = []
    for qid, pred in results.items():
        row = dict(problems[qid])
        row["no_context"] = True if (not row["hint"] and not row["image"]) else False
        row["has_text"] = True if row["hint"] else False
        row["has_image"] = True if row["image"] else False
        row["true_false"] = row["answer"] == int(pred)
        rows.append(row)

    def acc_with_condition(key: str, values: object) -> float:
        if isinstance(values, list):
            total = [r for r in rows if r[key] in values]
        else:
            total = [r for r in rows if r[key] == values]
        correct = [r for r in total if r["true_false"] == True]  # noqa: E712 (the official comparison)
        if len(total) == 0:
            return -1
        return len(correct) / len(total) * 100

    scores = {
        "NAT": acc_with_condition("subject", "natural science"),
        "SOC": acc_with_condition("subject", "social science"),
        "LAN": acc_with_condition("subject", "language science"),
        "TXT": acc_with_condition("has_text", True),
        "IMG": acc_with_condition("has_image", True),
        "NO": acc_with_condition("no_context", True),
        "G1-6": acc_with_condition("grade", [f"grade{g}" for g in range(1, 7)]),
        "G7-12": acc_with_condition("grade", [f"grade{g}" for g in range(7, 13)]),
        "Average": len([r for r in rows if r["true_false"] == True]) / len(results) * 100,  # noqa: E712
    }
    for topic in set(SQA_TOPICS) | {r["topic"] for r in rows}:
        scores[f"topic/{topic}"] = acc_with_condition("topic", topic)
    return scores


def flatten(scores: dict) -> dict[str, float]:
    flat = {k: v for k, v in scores.items() if k != "topics"}
    flat.update({f"topic/{t}": v for t, v in scores["topics"].items()})
    return flat


def test_every_figure_equals_the_official_rules():
    problems = make_problems()
    results = make_results(problems)
    scores = scienceqa_scores(problems, results)
    assert list(scores) == [*SQA_CATEGORIES, "topics"]
    assert list(scores["topics"])[:len(SQA_TOPICS)] == list(SQA_TOPICS)
    expected = official_reference(problems, results)
    assert flatten(scores) == expected  # exact: same counts, same float expression
    # every group is populated here, and the scores are not trivially 0 or 100
    assert all(0 < scores[c] < 100 for c in SQA_CATEGORIES)


def test_empty_group_is_minus_one_and_split_selection():
    problems = make_problems()
    results = make_results(problems)
    test_ids = [q for q, p in problems.items() if p["split"] == "test"]
    scores = scienceqa_scores(problems, results, split="test")
    assert scores["LAN"] == -1  # no language-science problem in the test split
    assert scores["topics"]["chemistry"] == -1  # an official topic with no problem
    assert flatten(scores) == official_reference(problems, {q: results[q] for q in test_ids})
    # pid_splits.json wins over the problems' own split field
    chosen = test_ids[:7]
    by_pid = scienceqa_scores(problems, results, split="test", pid_splits={"test": chosen, "train": []})
    assert flatten(by_pid) == official_reference(problems, {q: results[q] for q in chosen})


def test_hand_computed_values():
    def problem(subject, hint, image, grade, answer, topic):
        return {"subject": subject, "hint": hint, "image": image, "grade": grade, "answer": answer,
                "topic": topic, "choices": ["a", "b", "c"], "split": "test"}

    problems = {
        "1": problem("natural science", "a hint", None, "grade1", 0, "physics"),
        "2": problem("natural science", "", "image.png", "grade7", 1, "physics"),
        "3": problem("social science", "", None, "grade3", 2, "geography"),
        "4": problem("language science", "text", "image.png", "grade12", 0, "grammar"),
    }
    results = {"1": 0, "2": 0, "3": 2, "4": 0}  # only "2" is wrong
    scores = scienceqa_scores(problems, results)
    assert {c: scores[c] for c in SQA_CATEGORIES} == {
        "NAT": 50.0, "SOC": 100.0, "LAN": 100.0, "TXT": 100.0, "IMG": 50.0, "NO": 100.0,
        "G1-6": 100.0, "G7-12": 50.0, "Average": 75.0,
    }
    assert scores["topics"]["physics"] == 50.0 and scores["topics"]["geography"] == 100.0
    assert scores["topics"]["biology"] == -1
    # Average divides by the number of results: scoring two of them
    assert scienceqa_scores(problems, {"2": 0, "3": 2})["Average"] == 50.0
    assert scienceqa_scores(problems, {"2": 0, "3": 2})["LAN"] == -1


def test_bad_inputs(tmp_path: Path):
    problems = make_problems(6)
    with pytest.raises(DataError, match=r"'999'.*my_results\.json"):
        scienceqa_scores(problems, {"999": 0}, results_source="my_results.json")
    with pytest.raises(DataError, match="no results to score for split 'test'"):
        scienceqa_scores(problems, {"1000": 0}, split="test")  # 1000 is a train problem
    with pytest.raises(DataError, match="split 'val'"):
        scienceqa_scores(problems, {"1001": 0}, split="val")
    with pytest.raises(DataError, match="option index"):
        scienceqa_scores(problems, {"1001": "B"})
    bad = tmp_path / "res.json"
    bad.write_text(json.dumps({"1001": 1}))
    with pytest.raises(DataError, match='"results"'):
        load_scienceqa_results(bad)
    bad.write_text(json.dumps({"results": {"1001": "1", "1002": 2}, "acc": 50.0}))
    assert load_scienceqa_results(bad) == {"1001": 1, "1002": 2}  # int() as the official script, extra keys ignored


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmkit.metrics", "scienceqa", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path: Path):
    problems = make_problems()
    results = make_results(problems)
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    test_ids = [q for q, p in problems.items() if p["split"] == "test"]
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": test_ids[:10], "train": []}))
    (tmp_path / "results.json").write_text(json.dumps({"results": results}))

    done = run_cli("--problems", str(tmp_path / "problems.json"), "--results", str(tmp_path / "results.json"),
                   "--split", "test")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == scienceqa_scores(problems, results, split="test",
                                                       pid_splits={"test": test_ids[:10]})

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"results": {"42": 0}}))
    cases = {
        "missing.json": "not found",
        "broken.json": "not valid JSON",
        "unknown.json": "'42'",
    }
    for name, message in cases.items():
        done = run_cli("--problems", str(tmp_path / "problems.json"), "--results", str(tmp_path / name))
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
        assert str(tmp_path / name) in lines[0]
