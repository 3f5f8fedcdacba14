"""The one tokenizer stack: every model's tokenizer is a transformers tokenizer loaded here from local files.

Two ways of reading LLaMA's ``tokenizer.model`` are needed, both through the same class:

- ``match_sentencepiece=True`` (LaVIN): ids identical to sentencepiece's own ``encode`` — what Meta's LLaMA code and
  LaVIN's reference trained on. transformers' LLaMA tokenizer differs from sentencepiece only at a leading space
  (" The" is ``▁The`` there, ``▁ ▁The`` in sentencepiece); the sentencepiece normalisation (prepend ``▁``, spaces to
  ``▁``) is set on the backend instead of the Metaspace pre-tokenizer, which makes every string agree
  (tests/test_tokenizer.py checks thousands of strings), and special-token strings inside a text ("<s>") stay text, as
  sentencepiece reads them.
- default (OpenFlamingo): transformers' own LLaMA tokenization, as open-flamingo uses it; ``legacy`` selects the
  marker after special tokens (see :func:`load_tokenizer`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkit.errors import ConfigError, missing_file

SPIECE_SPACE = "▁"


def load_tokenizer(path: str | Path, legacy: bool | None = None, match_sentencepiece: bool = False,
                   how_to_obtain: str = "") -> Any:
    """A tokenizer from a directory (tokenizer_config.json / tokenizer.json / tokenizer.model) or a ``tokenizer.model``.

    A bare sentencepiece model is read as LLaMA's tokenizer, which prepends BOS. ``legacy`` (None: the directory's
    setting) selects sentencepiece's legacy mode: a word-start marker after special tokens ("<image>Output" →
    "<image> ▁Output"), the tokenisation the released OpenFlamingo-LLaMA weights saw under transformers ≤ 4.3x.
    ``match_sentencepiece``: encode exactly as sentencepiece does (module docstring). Nothing is fetched from a hub.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    path = Path(path)
    options: dict[str, Any] = {} if legacy is None else {"legacy": legacy}
    if path.is_dir() and any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False, **options)
    else:
        spm_file = path / "tokenizer.model" if path.is_dir() else path
        if not spm_file.is_file():
            raise missing_file(spm_file, "tokenizer (directory with tokenizer_config.json, or tokenizer.model)",
                               how_to_obtain)
        tokenizer = LlamaTokenizer.from_pretrained(str(spm_file), add_bos_token=True, **options)
    if match_sentencepiece:
        _normalise_like_sentencepiece(tokenizer)
    return tokenizer


def _normalise_like_sentencepiece(tokenizer: Any) -> None:
    from tokenizers import normalizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no tokenizers backend; LaVIN needs LLaMA's tokenizer.model "
                          "(or a directory whose tokenizer.json transformers reads as a fast tokenizer)")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_SPACE), normalizers.Replace(" ", SPIECE_SPACE)])
    backend.pre_tokenizer = None
    tokenizer.split_special_tokens = True  # "<s>" in a text is text to sentencepiece, not the BOS token
