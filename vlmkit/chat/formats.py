"""How a chat turns into the input a model was trained on.

* LaVIN: the run's ScienceQA prompt format (``datasets.scienceqa.prompt_format``, built by
  :func:`vlmkit.processors.prompts.build_scienceqa_prompt`). The user's line is the question; ``question | option A |
  option B`` adds options (``Options: (A) option A (B) option B``); earlier turns go into the context field
  (``Context: Question: ... Answer: ...``) when the format has one. The image in effect fills LaVIN's image slot.
* OpenFlamingo: the dataset's chunk template (e.g. VQAv2's ``<image>Question:{question} Short answer:{answer}
  <|endofchunk|>``): one chunk per turn, earlier turns with their answers as in-context chunks, ``<image>`` wherever a
  turn brings another image than the turn before it.

Both measure the tokens a prompt takes; :func:`fit_history` drops the oldest turns until prompt + reply fit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vlmkit.data.records import PromptTemplate
from vlmkit.errors import DataError
from vlmkit.processors.prompts import OPTION_LETTERS, PromptFormat, build_scienceqa_prompt

#: Separates the question from its options in a chat line: ``Which color is it? | red | green``.
OPTION_SEPARATOR = "|"


@dataclass
class Turn:
    """One question, the image in effect when it was asked (an index into the session's images) and the reply."""

    question: str
    options: list[str] = field(default_factory=list)
    image: int | None = None
    answer: str = ""


def parse_question(line: str) -> tuple[str, list[str]]:
    """``"q | a | b"`` → ``("q", ["a", "b"])``; a question without ``|`` has no options."""
    question, *options = [part.strip() for part in line.split(OPTION_SEPARATOR)]
    if not question:
        raise DataError(f"empty question; type a question, optionally followed by options: "
                        f"question {OPTION_SEPARATOR} option A {OPTION_SEPARATOR} option B")
    if any(not o for o in options):
        raise DataError(f"empty option in '{line.strip()}'; write: question {OPTION_SEPARATOR} option A "
                        f"{OPTION_SEPARATOR} option B")
    if len(options) > len(OPTION_LETTERS):
        raise DataError(f"{len(options)} options; the prompt format labels at most {len(OPTION_LETTERS)} "
                        f"({', '.join(OPTION_LETTERS)})")
    return question, options


class ChatFormat(Protocol):
    """Turns → one model sample (``{"id", "images", "prompt"}`` for the model's collator) and its length in tokens."""

    max_tokens: int
    needs_image: bool

    def sample(self, turns: Sequence[Turn], images: Sequence[torch.Tensor]) -> dict[str, Any]: ...

    def n_tokens(self, sample: Mapping[str, Any]) -> int: ...

    def describe(self) -> str: ...


class LaVINChatFormat:
    """LaVIN's input: ``[modality][BOS] Image: <image tokens> | Image: N/A`` + the ScienceQA prompt."""

    needs_image = False

    def __init__(self, model: Any, prompt_format: str) -> None:
        self.format = PromptFormat.parse(prompt_format)
        self.collator = model.collator(train=False)
        self.tokenizer = model.tokenizer
        self.max_tokens = int(model.max_seq_len)

    def sample(self, turns: Sequence[Turn], images: Sequence[torch.Tensor]) -> dict[str, Any]:
        current = turns[-1]
        history = " ".join(f"Question: {t.question} Answer: {t.answer}" for t in turns[:-1])
        problem = {"question": current.question, "hint": history, "choices": current.options, "answer": 0}
        prompt, _ = build_scienceqa_prompt(problem, self.format)
        image = [images[current.image]] if current.image is not None else []
        return {"id": "chat", "images": image, "prompt": prompt, "target": ""}

    def n_tokens(self, sample: Mapping[str, Any]) -> int:
        c = self.collator
        head = 2 + (len(c.image_prefix) + c.n_image_tokens if sample["images"] else len(c.no_image_prefix))
        return head + len(self.tokenizer.encode(sample["prompt"], add_special_tokens=False))

    def keeps_history(self) -> bool:
        return "C" in self.format.inputs

    def describe(self) -> str:
        history = ("earlier turns go into its Context" if self.keeps_history()
                   else "it has no Context field, so earlier turns are not shown to the model")
        return (f"LaVIN, ScienceQA prompt format {self.format} (ask 'question {OPTION_SEPARATOR} option A "
                f"{OPTION_SEPARATOR} option B'); {history}; at most {self.max_tokens} tokens")


class FlamingoChatFormat:
    """OpenFlamingo's input: the dataset's chunk template, one chunk per turn, ``<image>`` where the image changes."""

    needs_image = True

    def __init__(self, model: Any, template: PromptTemplate) -> None:
        self.template = template
        # The same chunk without its image tag: a turn about the image the chunk before it showed carries no new tag,
        # so its tokens keep attending to that image.
        self.untagged = PromptTemplate(template.template, template.answer_field, "", template.end_of_chunk_token)
        self.tokenizer = model.tokenizer
        config = model.lang_encoder.config
        self.max_tokens = int(getattr(config, "max_position_embeddings", 2048))

    def sample(self, turns: Sequence[Turn], images: Sequence[torch.Tensor]) -> dict[str, Any]:
        if turns[0].image is None:
            raise DataError("OpenFlamingo answers about an image: attach one first (/image PATH in the terminal, "
                            "the upload box on the web page)")
        chunks, shown, previous = [], [], object()
        for i, turn in enumerate(turns):
            new_image = turn.image != previous
            previous = turn.image
            if new_image:
                shown.append(images[turn.image])
            template = self.template if new_image else self.untagged
            values = {name: turn.question for name in template.fields}  # every free field holds the user's text
            query = template.query(values)
            chunks.append(query if i == len(turns) - 1 else query + template.target(turn.answer, values))
        return {"id": "chat", "images": shown, "prompt": "".join(chunks), "target": ""}

    def n_tokens(self, sample: Mapping[str, Any]) -> int:
        return len(self.tokenizer(sample["prompt"], add_special_tokens=True)["input_ids"])

    def describe(self) -> str:
        return (f"OpenFlamingo, chunk template {self.template.template!r}; earlier turns are in-context chunks; "
                f"at most {self.max_tokens} tokens")


def fit_history(fmt: ChatFormat, turns: Sequence[Turn], images: Sequence[torch.Tensor],
                reply_tokens: int) -> tuple[dict[str, Any], int]:
    """The sample of the most recent turns that fits ``fmt.max_tokens`` with ``reply_tokens`` to spare, and how many
    of the oldest turns were left out. A question that does not fit even alone is a DataError."""
    for dropped in range(len(turns)):
        kept = list(turns[dropped:])
        if fmt.needs_image and kept[0].image is None:
            continue  # a kept turn that asks about an image the cut removed is no turn to keep first
        sample = fmt.sample(kept, images)
        used = fmt.n_tokens(sample)
        if used + reply_tokens <= fmt.max_tokens:
            return sample, dropped
    sample = fmt.sample(turns[-1:], images)
    raise DataError(f"the question takes {fmt.n_tokens(sample)} tokens and the reply up to {reply_tokens}, but the "
                    f"model takes at most {fmt.max_tokens}; shorten the question or lower max_new_tokens")
