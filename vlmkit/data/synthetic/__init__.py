"""Generated datasets in the official layouts and tiny random-weight checkpoints, for tests and the quickstart.

``write_synthetic_scienceqa`` (ScienceQA layout), ``train_sentencepiece`` (a LLaMA-layout tokenizer) and
``write_tiny_llama`` (tokenizer + random Meta-layout LLaMA trained/sized for a corpus). The COCO/VQAv2 generators live
in ``vlmkit.data.synthetic.coco_vqa``.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlmkit.data.synthetic.scienceqa import scienceqa_corpus, write_synthetic_scienceqa
from vlmkit.data.synthetic.tokenizer import train_sentencepiece

#: A LLaMA small enough to fine-tune on a CPU in minutes; vocab_size -1 = the tokenizer's size (Meta's convention).
QUICKSTART_LLAMA_PARAMS: Mapping[str, Any] = {
    "dim": 128, "n_layers": 4, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": -1}
TINY_LLAMA_SIZE = "tiny"
#: Fixed words that models add around prompts (LaVIN's image slot), so the tokenizer has pieces for them.
MODEL_TEXTS = ("Image: N/A", "Image:")


def write_tiny_llama(weights_root: Path, texts: Iterable[str], seed: int = 0, vocab_size: int = 512,
                     params: Mapping[str, Any] = QUICKSTART_LLAMA_PARAMS, size_name: str = TINY_LLAMA_SIZE) -> Path:
    """Train a tokenizer on ``texts`` and write ``<weights_root>/tokenizer.model`` plus a random LLaMA under
    ``<weights_root>/<size_name>/`` (params.json, consolidated.00.pth). Returns ``weights_root``."""
    from vlmkit.models.tiny import write_meta_checkpoint

    weights_root = Path(weights_root)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_sentencepiece([*texts, *MODEL_TEXTS], Path(tmp) / "tokenizer.model", vocab_size)
        write_meta_checkpoint(weights_root, size_name, dict(params), tokenizer, seed, n_shards=1)  # copies it
    return weights_root


__all__ = ["write_synthetic_scienceqa", "scienceqa_corpus", "train_sentencepiece", "write_tiny_llama",
           "QUICKSTART_LLAMA_PARAMS", "TINY_LLAMA_SIZE"]
