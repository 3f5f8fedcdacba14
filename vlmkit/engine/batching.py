"""Evaluation batches grouped by prompt length.

Left-padded generation pads every prompt of a batch to the longest one: an 8-shot batch whose prompts run from 120 to
170 tokens spends a quarter of its prefill on padding. :class:`LengthGroupedBatches` sorts the items by prompt length
(longest first, so a batch that does not fit in memory fails at once) and cuts the sorted list into batches — the same
batches whatever the number of ranks, so every item's output is too — then deals them out to the ranks in turn.
Predictions are keyed by sample id, so the order of the batches changes no result.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Dataset, Sampler, Subset


def prompt_lengths(dataset: Dataset, tokenizer: Any = None) -> list[int] | None:
    """Each item's prompt length in tokens (characters without a tokenizer), read without loading any image; None
    when the dataset cannot give its prompts (``prompt_text``) that way."""
    base, positions = dataset, None
    if isinstance(dataset, Subset):
        base, positions = dataset.dataset, list(dataset.indices)
    text = getattr(base, "prompt_text", None)
    if text is None:
        return None
    texts = [text(i) for i in (positions if positions is not None else range(len(base)))]  # type: ignore[arg-type]
    if tokenizer is None:
        return [len(t) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


class LengthGroupedBatches(Sampler[list[int]]):
    """This rank's batches (lists of dataset positions) of items of similar length (see the module docstring).

    Every rank gets ``ceil(batches / world_size)`` batches; a rank short of that repeats one of the others' (its
    items are evaluated twice and counted once, as the padding of a DistributedSampler)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        per_rank = math.ceil(len(batches) / world_size) if batches else 0
        mine = batches[rank::world_size]
        while len(mine) < per_rank:
            mine.append(batches[(len(mine) * world_size + rank) % len(batches)])
        self.batches = mine

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
