"""Image transforms (PIL image → normalised tensor) that datasets apply through ``model.image_transform``.

The normalisation statistics are model settings, kept in each model's defaults (``image_mean`` / ``image_std``):
LaVIN uses ImageNet's, OpenFlamingo CLIP's own.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

ImageTransform = Callable[[Any], torch.Tensor]


def squash_resize_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """LaVIN's: resize to (size, size) with bicubic interpolation (no crop, aspect not kept), to tensor, normalise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(_to_rgb),
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(tuple(mean), tuple(std)),
    ])


def center_crop_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """open_clip's evaluation preprocessing (what open-flamingo applies): resize the shorter side (bicubic), center
    crop to ``size``, RGB, to tensor, normalise."""
    from open_clip import image_transform

    return image_transform(size, is_train=False, mean=tuple(mean), std=tuple(std))


def _to_rgb(image: Any) -> Any:
    # ScienceQA holds palette and RGBA PNGs; the reference converts every image to RGB before the transform.
    return image.convert("RGB") if hasattr(image, "convert") and getattr(image, "mode", "RGB") != "RGB" else image
