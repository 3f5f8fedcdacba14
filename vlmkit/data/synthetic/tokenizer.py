"""Train a small sentencepiece tokenizer with LLaMA's layout, for tiny random-weight checkpoints."""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

# LLaMA's special-token ids: <unk> 0, <s> 1, </s> 2, and no padding token.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1
#: byte_fallback adds one piece per byte value, so any text encodes (as bytes where no piece fits).
N_BYTE_PIECES = 256
N_SPECIAL = 3


def _lines(texts: Iterable[str]) -> Iterator[str]:
    # sentencepiece trains on single lines; a newline inside a text is encoded as a byte piece at run time.
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_sentencepiece(texts: Iterable[str], out_path: Path, vocab_size: int = 512) -> Path:
    """Train a BPE model on ``texts`` and write it to ``out_path`` (a ``tokenizer.model``).

    Every character of the corpus gets a piece; other text falls back to bytes. When the corpus is too small for
    ``vocab_size`` pieces, the vocabulary is smaller (the model's ``vocab_size: -1`` follows the tokenizer).
    """
    import sentencepiece as spm

    lines = list(_lines(texts))
    if not lines:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    n_chars = len(set("".join(lines)))
    minimum = N_BYTE_PIECES + N_SPECIAL + n_chars + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: {N_BYTE_PIECES} byte pieces, {N_SPECIAL} special "
                         f"tokens and {n_chars} characters need at least {minimum}")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, byte_fallback=True, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2,
        # As LLaMA's tokenizer: no text normalisation (the default NFKC one turns "\n" into a space and would erase
        # the prompt's line structure), whitespace kept as is, digits split.
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(buf.getvalue())
    return out_path
