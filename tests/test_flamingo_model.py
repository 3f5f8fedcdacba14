"""OpenFlamingo at tiny size (fp32, CPU): architecture, media masking, generation, trainable set, checkpoint interop."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vlmkit.errors import CheckpointError, ConfigError, DataError
from vlmkit.models.flamingo import (OpenFlamingo, load_openflamingo_checkpoint, load_openflamingo_state_dict,
                                    openflamingo_state_dict, save_openflamingo_checkpoint)
from vlmkit.models import hf_compat
from vlmkit.models.flamingo.model import _MediaForGeneration
from vlmkit.models.clip import clip_patch_tokens
from vlmkit.models.flamingo.modules import GatedCrossAttentionBlock, MediaContext, media_text_time
from vlmkit.registry import MODELS

TINY_LM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 4, "tie_word_embeddings": False}
TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0,
               "quick_gelu": True}
SMALL_BLOCKS = {"perceiver": {"depth": 2, "heads": 2, "dim_head": 16, "num_latents": 8},
                "cross_attn": {"every_n_layers": 2, "heads": 2, "dim_head": 16}}


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA saved as a Hugging Face directory (vocabulary of the conftest tokenizer: 512)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=512, **TINY_LM)).save_pretrained(str(path))
    return path


def tiny_config(tokenizer: Path, lm_dir: Path | None = None, **changes: object) -> dict:
    """A tiny model config; a mapping in ``changes`` updates that section, anything else sets the key."""
    lm = {"path": str(lm_dir)} if lm_dir else {"tiny": TINY_LM}
    cfg = {"arch": "openflamingo", "lm": {**lm, "tokenizer": str(tokenizer)},
           "vision": {"tiny": TINY_VISION, "weights": None}, **copy.deepcopy(SMALL_BLOCKS)}
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def randomize_trainable(model: OpenFlamingo, seed: int = 0) -> None:
    """As if trained: gates open, every trainable tensor moved, so the cross-attention shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_gate"):
                param.fill_(1.0)
            elif param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def model(spm_tokenizer_path: Path) -> OpenFlamingo:
    model = MODELS.build(tiny_config(spm_tokenizer_path)).eval()
    randomize_trainable(model)
    return model


def images(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 32, 32, generator=gen) for _ in range(n)]


def eval_batch(model: OpenFlamingo, samples: list[tuple[str, list[torch.Tensor]]]) -> dict:
    return model.collator(train=False)([{"id": str(i), "prompt": p, "images": im, "target": ""}
                                        for i, (p, im) in enumerate(samples)])


TWO_IMAGE_PROMPT = "a photo of<image>output: a red circle<|endofchunk|><image>output: a blue"


def logits(model: OpenFlamingo, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)["logits"]


def test_cross_attention_before_every_nth_layer(spm_tokenizer_path: Path) -> None:
    for every, expected in ((1, [0, 1, 2, 3]), (2, [1, 3]), (4, [3])):
        m = MODELS.build(tiny_config(spm_tokenizer_path, cross_attn={"every_n_layers": every}))
        placed = [i for i, layer in enumerate(m.lang_encoder.model.layers) if layer.gated_cross_attn_layer is not None]
        assert placed == expected
        assert sum(isinstance(x, GatedCrossAttentionBlock) for x in m.modules()) == len(expected)


def test_zero_gates_give_the_bare_language_model(spm_tokenizer_path: Path, lm_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    m = MODELS.build(tiny_config(spm_tokenizer_path, lm_dir)).eval()
    bare = LlamaForCausalLM.from_pretrained(str(lm_dir)).eval()
    bare.resize_token_embeddings(m.tokens.base_vocab + m.tokens.n_new)
    with torch.no_grad():  # give the bare LM the rows of the added tokens
        bare.get_input_embeddings().weight.copy_(m.lang_encoder.get_input_embeddings().full_weight())
        bare.lm_head.weight.copy_(m.lang_encoder.lm_head.weight)
    batch = eval_batch(m, [(TWO_IMAGE_PROMPT, images(2))])
    with torch.no_grad():
        expected = bare(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(logits(m, batch), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.lang_encoder.model.layers[1].gated_cross_attn_layer.attn_gate.fill_(1.0)
    assert not torch.allclose(logits(m, batch), expected, atol=1e-4)  # an open gate lets the images in


def test_text_attends_only_to_its_own_image(model: OpenFlamingo) -> None:
    a, b, c = images(3)
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, [a, b])])
    text_time = media_text_time(batch["input_ids"], model.media_token_id)[0]
    base = logits(model, batch)[0]
    batch["images"][0, 1, 0] = c  # change image 2
    changed = logits(model, batch)[0]
    torch.testing.assert_close(changed[text_time <= 1], base[text_time <= 1], rtol=0, atol=0)
    assert not torch.allclose(changed[text_time == 2], base[text_time == 2], atol=1e-4)
    batch["images"][0, 0, 0] = c  # change image 1 too: text before the first image still sees nothing
    torch.testing.assert_close(logits(model, batch)[0][text_time == 0], base[text_time == 0], rtol=0, atol=0)
    assert not torch.allclose(logits(model, batch)[0][text_time == 1], base[text_time == 1], atol=1e-4)


def test_cross_attention_mask_per_image(model: OpenFlamingo) -> None:
    """At the block itself (the decoder's self-attention mixes images into later text, so logits cannot show it)."""
    attn = model.lang_encoder.model.layers[1].gated_cross_attn_layer.attn
    gen = torch.Generator().manual_seed(3)
    x, media = torch.randn(1, 6, 64, generator=gen), torch.randn(1, 2, 8, 64, generator=gen)
    text_time = torch.tensor([[0, 1, 1, 2, 2, 2]])
    other = media.clone()
    other[:, 0] += 1.0  # change image 1
    with torch.no_grad():
        base, changed = attn(x, media, text_time), attn(x, other, text_time)
    assert torch.equal(base[0, 0], torch.zeros(64))  # no image yet: no output
    assert torch.equal(base[0, 3:], changed[0, 3:])  # the text of image 2 does not see image 1
    assert not torch.allclose(base[0, 1:3], changed[0, 1:3])


def test_attend_to_all_previous_images_mode(spm_tokenizer_path: Path) -> None:
    cfg = tiny_config(spm_tokenizer_path, cross_attn={"only_attend_immediate_media": False})
    m = MODELS.build(cfg).eval()
    randomize_trainable(m)
    a, b, c = images(3)
    batch = eval_batch(m, [(TWO_IMAGE_PROMPT, [a, b])])
    text_time = media_text_time(batch["input_ids"], m.media_token_id)[0]
    base = logits(m, batch)[0]
    batch["images"][0, 0, 0] = c  # image 1 now reaches the text of image 2, but never the text before any image
    changed = logits(m, batch)[0]
    assert not torch.allclose(changed[text_time == 2], base[text_time == 2], atol=1e-4)
    torch.testing.assert_close(changed[text_time == 0], base[text_time == 0], rtol=0, atol=0)


def cache_keyword(module: torch.nn.Module) -> str:
    """The name under which this transformers release's forward takes the KV cache (``cache`` from 5.2x)."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def test_cached_decoding_step_sees_the_last_image(model: OpenFlamingo) -> None:
    """One KV-cached step through the generation hook equals a full forward over prompt + token (v1 lost the image)."""
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, images(2)), ("<image>output:", images(1, seed=5))])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    media = model.encode_images(batch["images"], batch["image_mask"])
    hook = model.lang_encoder.register_forward_pre_hook(
        _MediaForGeneration(media, ids, model.media_token_id), with_kwargs=True)
    try:
        with torch.no_grad():
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            prefill = model.lang_encoder(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
            token = prefill.logits[:, -1].argmax(-1, keepdim=True)
            cache = hf_compat.find_cache((), dict(prefill))  # the output's cache, whatever this release names it
            step = model.lang_encoder(input_ids=token, attention_mask=torch.cat([mask, torch.ones_like(token)], 1),
                                      position_ids=position_ids[:, -1:] + 1, use_cache=True,
                                      **{cache_keyword(model.lang_encoder): cache}).logits[:, -1]
    finally:
        hook.remove()
    full = logits(model, {**batch, "input_ids": torch.cat([ids, token], 1),
                          "attention_mask": torch.cat([mask, torch.ones_like(token)], 1)})[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
    # What dropping the image for the new token (open-flamingo v1's bug) would give is measurably different:
    blind_time = torch.cat([media_text_time(ids, model.media_token_id), torch.zeros_like(token)], 1)
    with torch.no_grad():
        blind = model.lang_encoder(input_ids=torch.cat([ids, token], 1),
                                   media=MediaContext(media, blind_time)).logits[:, -1]
    assert not torch.allclose(blind, full, atol=1e-4)


def test_greedy_generate_equals_uncached_argmax_loop(model: OpenFlamingo) -> None:
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, images(2)), ("<image>output:", images(1, seed=5))])
    generated = model.generate_ids(batch, max_new_tokens=6, num_beams=1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(6):
        step = logits(model, {**batch, "input_ids": ids, "attention_mask": mask})[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, step], 1), torch.cat([mask, torch.ones_like(step)], 1)
    expected = ids[:, batch["input_ids"].shape[1]:]
    for row, want in zip(generated, expected):  # generation stops at <|endofchunk|> and pads after it
        stop = (want == model.eoc_token_id).nonzero()
        n = int(stop[0]) + 1 if len(stop) else len(want)
        assert torch.equal(row[:n], want[:n])


def test_beam_search_is_batch_independent(model: OpenFlamingo) -> None:
    samples = [(TWO_IMAGE_PROMPT, images(2)), ("question: what color? short answer: red<|endofchunk|><image>output:",
                                               images(1, seed=5))]
    together = model.generate(eval_batch(model, samples), max_new_tokens=5, num_beams=3, length_penalty=0.0)
    alone = [model.generate(eval_batch(model, [s]), max_new_tokens=5, num_beams=3, length_penalty=0.0)[0]
             for s in samples]
    assert together == alone and all(isinstance(t, str) for t in together)


def test_only_new_token_rows_perceiver_and_cross_attention_train(spm_tokenizer_path: Path) -> None:
    m = MODELS.build(tiny_config(spm_tokenizer_path)).train()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in m.named_parameters() if n.startswith("perceiver.")
                         or ".gated_cross_attn_layer." in n or n.endswith("embed_tokens.new_weight")}
    randomize_trainable(m)  # open gates: with closed ones only the gates themselves get gradient
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    embeddings_before = m.lang_encoder.get_input_embeddings().full_weight().detach().clone()
    batch = m.collator(train=True)([{"id": "a", "images": images(1), "prompt": "<image>output:", "target": "a dog"}])
    optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    m(batch)["loss"].backward()
    optimizer.step()
    for name, param in m.named_parameters():
        assert torch.equal(param, before[name]) != (name in trainable), name
    embeddings = m.lang_encoder.get_input_embeddings().full_weight()
    rows_changed = (embeddings != embeddings_before).any(-1).nonzero().flatten()
    assert set(rows_changed.tolist()) <= set(range(m.tokens.base_vocab, m.tokens.base_vocab + m.tokens.n_new))
    assert {m.eoc_token_id, m.media_token_id} <= set(rows_changed.tolist())


def test_collator_labels_padding_and_images(model: OpenFlamingo) -> None:
    samples = [{"id": "a", "images": images(2), "prompt": TWO_IMAGE_PROMPT, "target": "square"},
               {"id": "b", "images": images(1), "prompt": "<image>output:", "target": "a dog"}]
    train = model.collator(train=True)(samples)
    assert train["images"].shape == (2, 2, 1, 3, 32, 32)
    assert train["image_mask"].tolist() == [[True, True], [True, False]]
    assert train["attention_mask"][1, -1] == 0 and train["attention_mask"][1, 0] == 1  # right padding
    labelled = train["labels"][1][train["labels"][1] != -100]
    assert model.tokenizer.decode(labelled[:-1]).strip() == "a dog" and labelled[-1] == model.eoc_token_id
    assert train["ids"] == ["a", "b"] and not train["images"][1, 1].any()
    evaluation = model.collator(train=False)(samples)
    assert "labels" not in evaluation and evaluation["attention_mask"][1, 0] == 0  # left padding, prompt only
    assert evaluation["input_ids"].shape[1] < train["input_ids"].shape[1]


def test_refuses_training_samples_without_image_token(model: OpenFlamingo) -> None:
    sample = {"id": "coco-42", "images": images(1), "prompt": "output:", "target": "a dog"}
    with pytest.raises(DataError, match="training sample coco-42 has no <image> token: the model would never see"):
        model.collator(train=True)([sample])
    with pytest.raises(DataError, match="1 images"):  # at evaluation a missing tag is still a mismatch
        model.collator(train=False)([sample])
    text_only = {"id": "q", "images": [], "prompt": "question: which animal? short answer:", "target": ""}
    assert model.collator(train=False)([text_only])["images"].shape == (1, 0, 1, 3, 32, 32)


def test_checkpoint_round_trip_in_openflamingo_layout(model: OpenFlamingo, spm_tokenizer_path: Path,
                                                     tmp_path: Path) -> None:
    state = openflamingo_state_dict(model)
    embed = "lang_encoder.model.embed_tokens.weight"
    assert state[embed].shape == (model.tokens.base_vocab + model.tokens.n_new, 64)
    assert {k.split(".gated_cross_attn_layer.")[0] for k in state if ".gated_cross_attn_layer." in k} == {
        "lang_encoder.model.layers.1", "lang_encoder.model.layers.3"}
    assert all(k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k == embed for k in state)
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, images(2))])
    for name in ("checkpoint.pt", "checkpoint.safetensors"):
        fresh = MODELS.build(tiny_config(spm_tokenizer_path)).eval()
        report = load_openflamingo_checkpoint(fresh, save_openflamingo_checkpoint(model, tmp_path / name))
        assert report.missing == [] and report.unexpected == []
        frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
        assert set(report.frozen_absent) == frozen - set(report.loaded)  # what the file lacks is frozen
        assert frozen - set(report.loaded) == frozen - {embed}  # (the frozen rows of embed_tokens come with it)
        torch.testing.assert_close(logits(fresh, batch), logits(model, batch), rtol=0, atol=0)
    fresh = MODELS.build(tiny_config(spm_tokenizer_path)).eval()  # vlmkit's own layout
    fresh.load_trainable_state_dict(model.trainable_state_dict())
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), rtol=0, atol=0)


def test_checkpoint_module_prefix_and_v1_duplicates(model: OpenFlamingo, spm_tokenizer_path: Path) -> None:
    state = openflamingo_state_dict(model)
    v1 = {f"module.{k}": v for k, v in state.items()}
    for k, v in state.items():  # v1 repeats every cross-attention block under lang_encoder.gated_cross_attn_layers
        if ".gated_cross_attn_layer." in k:
            index, rest = k.removeprefix("lang_encoder.model.layers.").split(".gated_cross_attn_layer.")
            v1[f"module.lang_encoder.gated_cross_attn_layers.{index}.{rest}"] = v.clone()
    fresh = MODELS.build(tiny_config(spm_tokenizer_path)).eval()
    assert load_openflamingo_state_dict(fresh, v1).missing == []
    only_v1 = {k: v for k, v in v1.items() if ".model.layers." not in k}  # the duplicates alone are enough
    fresh = MODELS.build(tiny_config(spm_tokenizer_path)).eval()
    load_openflamingo_state_dict(fresh, only_v1)
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, images(2))])
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), rtol=0, atol=0)
    key = next(k for k in v1 if k.startswith("module.lang_encoder.gated_cross_attn_layers."))
    with pytest.raises(CheckpointError, match="two different values"):
        load_openflamingo_state_dict(fresh, {**v1, key: v1[key] + 1})


def test_checkpoint_errors(model: OpenFlamingo, tmp_path: Path) -> None:
    state = openflamingo_state_dict(model)
    with pytest.raises(CheckpointError, match="lacks 1 trainable tensors.*perceiver.latents"):
        load_openflamingo_state_dict(model, {k: v for k, v in state.items() if k != "perceiver.latents"})
    partial = load_openflamingo_state_dict(copy.deepcopy(model), {"perceiver.latents": state["perceiver.latents"]},
                                           strict=False)
    assert "perceiver.norm.weight" in partial.missing
    with pytest.raises(CheckpointError, match=r"'perceiver.latents' has shape \(9, 64\).*\(8, 64\): a checkpoint of "
                                              "another shape"):
        load_openflamingo_state_dict(model, {**state, "perceiver.latents": torch.zeros(9, 64)})
    with pytest.raises(CheckpointError, match="does not have.*lang_encoder.model.layers.0.gated_cross_attn_layer"):
        load_openflamingo_state_dict(model, {**state, "lang_encoder.model.layers.0.gated_cross_attn_layer.ff_gate":
                                             torch.zeros(1)})
    with pytest.raises(DataError, match="OpenFlamingo checkpoint not found.*how to obtain"):
        load_openflamingo_checkpoint(model, tmp_path / "nope.pt")


def test_full_reference_style_state_dict_loads_frozen_parts_too(model: OpenFlamingo, spm_tokenizer_path: Path) -> None:
    """A whole open-flamingo model.state_dict(): frozen LM/vision tensors and old_decoder_blocks duplicates included."""
    full = dict(model.state_dict())
    embed = model.lang_encoder.get_input_embeddings()
    full["lang_encoder.model.embed_tokens.weight"] = embed.full_weight().detach()
    del full["lang_encoder.model.embed_tokens.new_weight"]
    for k in [k for k in full if ".decoder_layer." in k]:
        index, rest = k.removeprefix("lang_encoder.model.layers.").split(".decoder_layer.")
        full[f"lang_encoder.old_decoder_blocks.{index}.{rest}"] = full[k]
    other = MODELS.build(tiny_config(spm_tokenizer_path, init_seed=1)).eval()
    with torch.no_grad():
        other.lang_encoder.model.norm.weight.mul_(2)  # a frozen tensor that only the full file restores
    report = load_openflamingo_state_dict(other, full)
    assert report.frozen_absent == []
    batch = eval_batch(model, [(TWO_IMAGE_PROMPT, images(2))])
    torch.testing.assert_close(logits(other, batch), logits(model, batch), rtol=0, atol=0)


def test_vision_tap_is_pre_ln_post(model: OpenFlamingo) -> None:
    visual = copy.deepcopy(model.vision_encoder)
    with torch.no_grad():
        visual.ln_post.weight.fill_(3.0)
    x = torch.stack(images(2))
    tokens = clip_patch_tokens(visual, x)
    assert tokens.shape == (2, 16, 64)
    blocks = visual.forward_intermediates(x, indices=1, normalize_intermediates=False, intermediates_only=True,
                                          output_fmt="NLC")["image_intermediates"][-1]
    torch.testing.assert_close(tokens, blocks)
    visual.output_tokens = True
    assert not torch.allclose(tokens, visual(x)[1], atol=1e-3)  # open_clip 3.x's own tokens come after ln_post


def test_missing_files_say_how_to_obtain(spm_tokenizer_path: Path, tmp_path: Path) -> None:
    cfg = tiny_config(spm_tokenizer_path)
    cfg["lm"] = {"path": "huggyllama/llama-7b", "tokenizer": str(spm_tokenizer_path)}
    with pytest.raises(DataError, match="language model directory.*not found: huggyllama/llama-7b.*how to obtain"):
        MODELS.build(cfg)
    cfg = tiny_config(spm_tokenizer_path, vision={"weights": str(tmp_path / "clip.safetensors")})
    with pytest.raises(DataError, match="CLIP vision weights not found.*timm/vit_large_patch14_clip_224.openai"):
        MODELS.build(cfg)


def test_lora_and_8bit_language_model_train_one_step(spm_tokenizer_path: Path, lm_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = tiny_config(spm_tokenizer_path, lm_dir, lora={"enabled": True}, lm={"quantization": "8bit"})
    m = MODELS.build(cfg).train()
    lora = {n for n, p in m.named_parameters() if p.requires_grad and ".lora_" in n}
    assert lora and all(".q_proj." in n or ".v_proj." in n for n in lora)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if n in lora}
    batch = m.collator(train=True)([{"id": "a", "images": images(1), "prompt": "<image>output:", "target": "a dog"}])
    optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss = m(batch)["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters() if n in lora)
    with pytest.raises(ConfigError, match="no LoRA"):
        openflamingo_state_dict(m)
    assert m.load_trainable_state_dict(m.trainable_state_dict()).missing == []


def test_gradient_checkpointing_gives_the_same_gradients(spm_tokenizer_path: Path) -> None:
    grads = []
    for enabled in (False, True):
        m = MODELS.build(tiny_config(spm_tokenizer_path, gradient_checkpointing=enabled))
        assert all(layer.gradient_checkpointing == enabled for layer in m.flamingo_layers())
        randomize_trainable(m)
        m.train()
        batch = m.collator(train=True)([{"id": "a", "images": images(1), "prompt": "<image>output:", "target": "dog"}])
        m(batch)["loss"].backward()
        grads.append(m.perceiver.latents.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_config_file_defaults_and_fsdp_classes(spm_tokenizer_path: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from vlmkit.config import load_config

    project = tmp_path / "p.yaml"
    project.write_text(OmegaConf.to_yaml({"model": tiny_config(spm_tokenizer_path), "run": {"task": None}}))
    cfg = load_config(project, ["model.cross_attn.every_n_layers=4"])
    assert cfg.model.perceiver.ff_mult == 4 and cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    m = MODELS.build(cfg.model, device="cpu")
    assert sum(layer.gated_cross_attn_layer is not None for layer in m.flamingo_layers()) == 1
    assert GatedCrossAttentionBlock in m.fsdp_wrap_classes()
    with pytest.raises(ConfigError, match="unknown config key 'model.cross_attn.every_n'"):
        load_config(project, ["model.cross_attn.every_n=4"])
