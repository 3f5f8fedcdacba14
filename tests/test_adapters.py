"""MMA adapter: parameter counts of the paper, identity at init, per-sample routing (LLM and CLIP), dropout schedules."""
from __future__ import annotations

import math

import pytest
import torch

from vlmkit.errors import ConfigError
from vlmkit.models.adapters import MMAdapter as _MMAdapter
from vlmkit.models.adapters import _pointwise, dropout_schedule
from vlmkit.models.clip import CLIPVisionTaps, build_clip_vision
from vlmkit.models.tiny import TINY_CLIP_VISION_CFG


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def MMAdapter(dim: int, **changes: float) -> _MMAdapter:
    """An adapter with LaVIN's defaults (vlmkit/configs/models/lavin.yaml) and ``changes``."""
    from vlmkit.registry import MODELS
    from vlmkit.schema import defaults_of

    d = defaults_of(MODELS.get("lavin"))
    args = {"adapter_dim": d.adapter_dim, "scale": d.adapter_scale, "temperature": d.temperature,
            "dropout": d.adapter_dropout, **changes}
    return _MMAdapter(dim, **args)


def randomised(adapter: _MMAdapter, seed: int = 0) -> _MMAdapter:
    """An adapter whose experts are not zero (as after training), so the routing shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return adapter.eval()


def test_parameter_counts_match_the_paper():
    assert n_params(MMAdapter(4096, adapter_dim=8)) == 81_930  # per LLaMA-7B layer
    assert n_params(MMAdapter(1024, adapter_dim=8)) == 20_490  # per CLIP ViT-L block


def test_zero_initialised_adapter_is_identity():
    torch.manual_seed(0)
    adapter = MMAdapter(64, adapter_dim=8).train()  # dropout active: still the identity, both experts are zero
    x = torch.randn(3, 5, 64)
    assert torch.equal(adapter(x), x)
    half = x.half()
    assert adapter(half).dtype == torch.float16  # output in the caller's dtype, parameters stay fp32
    assert adapter.conv_A.weight.dtype == torch.float32


def test_output_formula():
    adapter = randomised(MMAdapter(16, adapter_dim=4, scale=0.5, temperature=5.0))
    x = torch.randn(2, 3, 16)
    w = torch.softmax(adapter.router(x[:, 0]) / 5.0, dim=-1)
    hidden = adapter.conv_A(x.transpose(1, 2))
    expected = x.transpose(1, 2) + 0.5 * (w[:, 0, None, None] * adapter.conv_B(hidden)
                                          + w[:, 1, None, None] * adapter.conv_D(hidden))
    assert torch.allclose(adapter(x), expected.transpose(1, 2), atol=1e-6)


def test_routing_is_per_sample():
    adapter = randomised(MMAdapter(32, adapter_dim=8, temperature=1.0))
    torch.manual_seed(1)
    a, b = torch.randn(1, 4, 32), torch.randn(1, 4, 32) * 3
    w = adapter.routing_weights(torch.cat([a, b])[:, 0])
    assert not torch.allclose(w[0], w[1], atol=1e-3)  # different modality inputs, different weights
    out_ab = adapter(torch.cat([a, b]))
    out_aa = adapter(torch.cat([a, a]))
    assert torch.allclose(out_ab[0], out_aa[0], atol=1e-6)
    assert torch.allclose(out_ab[0], adapter(a)[0], atol=1e-6)
    # and the weights do matter: forcing b's weights onto a changes a's output
    assert not torch.allclose(adapter(a, weights=w[1:2]), adapter(a), atol=1e-4)


def test_clip_adapters_route_per_sample():
    torch.manual_seed(0)
    visual = build_clip_vision("tiny", None, TINY_CLIP_VISION_CFG, "test")
    width, blocks = TINY_CLIP_VISION_CFG["width"], TINY_CLIP_VISION_CFG["layers"]
    taps = CLIPVisionTaps(visual, tap_every=1,
                          adapters=[randomised(MMAdapter(width, temperature=1.0), seed=i) for i in range(blocks)]).eval()
    size = TINY_CLIP_VISION_CFG["image_size"]
    a, b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size) * 2
    with torch.no_grad():
        out_ab, out_aa = taps(torch.cat([a, b])), taps(torch.cat([a, a]))
    assert out_ab.shape == (2, blocks, width)
    assert torch.allclose(out_ab[0], out_aa[0], atol=1e-5)  # a's features do not depend on its batch neighbour
    assert not torch.allclose(out_ab[0], out_ab[1], atol=1e-3)


def test_clip_taps_every_nth_block_cls_token():
    torch.manual_seed(0)
    visual = build_clip_vision("tiny", None, {**TINY_CLIP_VISION_CFG, "layers": 4}, "test").eval()
    images = torch.randn(2, 3, 32, 32)
    taps = CLIPVisionTaps(visual, tap_every=2)
    # reference: open_clip's own transformer, truncated after 2 and 4 blocks, CLS token, no ln_post
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding
        x = visual.ln_pre(x)
        expected = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i % 2 == 1:
                expected.append(x[:, 0])
        assert torch.allclose(taps(images), torch.stack(expected, 1), atol=1e-5)
    with pytest.raises(ConfigError, match="tap_every"):
        CLIPVisionTaps(visual, tap_every=3)


def test_dropout_schedules():
    n = 5
    assert dropout_schedule("constant", n, p=0.1) == [0.1] * n
    inc = dropout_schedule("linear_increase", n, p_min=0.0, p_max=0.2)
    assert inc == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert dropout_schedule("linear_decrease", n, p_min=0.0, p_max=0.2) == pytest.approx(inc[::-1])
    half_cos = [0.1 * (1 - math.cos(math.pi * i / 4)) for i in range(n)]  # 0.2 · (1 - cos(π t)) / 2
    cos_inc = dropout_schedule("cosine_increase", n, p_min=0.0, p_max=0.2)
    assert cos_inc == pytest.approx(half_cos)
    assert dropout_schedule("cosine_decrease", n, p_min=0.0, p_max=0.2) == pytest.approx(half_cos[::-1])
    assert cos_inc[1] < inc[1] and cos_inc[3] > inc[3]  # the second shape differs: slow start, slow finish
    for kind in ("linear_increase", "cosine_increase", "linear_decrease", "cosine_decrease"):
        values = dropout_schedule(kind, 32, p_min=0.05, p_max=0.15)
        assert min(values) == pytest.approx(0.05) and max(values) == pytest.approx(0.15)
        assert sum(values) / 32 == pytest.approx(0.1)  # same mean as the reference's constant 0.1
    assert dropout_schedule("linear_increase", 1, p_min=0.0, p_max=0.2) == [0.0]
    with pytest.raises(ConfigError, match="dropout_schedule 'linear'"):
        dropout_schedule("linear", n)
    with pytest.raises(ConfigError, match="dropout_max"):
        dropout_schedule("linear_increase", n, p_min=0.3, p_max=0.1)


def test_pointwise_matmul_equals_grouped_convolution():
    adapter = randomised(MMAdapter(16, adapter_dim=4))
    x = torch.randn(2, 5, 16)
    hidden = adapter.conv_A(x.transpose(1, 2))
    for conv in (adapter.conv_B, adapter.conv_D):
        assert conv.groups == 2
        assert torch.allclose(_pointwise(conv, hidden.transpose(1, 2)), conv(hidden).transpose(1, 2), atol=1e-6)


def test_clip_activation_comes_from_the_open_clip_model_config():
    """OpenAI's weights need QuickGELU: the default model config says so itself; plain ViT-L-14 does not."""
    from open_clip.transformer import QuickGELU

    from vlmkit.models.clip import build_clip_vision

    def acts(name: str) -> set[type]:
        visual = build_clip_vision(name, None, None, "test", load_weights=False)  # structure only, no files
        return {type(block.mlp.gelu) for block in visual.transformer.resblocks}

    assert acts("ViT-L-14-quickgelu") == {QuickGELU}
    assert acts("ViT-L-14") == {torch.nn.GELU}
    for section in ("lavin", "openflamingo"):  # both models default to the QuickGELU config
        from vlmkit.registry import MODELS
        from vlmkit.schema import defaults_of

        d = defaults_of(MODELS.get(section))
        assert (d.clip_name if section == "lavin" else d.vision.model_name) == "ViT-L-14-quickgelu"
    tiny = build_clip_vision("tiny", None, {**TINY_CLIP_VISION_CFG, "quick_gelu": False}, "test")
    assert {type(b.mlp.gelu) for b in tiny.transformer.resblocks} == {torch.nn.GELU}
