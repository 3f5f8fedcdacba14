"""ScienceQA prompt formats (exact strings against the reference's spacing rules) and answer extraction."""
import pytest

from vlmkit.errors import ConfigError
from vlmkit.processors.prompts import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    PromptFormat,
    ScienceQAPrompt,
    build_scienceqa_prompt,
    extract_answer,
)
from vlmkit.registry import PROCESSORS

PROBLEM = {
    "question": "Which animal has fur?",
    "choices": ["fish", "dog", "snake"],
    "answer": 1,
    "hint": "",
    "image": None,
    "lecture": "Mammals have fur.\nBirds have feathers.",
    "solution": "A dog is a mammal.",
}
Q = "Question: Which animal has fur?"
C = "Context: N/A"
M = "Options: (A) fish (B) dog (C) snake"
LEC = "Mammals have fur.\\nBirds have feathers."  # the newline becomes a literal backslash-n
SOL = "A dog is a mammal."


def test_lavin_default_qcm_ale_exact():
    prompt, target = build_scienceqa_prompt(PROBLEM, "QCM-ALE")
    assert prompt == f"{Q}\n{C}\n{M}\nResponse:"
    assert target == f"The answer is B. BECAUSE: {LEC} {SOL}"


@pytest.mark.parametrize("fmt, prompt", [
    ("CQM-A", f"{C}\n{Q}\n{M}\nResponse:"),
    ("QCML-A", f"{Q}\n{C}\n{M}\nBECAUSE: {LEC}\nResponse:"),
    ("QCME-A", f"{Q}\n{C}\n{M}\nBECAUSE: {SOL}\nResponse:"),
    ("QCMLE-A", f"{Q}\n{C}\n{M}\nBECAUSE: {LEC} {SOL}\nResponse:"),
    ("QCLM-A", f"{Q}\n{C}\nBECAUSE: {LEC}\n{M}\nResponse:"),
    ("QCEM-A", f"{Q}\n{C}\nBECAUSE: {SOL}\n{M}\nResponse:"),
    ("QCLEM-A", f"{Q}\n{C}\nBECAUSE: {LEC} {SOL}\n{M}\nResponse:"),
])
def test_input_formats_exact(fmt, prompt):
    assert build_scienceqa_prompt(PROBLEM, fmt)[0] == prompt


@pytest.mark.parametrize("fmt, target", [
    ("QCM-A", "The answer is B."),
    ("QCM-AL", f"The answer is B. BECAUSE: {LEC}"),  # L = lecture (the reference swaps AL/AE)
    ("QCM-AE", f"The answer is B. BECAUSE: {SOL}"),
    ("QCM-AEL", f"The answer is B. BECAUSE: {SOL} {LEC}"),
    ("QCM-LA", f"{LEC} The answer is B."),
    ("QCM-EA", f"{SOL} The answer is B."),
    ("QCM-LEA", f"{LEC} {SOL} The answer is B."),
    ("QCM-ELA", f"{SOL} {LEC} The answer is B."),
])
def test_output_formats_exact(fmt, target):
    assert build_scienceqa_prompt(PROBLEM, fmt)[1] == target


@pytest.mark.parametrize("inputs", INPUT_FORMATS)
@pytest.mark.parametrize("outputs", OUTPUT_FORMATS)
def test_every_format_has_its_fields_and_the_answer(inputs, outputs):
    prompt, target = build_scienceqa_prompt(PROBLEM, f"{inputs}-{outputs}")
    assert prompt.endswith("\nResponse:") and M in prompt and Q in prompt
    assert (LEC in prompt) == ("L" in inputs) and (SOL in prompt) == ("E" in inputs)
    assert extract_answer(target, 3) == 1
    assert (LEC in target) == ("L" in outputs) and (SOL in target) == ("E" in outputs)
    assert "  " not in prompt and "  " not in target


def test_context_hint_caption_and_empty_explanations():
    problem = dict(PROBLEM, hint="Look closely.", lecture="", solution="")
    prompt, target = build_scienceqa_prompt(problem, "QCM-ALE", caption="A brown dog.")
    assert "\nContext: Look closely. A brown dog.\n" in prompt
    assert target == "The answer is B."  # no dangling "BECAUSE:" when there is nothing to explain
    assert "\nContext: A brown dog.\n" in build_scienceqa_prompt(dict(PROBLEM), "QCM-A", caption="A brown dog.")[0]
    assert build_scienceqa_prompt(dict(problem, solution="Dogs have fur."), "QCM-ALE")[1] == \
        "The answer is B. BECAUSE: Dogs have fur."


def test_five_choices_use_letters_a_to_e():
    problem = dict(PROBLEM, choices=["a", "b", "c", "d", "e"], answer=4)
    prompt, target = build_scienceqa_prompt(problem, "QCM-A")
    assert "Options: (A) a (B) b (C) c (D) d (E) e\n" in prompt and target == "The answer is E."


@pytest.mark.parametrize("bad", ["QCM", "QCM-ALE-X", "QXM-A", "QCMM-A", "QC-A", "QCM-L", "QCM-LAE", ""])
def test_bad_formats_are_config_errors(bad):
    with pytest.raises(ConfigError, match="prompt_format"):
        PromptFormat.parse(bad)


def test_registered_prompt_processor():
    builder = PROCESSORS.get("scienceqa_prompt")("QCM-A")
    assert isinstance(builder, ScienceQAPrompt)
    assert builder(PROBLEM) == build_scienceqa_prompt(PROBLEM, "QCM-A")


@pytest.mark.parametrize("text, n, expected", [
    ("The answer is B. BECAUSE: ...", 3, 1),
    ("The answer is A.", 2, 0),
    ("blah The answer is C, then The answer is A.", 3, 2),  # the first match wins
    ("The answer is E.", 5, 4),
    ("The answer is D.", 3, None),  # not one of the 3 choices
    ("The answer is B", 3, None),  # the reference pattern needs a character after the letter
    ("the answer is B.", 3, None),
    ("I think (B).", 3, None),
    ("", 4, None),
])
def test_extract_answer(text, n, expected):
    assert extract_answer(text, n) == expected
