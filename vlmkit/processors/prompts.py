"""ScienceQA prompt formats and answer extraction.

A format is ``"<inputs>-<outputs>"`` in ScienceQA's letters: inputs from Q(uestion), C(ontext), M(ultiple options),
L(ecture), E(xplanation, i.e. the problem's ``solution``); outputs A(nswer) with optional L and E before or after it.
LaVIN's default ``QCM-ALE`` gives::

    prompt:  Question: {question}\\nContext: {hint or "N/A"}\\nOptions: (A) c0 (B) c1 ...\\nResponse:
    target:  The answer is {letter}. BECAUSE: {lecture} {solution}

Spacing and ordering follow the reference prompt builders (lupantech/ScienceQA, luogen1996/LaVIN): lecture and solution
have their newlines written as a literal backslash-n, consecutive L/E fields share one ``BECAUSE:`` line, one pass of
double-space collapsing, outer whitespace stripped. Two reference quirks are fixed here (see docs/scienceqa.md): the
reference's outputs ``AL``/``AE`` carry the solution/lecture respectively (letters swapped), and a target whose explanation
is empty ends in a dangling ``BECAUSE:``; vlmkit makes L mean lecture and E mean solution everywhere and drops the dangling
word.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlmkit.errors import ConfigError
from vlmkit.registry import PROCESSORS

#: Labels of the choices; ScienceQA problems have 2-5 choices and the reference labels them A..E.
OPTION_LETTERS = "ABCDE"
DEFAULT_FORMAT = "QCM-ALE"
#: The input and output formats of the reference implementations (any other order of the same letters also works).
INPUT_FORMATS = ("CQM", "QCM", "QCML", "QCME", "QCMLE", "QCLM", "QCEM", "QCLEM")
OUTPUT_FORMATS = ("A", "AL", "AE", "ALE", "AEL", "LA", "EA", "LEA", "ELA")
INPUT_LETTERS = frozenset("QCMLE")
OUTPUT_LETTERS = frozenset("ALE")
#: The reference reads the first match of this pattern (its "." is unescaped, i.e. any character follows the letter).
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")
#: Fills an empty context, as in the reference.
NO_CONTEXT = "N/A"
#: Ends every prompt; the model continues after it.
RESPONSE_CUE = "Response:"


@dataclass(frozen=True)
class PromptFormat:
    """A parsed ``"<inputs>-<outputs>"`` format string, e.g. ``PromptFormat.parse("QCM-ALE")``."""

    inputs: str
    outputs: str

    @classmethod
    def parse(cls, spec: str) -> "PromptFormat":
        parts = str(spec).split("-")
        how = (f"a ScienceQA prompt format is INPUTS-OUTPUTS with inputs from Q,C,M,L,E (e.g. {', '.join(INPUT_FORMATS)}) "
               f"and outputs from A,L,E (one of {', '.join(OUTPUT_FORMATS)})")
        if len(parts) != 2:
            raise ConfigError(f"bad prompt_format '{spec}': {how}")
        inputs, outputs = parts
        if (not inputs or set(inputs) - INPUT_LETTERS or len(set(inputs)) != len(inputs)
                or "Q" not in inputs or "M" not in inputs):
            raise ConfigError(f"bad prompt_format '{spec}': inputs must use each of Q,C,M,L,E at most once and include "
                              f"Q and M; {how}")
        if outputs not in OUTPUT_FORMATS:
            raise ConfigError(f"bad prompt_format '{spec}': unknown outputs '{outputs}'; {how}")
        return cls(inputs, outputs)

    def __str__(self) -> str:
        return f"{self.inputs}-{self.outputs}"


def _escape_newlines(text: str) -> str:
    # The reference writes newlines of lectures/solutions as a literal "\n" so one sample stays on one line.
    return text.replace("\n", "\\n")


def context_text(problem: Mapping[str, Any], caption: str = "") -> str:
    """The hint, followed by the image caption when one is given; ``N/A`` when both are empty."""
    context = " ".join([problem.get("hint") or "", caption or ""]).strip()
    return context or NO_CONTEXT


def choices_text(choices: list[str]) -> str:
    """``(A) c0 (B) c1 ...``"""
    if len(choices) > len(OPTION_LETTERS):
        raise ValueError(f"{len(choices)} choices but only {len(OPTION_LETTERS)} option letters")
    return " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices))


def answer_letter(problem: Mapping[str, Any]) -> str:
    return OPTION_LETTERS[int(problem["answer"])]


def _letter_groups(letters: str) -> list[str]:
    """Split a letter string into runs, keeping consecutive L/E together: "QCLEM" -> ["Q", "C", "LE", "M"]."""
    groups: list[str] = []
    for letter in letters:
        if letter in "LE" and groups and set(groups[-1]) <= {"L", "E"}:
            groups[-1] += letter
        else:
            groups.append(letter)
    return groups


def _explanation(letters: str, lecture: str, solution: str) -> str:
    return " ".join({"L": lecture, "E": solution}[x] for x in letters)


def _collapse(text: str) -> str:
    # The reference's single pass of double-space removal, kept so real-data prompts tokenize exactly as there.
    return text.replace("  ", " ").strip()


def build_scienceqa_prompt(
    problem: Mapping[str, Any], prompt_format: str | PromptFormat = DEFAULT_FORMAT, caption: str = ""
) -> tuple[str, str]:
    """``(prompt, target)`` for one ScienceQA problem; ``caption`` joins the context (use_caption)."""
    fmt = prompt_format if isinstance(prompt_format, PromptFormat) else PromptFormat.parse(prompt_format)
    lecture = _escape_newlines(problem.get("lecture") or "")
    solution = _escape_newlines(problem.get("solution") or "")
    fields = {
        "Q": f"Question: {problem['question']}",
        "C": f"Context: {context_text(problem, caption)}",
        "M": f"Options: {choices_text(list(problem['choices']))}",
    }
    lines = [fields[g] if g in fields else f"BECAUSE: {_explanation(g, lecture, solution)}"
             for g in _letter_groups(fmt.inputs)]
    prompt = _collapse("\n".join(lines) + "\n" + RESPONSE_CUE)

    answer = f"The answer is {answer_letter(problem)}."
    explanation = _explanation(fmt.outputs.replace("A", ""), lecture, solution)
    if fmt.outputs.startswith("A"):
        target = _collapse(f"{answer} BECAUSE: {explanation}") if len(fmt.outputs) > 1 else answer
        if target.endswith("BECAUSE:"):  # nothing to explain (the reference leaves the word dangling)
            target = target[: -len("BECAUSE:")].strip()
    else:
        target = _collapse(f"{explanation} {answer}")
    return prompt, target


def extract_answer(text: str, n_choices: int) -> int | None:
    """The choice index named by the first ``The answer is X.`` in ``text``; None when absent or X is not a choice."""
    match = ANSWER_PATTERN.search(text)
    if match is None:
        return None
    index = OPTION_LETTERS.find(match.group(1))
    return index if 0 <= index < n_choices else None


@PROCESSORS.register("scienceqa_prompt")
class ScienceQAPrompt:
    """A configured prompt builder: ``ScienceQAPrompt("QCM-ALE")(problem, caption) -> (prompt, target)``."""

    def __init__(self, prompt_format: str = DEFAULT_FORMAT) -> None:
        self.format = PromptFormat.parse(prompt_format)

    def __call__(self, problem: Mapping[str, Any], caption: str = "") -> tuple[str, str]:
        return build_scienceqa_prompt(problem, self.format, caption)
