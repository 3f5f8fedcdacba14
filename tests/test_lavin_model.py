"""LaVIN on transformers' LlamaForCausalLM: trainable set, mask, loss, generation with/without KV cache, checkpoints."""
from __future__ import annotations

import copy
import json
import pickle
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vlmkit.config import defaults_for
from vlmkit.errors import CheckpointError, ConfigError, DataError
from vlmkit.models.lavin import IGNORE_INDEX, LaVIN, NormWithAdapter, attention_bias
from vlmkit.models.tiny import TINY_LLAMA_PARAMS, tiny_lavin_config, write_meta_checkpoint
from vlmkit.registry import MODELS

LLAMA_7B_PARAMS = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06, "vocab_size": -1}


@pytest.fixture(scope="module")
def llama_root(tmp_path_factory, spm_tokenizer_path):
    return write_meta_checkpoint(tmp_path_factory.mktemp("llama"), "tiny", TINY_LLAMA_PARAMS, spm_tokenizer_path, seed=0)


def build(llama_root, **overrides) -> LaVIN:
    return LaVIN.from_config(tiny_lavin_config(llama_root, adapter_dropout=0.0, **overrides))


def trained_looking(model: LaVIN, seed: int = 0) -> LaVIN:
    """Random non-zero adapters (zero-initialised experts would hide routing and image effects)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.adapter_modules():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model(llama_root):
    return trained_looking(build(llama_root))


def samples(size: int = 32) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {"id": "q1", "images": [torch.randn(3, size, size, generator=gen)], "prompt": "what color is the circle",
         "target": "The answer is A."},
        {"id": "q2", "images": [], "prompt": "which animal is shown in the picture of the map", "target": "B"},
        {"id": "q3", "images": [torch.randn(3, size, size, generator=gen)], "prompt": "shape", "target": "C because"},
    ]


def test_7b_config_on_meta_device_has_the_papers_trainable_count(tmp_path, spm_tokenizer_path):
    (tmp_path / "7B").mkdir()
    (tmp_path / "7B" / "params.json").write_text(json.dumps(LLAMA_7B_PARAMS))
    shutil.copyfile(spm_tokenizer_path, tmp_path / "tokenizer.model")
    cfg = OmegaConf.merge(defaults_for("model", "lavin"), {"llama_root": str(tmp_path), "clip_weights": None})
    lavin = MODELS.build(cfg, device="meta")
    assert isinstance(lavin, LaVIN) and lavin.n_image_tokens == 6 and lavin.visual.width == 1024
    assert lavin.num_trainable() == 3_781_296
    assert all(p.dtype == torch.float32 for p in lavin.parameters() if p.requires_grad)
    assert all("adapter" in n for n, p in lavin.named_parameters() if p.requires_grad)


def test_only_adapters_train(llama_root):
    lavin = trained_looking(build(llama_root)).train()  # non-zero experts: every adapter gets a non-zero gradient
    batch = lavin.collator(train=True)(samples())
    lavin(batch)["loss"].backward()
    for name, p in lavin.named_parameters():
        if "adapter" in name:
            assert p.requires_grad and p.grad is not None and p.dtype == torch.float32, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert lavin.visual.adapters[0].conv_B.weight.grad.abs().sum() > 0  # gradient reaches the CLIP adapters
    assert lavin.adapter_modality_embedding.weight.grad.abs().sum() > 0


def test_attention_bias():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]])  # right-padded; left-padded after the modality column
    allowed = attention_bias(mask, torch.float32)[:, 0] == 0
    for b in range(2):
        for i in range(5):
            for j in range(5):
                expect = j == i or (j <= i and j != 0 and mask[b, j] == 1)
                assert bool(allowed[b, i, j]) == expect, (b, i, j)


def test_no_token_attends_to_the_modality_token(model):
    lavin = copy.deepcopy(model)
    batch = lavin.collator(train=True)(samples())
    with torch.no_grad():
        before = lavin.logits(batch)
        for norm in (m for m in lavin.modules() if isinstance(m, NormWithAdapter)):
            norm.adapter.router.weight.zero_()  # routing weights no longer depend on the modality token
        fixed_route = lavin.logits(batch)
        lavin.adapter_modality_embedding.weight.mul_(-3.0).add_(1.0)
        changed = lavin.logits(batch)
    assert torch.allclose(fixed_route[:, 1:], changed[:, 1:], atol=1e-5)  # its value reaches no other position
    assert not torch.allclose(fixed_route[:, 0], changed[:, 0], atol=1e-3)
    assert not torch.allclose(before[:, 1:], fixed_route[:, 1:], atol=1e-3)  # …except through the routers


def test_loss_on_target_tokens_only(model):
    collate = model.collator(train=True)
    batch = collate(samples())
    tok = model.tokenizer
    for row, sample in zip(batch["labels"], samples()):
        scored = row[row != IGNORE_INDEX].tolist()
        assert scored == tok.encode(sample["target"], add_special_tokens=False) + [tok.eos_token_id]
    assert batch["labels"][:, 0].eq(IGNORE_INDEX).all()
    with torch.no_grad():
        loss = model(batch)["loss"]
        logits = model.logits(batch)[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        assert torch.allclose(loss, F.cross_entropy(logits[keep], targets[keep]), atol=1e-5)
        # a different prompt changes the context but the scored tokens stay the answer's
        other = collate([{**s, "prompt": s["prompt"] + " red green"} for s in samples()])
        labels = batch["labels"]
        assert other["labels"][other["labels"] != IGNORE_INDEX].tolist() == labels[labels != IGNORE_INDEX].tolist()


def greedy_by_full_forward(model: LaVIN, batch: dict, steps: int) -> list[int]:
    batch = dict(batch)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model.logits(batch)[0, -1].argmax())
        out.append(nxt)
        if nxt == model.tokenizer.eos_token_id:
            break
        batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([[nxt]])], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
    return out[:-1] if out and out[-1] == model.tokenizer.eos_token_id else out


def test_generate_with_and_without_cache_equals_full_forward_argmax(model):
    for sample in samples()[:2]:  # with and without image
        batch = model.collator(train=False)([sample])
        expected = model.decode(greedy_by_full_forward(model, batch, 10))
        assert model.generate(batch, max_new_tokens=10) == [expected]
        assert model.generate(batch, max_new_tokens=10, use_cache=False) == [expected]
        assert expected  # not an empty continuation


def test_generation_stops_at_eos(model):
    lavin = copy.deepcopy(model)
    batch = lavin.collator(train=False)(samples()[:1])
    ids = greedy_by_full_forward(lavin, batch, 6)
    stop = next(i for i in range(1, 6) if ids[i] not in ids[:i])
    lavin.tokenizer.eos_token_id = ids[stop]  # pretend that token is EOS
    assert lavin.generate(batch, max_new_tokens=6) == [lavin.decode(ids[:stop])]


def test_left_padded_batch_equals_per_sample_generation(model):
    collate = model.collator(train=False)
    batch = collate(samples())
    assert batch["attention_mask"][:, 0].eq(1).all() and batch["attention_mask"][:, -1].eq(1).all()
    together = model.generate(batch, max_new_tokens=8)
    alone = [model.generate(collate([s]), max_new_tokens=8)[0] for s in samples()]
    assert together == alone
    assert len(set(alone)) == 3


def test_image_changes_the_answer(model):
    with_image = samples()[0]
    other = {**with_image, "images": [torch.zeros(3, 32, 32)]}
    collate = model.collator(train=False)
    with torch.no_grad():
        a, b = model.logits(collate([with_image])), model.logits(collate([other]))
    assert not torch.allclose(a[0, -1], b[0, -1], atol=1e-3)


def test_trainable_state_dict_round_trip(llama_root, model):
    state = model.trainable_state_dict()
    assert state and all("adapter" in k for k in state)
    fresh = build(llama_root).eval()
    report = fresh.load_trainable_state_dict(state)
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(state)
    batch = model.collator(train=True)(samples())
    with torch.no_grad():
        assert torch.equal(fresh.logits(batch), model.logits(batch))


def test_collator_is_picklable_and_validates(model):
    collate = model.collator(train=True)
    again = pickle.loads(pickle.dumps(collate))
    a, b = collate(samples()), again(samples())
    assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "attention_mask", "images"))
    assert a["ids"] == ["q1", "q2", "q3"] and a["has_image"].tolist() == [True, False, True]
    assert a["images"][1].abs().sum() == 0
    with pytest.raises(DataError, match="at most one"):
        collate([{**samples()[0], "images": samples()[0]["images"] * 2}])
    with pytest.raises(DataError, match="image_transform"):
        collate([{**samples()[0], "images": [torch.zeros(3, 64, 64)]}])
    short = LaVIN.collator(model, True)
    short.max_seq_len = 12
    assert short(samples())["input_ids"].shape[1] == 12


def test_config_switches(llama_root):
    lavin = build(llama_root, dropout_schedule="linear_increase", dropout_min=0.0, dropout_max=0.2,
                  adapter_placement="block")
    layers = lavin.llm.model.layers
    assert [layer.input_layernorm.adapter.dropout.p for layer in layers] == pytest.approx([0.0, 0.2])
    assert isinstance(layers[0].post_attention_layernorm, NormWithAdapter)
    full = build(llama_root, train_backbone=True)
    assert full.num_trainable() == sum(p.numel() for p in full.parameters())
    assert lavin.image_transform.transforms[1].size == (32, 32)
    with pytest.raises(ConfigError, match="adapter_placement"):
        build(llama_root, adapter_placement="ffn")


def test_gradient_checkpointing_gives_the_same_gradients(llama_root):
    grads = []
    for checkpointing in (False, True):
        lavin = trained_looking(build(llama_root, gradient_checkpointing=checkpointing)).train()
        lavin(lavin.collator(train=True)(samples()))["loss"].backward()
        grads.append({n: p.grad for n, p in lavin.named_parameters() if p.requires_grad})
    assert all(layer.gradient_checkpointing for layer in lavin.llm.model.layers)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_quantized_backbone_trains_adapters(llama_root):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    lavin = build(llama_root, quantization="8bit").train()
    lavin(lavin.collator(train=True)(samples()))["loss"].backward()
    assert lavin.llm.model.layers[0].input_layernorm.adapter.conv_B.weight.grad.abs().sum() > 0


def test_clip_weights_load_from_a_local_file_only(llama_root, tmp_path):
    from safetensors.torch import save_file

    from vlmkit.models.clip import build_clip_vision
    from vlmkit.models.tiny import TINY_CLIP_VISION_CFG

    torch.manual_seed(5)
    source = build_clip_vision("tiny", None, TINY_CLIP_VISION_CFG, "test")
    path = tmp_path / "open_clip_model.safetensors"  # open_clip's full-model key layout: "visual.*" (+ text keys)
    save_file({**{f"visual.{k}": v for k, v in source.state_dict().items()}, "logit_scale": torch.ones(())}, str(path))
    lavin = build(llama_root, clip_weights=str(path))
    loaded = lavin.visual.visual.state_dict()
    for key, value in source.state_dict().items():
        if key in loaded:  # ln_post / proj are dropped: LaVIN does not use them
            assert torch.equal(loaded[key], value), key
    with pytest.raises(DataError, match=rf"CLIP vision weights not found: {tmp_path / 'nope.safetensors'} .*timm/"):
        build(llama_root, clip_weights=str(tmp_path / "nope.safetensors"))
    scripted = tmp_path / "ViT-L-14.pt"  # OpenAI's TorchScript format is refused with the conversion command
    with warnings.catch_warnings():  # torch.jit is deprecated; OpenAI's file is still in its format
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(scripted))
    with pytest.raises(CheckpointError, match=r"TorchScript.*python -m vlmkit.models.clip"):
        build(llama_root, clip_weights=str(scripted))


def test_generation_goes_through_transformers_with_the_kv_cache(model):
    """One prompt pass, then one token per step (the cache is used); beam search and sampling come from transformers,
    and the cached beams equal beam search that recomputes the whole sequence."""
    batch = model.collator(train=False)(samples())
    lengths: list[int] = []

    def record(module, args, kwargs):
        lengths.append(kwargs["inputs_embeds"].shape[1])

    handle = model.llm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        greedy = model.generate(batch, max_new_tokens=5)
    finally:
        handle.remove()
    assert lengths[0] == batch["input_ids"].shape[1] and set(lengths[1:]) == {1}, lengths
    beams = model.generate(batch, max_new_tokens=5, num_beams=3)
    assert beams == model.generate(batch, max_new_tokens=5, num_beams=3, use_cache=False)
    assert len(beams) == 3 and all(isinstance(t, str) for t in beams) and beams != ["", "", ""]
    torch.manual_seed(0)
    sampled = model.generate(batch, max_new_tokens=5, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    assert sampled == model.generate(batch, max_new_tokens=5, temperature=1.0, top_p=0.9)
    assert greedy == model.generate(batch, max_new_tokens=5, temperature=0.0)
