"""Published few-shot results of the 9B models (0/4/8/16/32 shots), drawn dashed next to a sweep of the same setup.

VQAv2 numbers are VQA accuracy (%), COCO numbers CIDEr ×100, as the papers report them (and as vlmkit's tables scale
them). OpenFlamingo-9B v1 is CLIP ViT-L/14 + LLaMA-7B with a cross-attention block every 4 decoder layers (vlmkit's
``openflamingo`` defaults); v2 the same with MPT-7B; DeepMind's Flamingo-9B is shown with either.
"""
from __future__ import annotations

from typing import Any

PUBLISHED_SHOTS = (0, 4, 8, 16, 32)
#: ``--published`` of ``vlmkit compare`` / ``vlmkit study``: when the published curves are drawn on sweep figures.
PUBLISHED_MODES = ("auto", "always", "never")
#: main metric → (OpenFlamingo version or None for DeepMind's, curve label, values at PUBLISHED_SHOTS)
PUBLISHED: dict[str, tuple[tuple[str | None, str, tuple[float, ...]], ...]] = {
    "overall": (
        ("v1", "OpenFlamingo-9B v1 (LLaMA-7B)", (43.55, 44.05, 47.5, 48.87, 50.34)),
        ("v2", "OpenFlamingo-9B v2 (MPT-7B)", (48.3, 49.4, 51.8, 51.3, 50.2)),
        (None, "Flamingo-9B (DeepMind)", (51.8, 56.3, 58.0, 59.4, 60.4)),
    ),
    "CIDEr": (
        ("v1", "OpenFlamingo-9B v1 (LLaMA-7B)", (65.52, 74.28, 79.26, 81.84, 84.52)),
        ("v2", "OpenFlamingo-9B v2 (MPT-7B)", (79.5, 89.0, 96.3, 98.8, 99.5)),
        (None, "Flamingo-9B (DeepMind)", (79.4, 93.1, 99.0, 102.2, 106.3)),
    ),
}
#: What the 9B setup is in an ``openflamingo`` config.
NINE_B_VISION = "ViT-L-14"
NINE_B_CROSS_ATTN_EVERY = 4


def nine_b_variant(config: dict[str, Any] | None) -> str | None:
    """``"v1"`` (LLaMA-7B) or ``"v2"`` (MPT-7B) when the config is the OpenFlamingo-9B setup, else None.

    The setup: arch ``openflamingo``, real (not tiny) LM and vision tower, a ViT-L/14 vision tower and a cross-attention
    block every 4 decoder layers. The LM is told apart by its path (an MPT directory names MPT).
    """
    model = (config or {}).get("model") or {}
    if model.get("arch") != "openflamingo":
        return None
    lm, vision, xattn = model.get("lm") or {}, model.get("vision") or {}, model.get("cross_attn") or {}
    if lm.get("tiny") is not None or vision.get("tiny") is not None:
        return None
    if not str(vision.get("model_name", "")).startswith(NINE_B_VISION):
        return None
    if int(xattn.get("every_n_layers", 0) or 0) != NINE_B_CROSS_ATTN_EVERY:
        return None
    return "v2" if "mpt" in str(lm.get("path", "")).lower() else "v1"


def published_curves(metric: str, variant: str | None) -> dict[str, tuple[float, ...]]:
    """Label → values of the curves to draw for a sweep of ``metric``: the matching OpenFlamingo version's and
    Flamingo-9B's (``variant`` None: every published curve of the metric)."""
    return {label: values for version, label, values in PUBLISHED.get(metric, ())
            if variant is None or version in (None, variant)}
