"""ScienceQA accuracy, by the rules of the official scorer (lupantech/ScienceQA ``tools/evaluate_acc.py``).

A problem counts in NAT / SOC / LAN by its subject; in TXT when its hint is non-empty (with or without an image); in
IMG when it has an image; in NO when it has neither; in G1-6 / G7-12 by its grade. Each group's figure is
``correct / problems in the group × 100`` and a group without problems is reported as -1, as the official code does.
Average is ``correct / number of results × 100``. vlmkit returns the unrounded floats (the official script prints
them with two decimals). Results map a problem id to the predicted option index (``{"results": {qid: index}}`` on
disk, the file LaVIN and the official scorer use).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError
from vlmkit.io import read_json

#: The columns of the ScienceQA table, in the order papers print them.
SQA_CATEGORIES: tuple[str, ...] = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average")

#: Subject groups: column → the problem's ``subject`` field.
SUBJECT_CATEGORIES: dict[str, str] = {
    "NAT": "natural science",
    "SOC": "social science",
    "LAN": "language science",
}

#: Grade groups: column → the ``grade`` values it covers.
GRADE_CATEGORIES: dict[str, frozenset[str]] = {
    "G1-6": frozenset(f"grade{g}" for g in range(1, 7)),
    "G7-12": frozenset(f"grade{g}" for g in range(7, 13)),
}

#: The 26 topics the official scorer reports, in its order; always present in ``scores["topics"]``.
SQA_TOPICS: tuple[str, ...] = (
    "punctuation", "literacy-in-science", "verbs", "pronouns", "civics", "culture", "word-study", "economics",
    "physics", "units-and-measurement", "science-and-engineering-practices", "reading-comprehension",
    "global-studies", "grammar", "figurative-language", "us-history", "writing-strategies", "world-history",
    "reference-skills", "biology", "earth-science", "phonological-awareness", "capitalization", "chemistry",
    "vocabulary", "geography",
)

#: What the official scorer reports for a group without problems (it returns -1 instead of dividing by zero).
EMPTY_GROUP = -1.0

PID_SPLITS_FILE = "pid_splits.json"
RESULTS_FORMAT = '{"results": {"<problem id>": <predicted option index>}}'
PROBLEMS_HOW = "the ScienceQA problems.json from lupantech/ScienceQA (data/scienceqa/problems.json)"


def _percent(correct: int, total: int) -> float:
    # Same expression as the official scorer (division first, then ×100), so the floats are bit-identical.
    return correct / total * 100 if total else EMPTY_GROUP


def _as_option_index(value: Any, qid: str, results_source: str) -> int:
    """The official scorer applies ``int()`` to each prediction; accept what it accepts, except fractional floats."""
    index = None
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:
            index = int(value)
        except (ValueError, OverflowError):
            pass
    if index is None or (isinstance(value, float) and not value.is_integer()):
        raise DataError(f"result for problem '{qid}' in {results_source} must be an option index (int), "
                        f"got {value!r}; write {RESULTS_FORMAT}")
    return index


def _select_split(problems: Mapping[str, dict], split: str, pid_splits: Mapping[str, Any] | None,
                  problems_source: str) -> set[str]:
    """Ids of the problems in ``split``: from pid_splits.json when given, else from each problem's ``split`` field."""
    if pid_splits is not None:
        if split not in pid_splits:
            raise DataError(f"split '{split}' is not in {PID_SPLITS_FILE} next to {problems_source}; "
                            f"available: {', '.join(sorted(pid_splits))}")
        return {str(qid) for qid in pid_splits[split]}
    selected = {str(qid) for qid, p in problems.items() if isinstance(p, Mapping) and p.get("split") == split}
    if not selected:
        found = sorted({str(p.get("split")) for p in problems.values() if isinstance(p, Mapping)})
        raise DataError(f"no problem in {problems_source} has split '{split}' (splits found: "
                        f"{', '.join(found) or 'none'}); pass one of those to --split")
    return selected


def scienceqa_scores(problems: Mapping[str, dict], results: Mapping[str, int], *, split: str | None = None,
                     pid_splits: Mapping[str, Any] | None = None, problems_source: str = "problems",
                     results_source: str = "results", partial: bool = False) -> dict[str, Any]:
    """Score predicted option indices against ScienceQA problems, by the official rules.

    Args:
        problems: ``problems.json`` content, problem id → problem (fields answer, subject, hint, image, grade, topic).
        results: problem id → predicted option index.
        split: keep only the problems of this split (and the results for them); ``None`` scores every result.
            Results that do not cover the whole split are refused (the table would read as the split's), unless
            ``partial``: then ``partial``, ``num_results`` and ``num_problems`` say how much was scored.
        pid_splits: ``pid_splits.json`` content used to select ``split``; without it, each problem's ``split`` field.
        problems_source, results_source: where the inputs came from (file paths), for error messages.

    Returns:
        ``{"NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average": percent, "topics": {topic: percent}}``,
        unrounded; -1 for a group without problems.
    """
    if not isinstance(results, Mapping):
        raise DataError(f"ScienceQA results in {results_source} must map problem ids to option indices: "
                        f"{RESULTS_FORMAT}")
    predictions: dict[str, int] = {}
    for qid, value in results.items():
        qid = str(qid)
        if qid not in problems:
            raise DataError(f"result id '{qid}' in {results_source} is not a problem in {problems_source}; "
                            f"score the results against the problems.json they were produced from")
        predictions[qid] = _as_option_index(value, qid, results_source)
    if split is not None:
        selected = _select_split(problems, split, pid_splits, problems_source)
        predictions = {qid: index for qid, index in predictions.items() if qid in selected}
        uncovered = len(selected) - len(predictions)
        if uncovered and predictions and not partial:
            raise DataError(f"{results_source} has results for {len(predictions)} of the {len(selected)} problems of "
                            f"split '{split}' ({uncovered} missing): the scores would not be the split's; score the "
                            "whole split, or pass --partial to score the subset (the output then says so)")
    if not predictions:
        where = f" for split '{split}'" if split is not None else ""
        raise DataError(f"no results to score{where} in {results_source}; write {RESULTS_FORMAT}")

    scores = _table(problems, predictions, problems_source)
    if split is not None and partial:
        scores.update(partial=len(predictions) < len(selected), num_results=len(predictions),
                      num_problems=len(selected))
    return scores


def _table(problems: Mapping[str, dict], predictions: Mapping[str, int], problems_source: str) -> dict[str, Any]:
    """Accuracy per table column, overall and per topic, of ``predictions`` (problem id → option index)."""
    correct_in: dict[str, int] = {}  # table column or topic → correct predictions
    total_in: dict[str, int] = {}  # table column or topic → scored problems
    topics_seen: set[str] = set()
    correct = 0
    for qid, index in predictions.items():
        problem = problems[qid]
        if not isinstance(problem, Mapping) or "answer" not in problem:
            raise DataError(f"problem '{qid}' in {problems_source} has no 'answer' field; {PROBLEMS_HOW}")
        is_correct = index == problem["answer"]
        correct += is_correct
        groups = _columns(problem)
        if problem.get("topic") is not None:
            topics_seen.add(str(problem["topic"]))
            groups.append(_topic_key(problem["topic"]))
        for group in groups:
            total_in[group] = total_in.get(group, 0) + 1
            correct_in[group] = correct_in.get(group, 0) + is_correct

    def percent(group: str) -> float:
        return _percent(correct_in.get(group, 0), total_in.get(group, 0))

    scores: dict[str, Any] = {name: percent(name) for name in SQA_CATEGORIES if name != "Average"}
    scores["Average"] = correct / len(predictions) * 100
    extra_topics = sorted(topics_seen - set(SQA_TOPICS))  # e.g. generated data with its own topics
    scores["topics"] = {topic: percent(_topic_key(topic)) for topic in (*SQA_TOPICS, *extra_topics)}
    return scores


def _topic_key(topic: Any) -> str:
    # Topics share the counters with the table columns; the prefix keeps a topic named like a column apart.
    return f"topic:{topic}"


def _columns(problem: Mapping[str, Any]) -> list[str]:
    """The table columns (other than Average) a problem counts in."""
    has_hint = bool(problem.get("hint"))
    has_image = bool(problem.get("image"))
    columns = [name for name, subject in SUBJECT_CATEGORIES.items() if problem.get("subject") == subject]
    if has_hint:
        columns.append("TXT")
    if has_image:
        columns.append("IMG")
    if not has_hint and not has_image:
        columns.append("NO")
    columns += [name for name, grades in GRADE_CATEGORIES.items() if problem.get("grade") in grades]
    return columns


def load_scienceqa_results(path: str | Path) -> dict[str, int]:
    """Read an official results file ``{"results": {qid: index}}`` (LaVIN's files carry more keys; they are ignored)."""
    data = read_json(path, "ScienceQA results file", f"write {RESULTS_FORMAT}")
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise DataError(f"ScienceQA results file {path} must be a JSON object {RESULTS_FORMAT}")
    return {str(qid): _as_option_index(v, str(qid), str(path)) for qid, v in data["results"].items()}


def load_scienceqa_problems(path: str | Path) -> dict[str, dict]:
    """Read ``problems.json`` (problem id → problem)."""
    data = read_json(path, "ScienceQA problems file", f"use {PROBLEMS_HOW}")
    if not isinstance(data, dict) or not all(isinstance(p, dict) for p in data.values()):
        raise DataError(f"ScienceQA problems file {path} must be a JSON object mapping problem ids to problems; "
                        f"use {PROBLEMS_HOW}")
    return data


def load_pid_splits(problems_path: str | Path) -> dict[str, list[str]] | None:
    """``pid_splits.json`` next to ``problems.json``, or ``None`` when there is none."""
    path = Path(problems_path).with_name(PID_SPLITS_FILE)
    if not path.exists():
        return None
    data = read_json(path, "ScienceQA split file", "use pid_splits.json from lupantech/ScienceQA")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path} must be a JSON object mapping split names to lists of problem ids")
    return data
