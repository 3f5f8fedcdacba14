"""VQA scorer: the official vqaEval.py rules (normalise only when annotators disagree, min(1, n/3) over the other
answers), hand-computed values, aggregation by type, a randomised parity check, bad inputs and the CLI."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.errors import DataError
from vlmkit.metrics.vqa import (
    normalize_vqa_answer,
    process_digit_article,
    process_punctuation,
    vqa_question_accuracy,
    vqa_scores,
)


def annotation(qid: int, answers: list[str], answer_type: str = "other", question_type: str = "what is") -> dict:
    return {
        "question_id": qid, "image_id": qid // 10, "answer_type": answer_type, "question_type": question_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def always_normalised_accuracy(gt_answers: list[str], prediction: str) -> float:
    """What evaluation code that always normalises would give (the rule the official scorer does NOT follow)."""
    gts = [normalize_vqa_answer(a) for a in gt_answers]
    pred = normalize_vqa_answer(prediction)
    return sum(min(1.0, (sum(g == pred for g in gts) - (g == pred)) / 3) for g in gts) / len(gts)


def test_no_normalisation_when_all_answers_agree():
    assert vqa_question_accuracy(["Yes."] * 10, "yes") == 0.0  # official: raw comparison
    assert always_normalised_accuracy(["Yes."] * 10, "yes") == 1.0  # an always-normalising metric differs
    assert vqa_question_accuracy(["Yes."] * 10, "Yes.") == 1.0
    assert vqa_question_accuracy(["two"] * 10, "2") == 0.0
    assert vqa_question_accuracy(["yes"] * 10, "  yes\n") == 1.0  # whitespace is always cleaned


def test_normalisation_when_answers_disagree():
    assert vqa_question_accuracy(["yes"] * 9 + ["Yes."], "YES") == 1.0
    # number words: two/2 both become "2"; three annotators said it -> each "2" answer sees 2 others, the rest 3
    assert vqa_question_accuracy(["two", "two", "2"] + ["3"] * 7, "2") == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_question_accuracy(["a dog"] * 5 + ["the dog"] * 5, "an dog") == 1.0  # articles dropped
    # two annotators: each of theirs sees 1 matching other (1/3), each of the 8 others sees 2 (2/3)
    assert vqa_question_accuracy(["dont"] * 2 + ["no"] * 8, "don't") == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)
    assert vqa_question_accuracy(["hot-dog"] * 2 + ["hotdog"] * 8, "hot dog") == pytest.approx(0.6)  # "-" -> " "
    assert vqa_question_accuracy(["hot-dog"] * 2 + ["hotdog"] * 8, "hot-dog") == pytest.approx(0.6)
    assert vqa_question_accuracy(["1,000"] * 5 + ["1000."] * 5, "1000") == 1.0  # digit comma and period stripped


@pytest.mark.parametrize("n_matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_min_one_n_over_three(n_matching: int, expected: float):
    # n annotators said "red": each "red" answer sees n-1 matching others, each other answer sees n
    gts = ["red"] * n_matching + ["blue"] * (10 - n_matching)
    by_hand = (n_matching * min(1, (n_matching - 1) / 3) + (10 - n_matching) * min(1, n_matching / 3)) / 10
    assert by_hand == pytest.approx(expected)
    assert vqa_question_accuracy(gts, "red") == pytest.approx(expected)


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs.", "2 dogs"),
    ("The Cat!", "cat"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("isnt", "isn't"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),
    ("what?", "what"),
    ("yes , sir", "yes sir"),  # a mark next to a space is deleted, not spaced
    ("a/b", "b"),  # "/" becomes a space, then the article "a" is dropped
    ("it's", "it's"),  # the apostrophe is not in the official punctuation list
    ("\tRed\n", "red"),
])
def test_normalize_vqa_answer(raw: str, normalised: str):
    assert normalize_vqa_answer(raw) == normalised


def test_processing_steps_follow_official_order():
    # punctuation conditions look at the original text: a digit comma anywhere deletes every mark
    assert process_punctuation("1,000 (approx)") == "1000 approx"
    assert process_punctuation("left(approx)") == "left approx "
    # periods followed by a digit stay
    assert process_punctuation("v1.2.") == "v1.2"
    # number words map before articles are dropped; contractions map after
    assert process_digit_article("The one THAT wont") == "1 that won't"


def test_aggregation_by_answer_and_question_type():
    annotations = [
        annotation(1, ["yes"] * 10, "yes/no", "is the"),
        annotation(2, ["no"] * 10, "yes/no", "is the"),
        annotation(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        annotation(4, ["red"] * 10, "other", "what color"),  # not in the results: not scored
    ]
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "yes"},
               {"question_id": 3, "answer": "2"}]
    scores = vqa_scores(annotations, results)
    assert set(scores) == {"overall", "perAnswerType", "perQuestionType"}
    assert scores["overall"] == pytest.approx(100 * (1 + 0 + 0.9) / 3)
    assert scores["perAnswerType"] == pytest.approx({"yes/no": 50.0, "number": 90.0})
    assert scores["perQuestionType"] == pytest.approx({"is the": 50.0, "how many": 90.0})


def official_reference(annotations: list[dict], results: list[dict]) -> dict:
    """A plain re-implementation of vqaEval.py's evaluate loop over the results' question ids (answer dicts, the
    other answers found by dict inequality, processing only when the cleaned answers differ)."""
    gts = {a["question_id"]: json.loads(json.dumps(a)) for a in annotations}
    acc_qa, acc_ques_type, acc_ans_type = [], {}, {}
    for res in results:
        gt = gts[res["question_id"]]
        for ans in gt["answers"]:
            ans["answer"] = ans["answer"].replace("\n", " ").replace("\t", " ").strip()
        res_ans = res["answer"].replace("\n", " ").replace("\t", " ").strip()
        if len({a["answer"] for a in gt["answers"]}) > 1:
            for ans in gt["answers"]:
                ans["answer"] = process_digit_article(process_punctuation(ans["answer"]))
            res_ans = process_digit_article(process_punctuation(res_ans))
        gt_acc = []
        for datum in gt["answers"]:
            others = [item for item in gt["answers"] if item != datum]
            matching = [item for item in others if item["answer"] == res_ans]
            gt_acc.append(min(1, float(len(matching)) / 3))
        avg = float(sum(gt_acc)) / len(gt_acc)
        acc_qa.append(avg)
        acc_ques_type.setdefault(gt["question_type"], []).append(avg)
        acc_ans_type.setdefault(gt["answer_type"], []).append(avg)
    return {
        "overall": 100 * float(sum(acc_qa)) / len(acc_qa),
        "perAnswerType": {t: 100 * float(sum(v)) / len(v) for t, v in acc_ans_type.items()},
        "perQuestionType": {t: 100 * float(sum(v)) / len(v) for t, v in acc_ques_type.items()},
    }


VARIANTS = [["yes", "Yes", "yes.", "YES!"], ["two", "2", "Two.", "2 "], ["the dog", "dog", "a dog", "Dog"],
            ["dont", "don't", "do not"], ["hot-dog", "hot dog", "hotdog"], ["1,000", "1000", "1000."], ["red"]]


def test_random_parity_with_official_loop():
    rng = random.Random(0)
    annotations, results = [], []
    for qid in range(300):
        pool = rng.choice(VARIANTS) + rng.choice(VARIANTS)
        if rng.random() < 0.3:  # annotators agree: raw comparison, so a variant spelling scores 0
            answers = [rng.choice(pool)] * 10
        else:
            answers = [rng.choice(pool[:rng.randint(1, len(pool))]) for _ in range(10)]
        annotations.append(annotation(qid, answers, rng.choice(["yes/no", "number", "other"]),
                                      rng.choice(["what is", "how many", "is the"])))
        results.append({"question_id": qid, "answer": rng.choice(pool + ["cat", "\tyes\n"])})
    ours = vqa_scores(annotations, results)
    assert ours == official_reference(annotations, results)  # exact
    assert 10 < ours["overall"] < 90  # a mix of hits and misses, so the comparison means something


def test_bad_inputs():
    annotations = [annotation(1, ["yes"] * 10)]
    with pytest.raises(DataError, match="question_id 7 .*my_results.json.*no annotation"):
        vqa_scores(annotations, [{"question_id": 7, "answer": "yes"}], results_source="my_results.json")
    with pytest.raises(DataError, match="must be a list"):
        vqa_scores(annotations, {"question_id": 1, "answer": "yes"})
    with pytest.raises(DataError, match="question_id and answer"):
        vqa_scores(annotations, [{"question_id": 1}])
    with pytest.raises(DataError, match="deduplicate"):
        vqa_scores(annotations, [{"question_id": 1, "answer": "yes"}, {"question_id": 1, "answer": "no"}])
    with pytest.raises(DataError, match="not a question in"):
        vqa_scores(annotations, [{"question_id": 1, "answer": "yes"}], questions=[{"question_id": 2}])
    with pytest.raises(DataError, match="lacks answer_type"):
        vqa_scores([{"question_id": 1, "question_type": "x", "answers": [{"answer": "a"}]}],
                   [{"question_id": 1, "answer": "a"}])
    # ids written as text still match the annotation's integer id
    assert vqa_scores(annotations, [{"question_id": "1", "answer": "yes"}])["overall"] == 100.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmkit.metrics", "vqa", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path: Path):
    annotations = [annotation(1, ["yes"] * 10, "yes/no", "is the"),
                   annotation(2, ["two", "two", "2"] + ["3"] * 7, "number", "how many")]
    questions = [{"question_id": a["question_id"], "image_id": a["image_id"], "question": "q?"} for a in annotations]
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"}]
    files = {"questions": {"questions": questions}, "annotations": {"annotations": annotations},
             "results": results, "dup": results + results[:1], "unknown": [{"question_id": 9, "answer": "no"}],
             "notlist": {"question_id": 1, "answer": "yes"}}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    (tmp_path / "broken.json").write_text("[{")
    base = ["--questions", str(tmp_path / "questions.json"), "--annotations", str(tmp_path / "annotations.json")]

    done = run_cli(*base, "--results", str(tmp_path / "results.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == vqa_scores(annotations, results, questions)
    assert json.loads(done.stdout)["overall"] == pytest.approx(100 * (1 + 0.9) / 2)

    for name, message in [("missing", "not found"), ("broken", "not valid JSON"), ("dup", "deduplicate"),
                          ("unknown", "question_id 9"), ("notlist", "must be a list")]:
        done = run_cli(*base, "--results", str(tmp_path / f"{name}.json"))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == ""
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
        assert "Traceback" not in done.stderr
    done = run_cli(*base, "--results", str(tmp_path / "dup.json"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr
