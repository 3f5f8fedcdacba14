"""KV-cached generation equals generation without a cache, on a model where the image a token attends to decides the
argmax — so a decoding step placed on the wrong image (or on none) cannot go unnoticed.

The uncached references are written here, independent of ``_MediaForGeneration``: greedy is a plain argmax loop over
full forward passes; beam search is transformers' own beam search with ``use_cache=False``, each call carrying the whole
sequence and its media placed by the definition (prompt tokens: cumsum of ``<image>``; generated tokens: the prompt's
last image). Prompts cover 1–9 images, text before the first image and text-only demos (zero-shot style).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_flamingo_model import eval_batch, images, randomize_trainable, tiny_config

from vlmkit.models.flamingo import OpenFlamingo
from vlmkit.models.flamingo.model import _MediaForGeneration
from vlmkit.models.flamingo.modules import MediaContext, media_text_time
from vlmkit.registry import MODELS

# Larger than the unit-test model, so that cross-attention to one image or another moves the argmax of most rows.
MEDIUM_LM = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 8, "tie_word_embeddings": False}
MAX_NEW = 8


def vqa_demo(i: int) -> str:
    return f"<image>Question: what color is the shape {i}? Short answer: red<|endofchunk|>"


PROMPTS = [
    ("<image>Question: what color? Short answer:", 1),
    ("a photo of<image>Output: a red circle<|endofchunk|><image>Output:", 2),  # text before the first image
    ("Question: which shape? Short answer: circle<|endofchunk|>Question: what color? Short answer: blue<|endofchunk|>"
     "<image>Question: what shape is shown? Short answer:", 1),  # zero-shot: two text-only demos
    ("".join(vqa_demo(i) for i in range(4)) + "<image>Question: which color? Short answer:", 5),  # 4-shot
    ("".join(vqa_demo(i) for i in range(8)) + "<image>Question: which shape? Short answer:", 9),  # 8-shot
    ("<image>Output: a dog<|endofchunk|><image>Output: a cat on table<|endofchunk|><image>Output:", 3),
]


@pytest.fixture(scope="module")
def model(spm_tokenizer_path: Path) -> OpenFlamingo:
    cfg = tiny_config(spm_tokenizer_path, lm={"tiny": MEDIUM_LM}, cross_attn={"every_n_layers": 1})
    m = MODELS.build(cfg).eval()
    randomize_trainable(m, seed=3)
    return m


@pytest.fixture(scope="module")
def batch(model: OpenFlamingo) -> dict:
    return eval_batch(model, [(prompt, images(n, seed=10 + i)) for i, (prompt, n) in enumerate(PROMPTS)])


def cut_at_end(model: OpenFlamingo, rows: torch.Tensor) -> list[list[int]]:
    """Each row up to and including the first <|endofchunk|> (what generate keeps; it pads after it)."""
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(model.eoc_token_id) + 1] if model.eoc_token_id in row else row)
    return out


def greedy_by_full_forward(model: OpenFlamingo, batch: dict) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(MAX_NEW):
        with torch.no_grad():
            step = model({**batch, "input_ids": ids, "attention_mask": mask})["logits"][:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, step], 1), torch.cat([mask, torch.ones_like(step)], 1)
    return ids[:, batch["input_ids"].shape[1]:]


def beams_without_cache(model: OpenFlamingo, batch: dict, num_beams: int) -> torch.Tensor:
    """transformers' beam search, no KV cache: every call sees the whole sequence; media placed by definition."""
    from transformers import GenerationConfig

    media = model.encode_images(batch["images"], batch["image_mask"]).repeat_interleave(num_beams, 0)
    prompt_len = batch["input_ids"].shape[1]
    prompt_time = media_text_time(batch["input_ids"], model.media_token_id).repeat_interleave(num_beams, 0)

    def full_sequence_media(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        n = kwargs["input_ids"].shape[1]
        assert n >= prompt_len  # no cache: the whole sequence every time
        later = prompt_time[:, -1:].expand(-1, n - prompt_len)
        kwargs["media"] = MediaContext(media, torch.cat([prompt_time, later], 1))
        return args, kwargs

    config = GenerationConfig(max_new_tokens=MAX_NEW, num_beams=num_beams, do_sample=False, length_penalty=0.0,
                              eos_token_id=model.eoc_token_id, pad_token_id=model.pad_token_id, use_cache=False)
    handle = model.lang_encoder.register_forward_pre_hook(full_sequence_media, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model.lang_encoder.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                              generation_config=config)
    finally:
        handle.remove()
    return out[:, prompt_len:]


def test_greedy_cached_equals_full_forward_loop(model: OpenFlamingo, batch: dict) -> None:
    cached = model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1)
    assert cut_at_end(model, cached) == cut_at_end(model, greedy_by_full_forward(model, batch))


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_cached_equals_uncached(model: OpenFlamingo, batch: dict, num_beams: int) -> None:
    cached = model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=num_beams, length_penalty=0.0)
    assert cut_at_end(model, cached) == cut_at_end(model, beams_without_cache(model, batch, num_beams))


def test_wrong_image_for_decoding_steps_changes_the_output(model: OpenFlamingo, batch: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is sensitive enough: decoding steps that attend to no image or to the first one (old bugs) differ."""
    right = cut_at_end(model, model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1))
    placed = _MediaForGeneration.text_time
    for wrong in (0, 1):  # 0: no image (v1's bug, and a hook that misses the cache); 1: the first image
        def misplaced(self: _MediaForGeneration, start: int, input_ids: torch.Tensor, wrong: int = wrong) -> torch.Tensor:
            time = placed(self, start, input_ids)
            return time if start == 0 else torch.full_like(time, wrong)

        monkeypatch.setattr(_MediaForGeneration, "text_time", misplaced)
        got = cut_at_end(model, model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=1))
        differing = sum(a != b for a, b in zip(got, right))
        multi_image_rows = sum(n > 1 for _, n in PROMPTS)
        assert differing >= (multi_image_rows if wrong == 1 else len(PROMPTS)) - 1, (wrong, differing)
    monkeypatch.undo()


def test_a_step_that_cannot_be_placed_is_an_error(model: OpenFlamingo, batch: dict) -> None:
    ids = batch["input_ids"]
    media = model.encode_images(batch["images"], batch["image_mask"])
    hook = _MediaForGeneration(media, ids, model.media_token_id)
    _, kwargs = hook(model.lang_encoder, (), {"input_ids": ids})  # the prompt pass
    assert torch.equal(kwargs["media"].text_time, media_text_time(ids, model.media_token_id))
    from transformers import DynamicCache

    cache = DynamicCache(config=model.lang_encoder.config)  # empty, but the hook has fed the whole prompt
    with pytest.raises(RuntimeError, match="KV cache holds 0 positions but .* were fed"):
        hook(model.lang_encoder, (), {"input_ids": ids[:, -1:], "cache": cache})
    fresh = _MediaForGeneration(media, ids, model.media_token_id)
    with pytest.raises(RuntimeError, match="does not match the prompt's tokens"):
        fresh(model.lang_encoder, (), {"input_ids": ids.flip(1)})
    with pytest.raises(RuntimeError, match="rows"):
        fresh(model.lang_encoder, (), {"input_ids": ids[:2]})
    with pytest.raises(RuntimeError, match="without input_ids"):
        fresh(model.lang_encoder, (), {"inputs_embeds": torch.zeros(1, 2, 3)})


def lm_call_shapes(model: OpenFlamingo, run) -> list[tuple[int, int]]:
    """(rows, tokens) of every language-model call ``run()`` makes."""
    shapes: list[tuple[int, int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    handle = model.lang_encoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize("num_beams", [2, 3])
def test_shared_prefill_runs_each_prompt_once_and_changes_no_beam(model: OpenFlamingo, batch: dict,
                                                                  num_beams: int) -> None:
    """The prompt goes through the LM once per query (not per beam); the beams' outputs are those of beam search
    that prefills every beam (and equal the uncached reference above)."""
    rows, length = batch["input_ids"].shape
    out: dict[bool, torch.Tensor] = {}
    for shared in (True, False):
        shapes = lm_call_shapes(model, lambda shared=shared: out.__setitem__(shared, model.generate_ids(
            batch, max_new_tokens=MAX_NEW, num_beams=num_beams, length_penalty=0.0, share_prefill=shared)))
        if shared:
            assert shapes[0] == (rows, length - 1)  # the prefill: one row per prompt
            assert shapes[1] == (rows * num_beams, 1)  # then the last prompt token, per beam
        else:
            assert shapes[0] == (rows * num_beams, length)
        assert all(s == (rows * num_beams, 1) for s in shapes[2 if shared else 1:])
    assert torch.equal(out[True], out[False])
    assert cut_at_end(model, out[True]) == cut_at_end(model, beams_without_cache(model, batch, num_beams))


def test_greedy_makes_no_prefill_call(model: OpenFlamingo, batch: dict) -> None:
    shapes = lm_call_shapes(model, lambda: model.generate_ids(batch, max_new_tokens=3, num_beams=1))
    assert shapes[0] == tuple(batch["input_ids"].shape)


def test_media_keys_values_once_per_generate_call(model: OpenFlamingo, batch: dict) -> None:
    """Each cross-attention layer projects the media to keys/values once per generate call, not once per step."""
    from vlmkit.models.flamingo.modules import MaskedCrossAttention

    layers = [m for m in model.modules() if isinstance(m, MaskedCrossAttention)]
    calls = {id(m): 0 for m in layers}
    handles = [m.to_kv.register_forward_hook(lambda mod, a, o, key=id(m): calls.__setitem__(key, calls[key] + 1))
               for m in layers]
    try:
        steps = len(lm_call_shapes(model, lambda: model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=3)))
    finally:
        for h in handles:
            h.remove()
    assert steps > 2 and set(calls.values()) == {1}


def test_precomputed_media_replace_the_images(model: OpenFlamingo, batch: dict) -> None:
    media = model.encode_images(batch["images"], batch["image_mask"])
    without_images = {k: v for k, v in batch.items() if k not in ("images", "image_mask")}
    for beams in (1, 3):
        assert torch.equal(model.generate_ids({**without_images, "media": media}, max_new_tokens=MAX_NEW,
                                              num_beams=beams),
                           model.generate_ids(batch, max_new_tokens=MAX_NEW, num_beams=beams))
    with pytest.raises(ValueError, match="vision cache"):
        model.generate_ids({**without_images, "images_deferred": True}, max_new_tokens=2)
