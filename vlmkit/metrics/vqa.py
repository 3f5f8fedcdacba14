"""VQA accuracy, by the rules of the official scorer (GT-Vision-Lab/VQA ``vqaEval.py``).

Per question: replace newlines and tabs by spaces and strip the ground-truth answers and the prediction. ONLY IF the
ground-truth answers are not all identical, apply punctuation processing and digit/article processing to them and to
the prediction. Then, for each ground-truth answer, ``min(1, #(the other answers equal to the prediction) / 3)``;
the question's accuracy is the mean of those. Scores are averaged over the questions in the results (overall, per
answer type, per question type) and reported ×100, unrounded (the official rounds to two decimals).

Note the rule: when the annotators all agree, nothing is normalised, so a prediction "yes" scores 0 against ten
"Yes." answers. Evaluation code that always normalises (open_flamingo's) differs from the official number there.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError
from vlmkit.io import read_json
from vlmkit.metrics.files import list_field

# ---- The official processing tables (vqaEval.py). Facts of the benchmark: changing any entry changes the scores. ----

#: Missing-apostrophe spellings → the annotators' spelling. The capitalised keys ("Im", "Ive", "Id've", "I'dve")
#: never match because words are lower-cased first; they are kept as in the official table.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}

#: Number words → digits (whole words only; "none" counts as 0).
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

#: Characters removed (or turned into spaces, see :func:`process_punctuation`); "'" ":" and "." are not among them.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

#: A period not followed by a digit. The official pattern starts with ``(?!<=\d)``, a negative look-AHEAD for the
#: text "<=" and a digit (a typo for a look-behind): at a "." it always passes, so it changes nothing. Kept as is.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")

#: A comma between digits ("1,000"); when present, every punctuation mark is deleted instead of becoming a space.
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")

#: The official call is ``periodStrip.sub("", text, re.UNICODE)``: re.UNICODE lands in the ``count`` argument, so at
#: most that many periods are removed. Kept for parity (it only matters for answers with more than 32 periods).
PERIOD_STRIP_MAX = int(re.UNICODE)

QUESTIONS_HOW = "use the official v2_OpenEnded_mscoco_<split>2014_questions.json from visualqa.org"
ANNOTATIONS_HOW = "use the official v2_mscoco_<split>2014_annotations.json from visualqa.org"
RESULTS_HOW = 'write a JSON list [{"question_id": <int>, "answer": <str>}], one per question'

#: Each ground-truth answer's accuracy saturates when this many of the other annotators gave the prediction.
MATCHES_FOR_FULL_CREDIT = 3


#: Human answers per VQAv2 question; the accuracy formula min(1, matches / 3) averaged over 10 leave-one-out sets
#: assumes it.
ANSWERS_PER_QUESTION = 10


def process_punctuation(text: str) -> str:
    """The official punctuation step: drop or space out the marks in :data:`PUNCTUATION`, then strip periods."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        # The conditions look at the input text, not at the partly processed one, as the official code does.
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_MAX)


def process_digit_article(text: str) -> str:
    """The official digit/article step: lower-case, number words → digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """Full official normalisation (whitespace, punctuation, digits/articles), e.g. for answer postprocessing.

    The scorer itself applies the last two steps only to questions whose ground-truth answers disagree.
    """
    return process_digit_article(process_punctuation(_clean_whitespace(answer)))


def vqa_question_accuracy(gt_answers: Sequence[str], prediction: str) -> float:
    """Accuracy in [0, 1] of one prediction against one question's ground-truth answers (usually ten)."""
    gts = [_clean_whitespace(a) for a in gt_answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    matches = [gt == pred for gt in gts]
    total_matches = sum(matches)
    # For answer i, count the OTHER answers equal to the prediction (exclude answer i itself).
    per_answer = [min(1.0, (total_matches - m) / MATCHES_FOR_FULL_CREDIT) for m in matches]
    return sum(per_answer) / len(per_answer)


def vqa_scores(annotations: list[dict], results: list[dict], questions: list[dict] | None = None, *,
               annotations_source: str = "annotations", results_source: str = "results",
               questions_source: str = "questions", allow_answer_count: bool = False) -> dict[str, Any]:
    """Official VQA accuracy of ``results`` (``[{question_id, answer}]``) against ``annotations``.

    Args:
        annotations: the ``annotations`` list of a VQAv2 annotation file (question_id, question_type, answer_type,
            answers: [{answer, ...}]). Only the annotations of the questions in ``results`` are used.
        results: one ``{question_id, answer}`` per question; scores average over these questions.
        questions: the ``questions`` list of the question file; when given, every result must be one of them.
        allow_answer_count: score questions whose annotation does not hold VQAv2's 10 answers (the formula's
            min(1, matches / 3) then means something else: with 3 answers a perfect prediction scores 66.67); refused
            by default.
        *_source: where the inputs came from (file paths), for error messages.

    Returns:
        ``{"overall": percent, "perAnswerType": {type: percent}, "perQuestionType": {type: percent}}``, unrounded.
    """
    by_id = _index_annotations(annotations, annotations_source)
    predictions = _check_results(results, results_source)
    if questions is not None:
        question_ids = {_key(q.get("question_id")) for q in list_field(questions, "questions", "VQA questions",
                                                                        questions_source) if isinstance(q, dict)}
        unknown = next((r["question_id"] for r in predictions if _key(r["question_id"]) not in question_ids), None)
        if unknown is not None:
            raise DataError(f"question_id {unknown!r} in {results_source} is not a question in {questions_source}; "
                            f"score the results against the question file they were produced from")

    accuracies: list[float] = []
    per_answer_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    for result in predictions:
        qid = result["question_id"]
        annotation = by_id.get(_key(qid))
        if annotation is None:
            raise DataError(f"question_id {qid!r} in {results_source} has no annotation in {annotations_source}; "
                            f"score the results against the annotation file of the split they were produced from")
        _check_annotation(annotation, annotations_source)
        if len(annotation["answers"]) != ANSWERS_PER_QUESTION and not allow_answer_count:
            raise DataError(f"annotation of question_id {qid!r} in {annotations_source} has "
                            f"{len(annotation['answers'])} answers, not VQAv2's {ANSWERS_PER_QUESTION}: the official "
                            "accuracy would change meaning; fix the file, or pass --allow-answer-count")
        accuracy = vqa_question_accuracy([a["answer"] for a in annotation["answers"]], result["answer"])
        accuracies.append(accuracy)
        per_answer_type.setdefault(annotation["answer_type"], []).append(accuracy)
        per_question_type.setdefault(annotation["question_type"], []).append(accuracy)

    def percent(values: list[float]) -> float:
        return 100 * float(sum(values)) / len(values)  # the official expression (×100 before dividing)

    return {
        "overall": percent(accuracies),
        "perAnswerType": {t: percent(v) for t, v in per_answer_type.items()},
        "perQuestionType": {t: percent(v) for t, v in per_question_type.items()},
    }


def _key(question_id: Any) -> str:
    # Ids are compared as text, so a results file that wrote "123" still matches the annotation's 123.
    return str(question_id)


def _index_annotations(annotations: Any, source: str) -> dict[str, Mapping[str, Any]]:
    annotations = list_field(annotations, "annotations", "VQA annotations", source)
    by_id: dict[str, Mapping[str, Any]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "question_id" not in ann:
            raise DataError(f"annotation #{i} in {source} has no question_id; {ANNOTATIONS_HOW}")
        by_id[_key(ann["question_id"])] = ann
    return by_id


def _check_annotation(ann: Mapping[str, Any], source: str) -> None:
    """Checked when used: an annotation file holds hundreds of thousands, a results file often a few."""
    missing = [k for k in ("answers", "answer_type", "question_type") if k not in ann]
    answers = ann.get("answers")
    if missing or not isinstance(answers, list) or not answers or \
            not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        what = f"lacks {', '.join(missing)}" if missing else "has no answers list of {answer: str}"
        raise DataError(f"annotation of question_id {ann['question_id']!r} in {source} {what}; {ANNOTATIONS_HOW}")


def _check_results(results: Any, source: str) -> list[Mapping[str, Any]]:
    if not isinstance(results, list):
        raise DataError(f"VQA results in {source} must be a list, got {type(results).__name__}; {RESULTS_HOW}")
    seen: set[str] = set()
    for i, r in enumerate(results):
        if not isinstance(r, dict) or "question_id" not in r or "answer" not in r:
            raise DataError(f"result #{i} in {source} must be an object with question_id and answer, got {r!r}")
        if not isinstance(r["answer"], str):
            raise DataError(f"answer of question_id {r['question_id']!r} in {source} must be a string, "
                            f"got {r['answer']!r}")
        key = _key(r["question_id"])
        if key in seen:
            raise DataError(f"question_id {r['question_id']!r} appears more than once in {source}; deduplicate the "
                            f"results (one answer per question)")
        seen.add(key)
    if not results:
        raise DataError(f"no results to score in {source}; {RESULTS_HOW}")
    return results


def load_vqa_questions(path: str | Path) -> list[dict]:
    """The ``questions`` list of an official question file (v2_OpenEnded_mscoco_<split>2014_questions.json)."""
    return list_field(read_json(path, "VQA question file", QUESTIONS_HOW), "questions", "VQA questions", str(path))


def load_vqa_annotations(path: str | Path) -> list[dict]:
    """The ``annotations`` list of an official annotation file (v2_mscoco_<split>2014_annotations.json)."""
    return list_field(read_json(path, "VQA annotation file", ANNOTATIONS_HOW), "annotations", "VQA annotations",
                      str(path))


def load_vqa_results(path: str | Path) -> list[dict]:
    """A results file, ``[{question_id, answer}]`` (checked by :func:`vqa_scores`)."""
    return read_json(path, "VQA results file", RESULTS_HOW)
