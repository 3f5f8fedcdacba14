"""Image transforms (PIL image → normalised tensor) that datasets apply through ``model.image_transform``."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# LaVIN normalises with ImageNet's statistics (timm's IMAGENET_DEFAULT_MEAN/STD), not CLIP's own
# (0.4815, 0.4578, 0.4082)/(0.2686, 0.2613, 0.2758) — the released adapters were trained on these inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def lavin_image_transform(size: int = 224) -> Callable[[Any], torch.Tensor]:
    """Resize to (size, size) with bicubic interpolation (no crop, aspect not kept), to tensor, ImageNet-normalise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Lambda(_to_rgb),
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _to_rgb(image: Any) -> Any:
    # ScienceQA holds palette and RGBA PNGs; the reference converts every image to RGB before the transform.
    return image.convert("RGB") if hasattr(image, "convert") and getattr(image, "mode", "RGB") != "RGB" else image
