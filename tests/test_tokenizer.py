"""The one tokenizer stack (vlmkit/models/tokenizer.py) against sentencepiece, the tokenizer LLaMA and LaVIN's reference
code use directly."""
from __future__ import annotations

import pickle
import random

import pytest
import sentencepiece as spm

from vlmkit.data.synthetic.scienceqa import write_synthetic_scienceqa
from vlmkit.errors import VlmkitError
from vlmkit.models.llama import load_llama_tokenizer
from vlmkit.models.tokenizer import load_tokenizer

EDGE_CASES = [" The answer is A.", "  two  spaces", " ", "", "a\n\nb", "\nContext: N/A\n", "tab\there ", "  ",
              "Options: (A) cat (B) dog", "end. ", "é ü 中文 ☃", "<s> not a special token </s>"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdeABZ .,?!:()\n\t  é中0123"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def reference(spm_tokenizer_path):
    return spm.SentencePieceProcessor(model_file=str(spm_tokenizer_path))


def test_llama_tokenizer_encodes_and_decodes_exactly_as_sentencepiece(spm_tokenizer_path, reference):
    tok = load_llama_tokenizer(spm_tokenizer_path)
    texts = EDGE_CASES + random_texts(2000)
    assert [tok.encode(t, add_special_tokens=False) for t in texts] == [reference.encode(t) for t in texts]
    assert tok.encode("a b") == [reference.bos_id()] + reference.encode("a b")  # BOS as Meta's encode(bos=True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (reference.bos_id(), reference.eos_id(),
                                                                     reference.vocab_size())
    ids = [reference.encode(t) for t in texts]
    assert [tok.decode(i) for i in ids] == [reference.decode(i) for i in ids]
    again = pickle.loads(pickle.dumps(tok))  # collators travel to DataLoader workers
    for text in (" The answer", "<s> x </s>"):
        assert again.encode(text, add_special_tokens=False) == reference.encode(text)


def test_scienceqa_prompts_tokenize_as_before(tmp_path, spm_tokenizer_path, reference):
    """Every prompt and target the LaVIN collator encodes on the generated ScienceQA gets the ids it had before the
    merge (when the collator called sentencepiece itself)."""
    from vlmkit.registry import DATASETS, load_builtins

    load_builtins()
    write_synthetic_scienceqa(tmp_path, n_train=60, n_val=10, n_test=10, seed=3)
    samples = DATASETS.build_named("scienceqa", {"root": str(tmp_path)}).build("train", train=True)
    tok = load_llama_tokenizer(spm_tokenizer_path)
    texts = [samples[i][k] for i in range(len(samples)) for k in ("prompt", "target")]
    assert len(texts) == 120
    assert [tok.encode(t, add_special_tokens=False) for t in texts] == [reference.encode(t) for t in texts]


def test_the_default_stack_is_transformers_own_tokenization(spm_tokenizer_path, reference):
    """OpenFlamingo keeps transformers' tokenization (what open-flamingo used); it differs at a leading space only,
    which is why LaVIN asks for the sentencepiece normalisation."""
    plain = load_tokenizer(spm_tokenizer_path)
    assert plain.encode("The answer", add_special_tokens=False) == reference.encode("The answer")
    assert plain.encode(" The answer", add_special_tokens=False) == reference.encode(" The answer")[1:]


def test_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(VlmkitError, match=str(tmp_path / "nowhere" / "tokenizer.model")):
        load_llama_tokenizer(tmp_path / "nowhere" / "tokenizer.model")
