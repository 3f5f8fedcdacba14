"""CLIP vision tower for LaVIN: open_clip's ViT, run block by block to tap CLS tokens, with MMA adapters before attention.

LaVIN keeps the CLS token after every ``tap_every``-th residual block (ViT-L/14: 24 blocks, every 4th ⇒ 6 tokens of
width 1024); ``ln_post`` and ``proj`` are not used. The blocks are iterated here from their public sub-modules (conv1,
class/positional embeddings, ln_pre, each block's ln_1/attn/ln_2/mlp), so the taps do not depend on what open_clip's
``forward`` returns in a given version.

Weights come from a local file only, never a hub name: open_clip's ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``) of ``timm/vit_large_patch14_clip_224.openai``, or a state dict converted from OpenAI's
``ViT-L-14.pt`` with :func:`convert_openai_jit`. A ``vision_cfg`` mapping instead builds a tiny random tower.
"""
from __future__ import annotations

import argparse
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError, missing_file
from vlmkit.models.adapters import MMAdapter

HOW_TO_OBTAIN = ("how to obtain: download open_clip_model.safetensors of the open_clip ViT-L-14 'openai' weights "
                 "(Hugging Face repo timm/vit_large_patch14_clip_224.openai) and set model.clip_weights or "
                 "VLMKIT_CLIP_WEIGHTS to it; see docs/lavin.md")
#: OpenAI's CLIP was trained with QuickGELU; open_clip's plain "ViT-L-14" config would otherwise build nn.GELU.
OPENAI_CLIP_QUICK_GELU = True
#: open_clip.CLIP always builds a text tower; LaVIN never uses it, so random tiny towers get the smallest one.
UNUSED_TINY_TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is OpenAI's TorchScript archive, which vlmkit does not unpickle; convert it once with "
            f"`python -m vlmkit.models.clip {path} {path.with_suffix('.safetensors')}`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a non-tensor pickle or a damaged file
        raise CheckpointError(f"cannot read CLIP weights {path}: {' '.join(str(e).split())[:300]}") from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl`` (plain state dicts have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def build_clip_visual(name: str = "ViT-L-14", weights: str | Path | None = None,
                      vision_cfg: Mapping[str, Any] | None = None, load_weights: bool = True) -> nn.Module:
    """open_clip's ``VisionTransformer`` (fp32, CPU; on the meta device when ``load_weights`` is False).

    ``vision_cfg`` given: a tower of that shape (random unless ``weights``); otherwise open_clip's config ``name``,
    which needs ``weights``.
    """
    import open_clip

    if vision_cfg is not None:
        model_cfg = {"embed_dim": int(vision_cfg.get("width", 64)), "vision_cfg": dict(vision_cfg),
                     "text_cfg": UNUSED_TINY_TEXT_CFG}
    else:
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ConfigError(f"model.clip_name '{name}' is not an open_clip model config (e.g. ViT-L-14)")
        if load_weights and weights is None:
            raise ConfigError(f"model.clip_weights is null but model.clip_name '{name}' needs its weights ({HOW_TO_OBTAIN})")
    if load_weights and weights is not None and not Path(weights).is_file():
        raise missing_file(weights, "CLIP ViT-L-14 weights", HOW_TO_OBTAIN)
    random_init = load_weights and weights is None
    with torch.device("cpu" if random_init else "meta"):
        clip = open_clip.CLIP(**model_cfg, quick_gelu=OPENAI_CLIP_QUICK_GELU)
    visual = clip.visual
    if load_weights and weights is not None:
        state = {k[len("visual."):]: v.float() for k, v in _read_state_dict(Path(weights)).items()
                 if k.startswith("visual.")}
        try:
            visual.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{weights} does not hold {name if vision_cfg is None else 'this'} CLIP vision tower: "
                                  f"{' '.join(str(e).split())[:300]}") from e
    return visual


class CLIPVisionTaps(nn.Module):
    """Images (B, 3, H, W) → CLS tokens after every ``tap_every``-th block, (B, n_blocks / tap_every, width)."""

    def __init__(self, visual: nn.Module, tap_every: int, adapters: list[MMAdapter] | None = None) -> None:
        super().__init__()
        self.visual = visual
        n_blocks = len(visual.transformer.resblocks)
        if tap_every < 1 or n_blocks % tap_every:
            raise ConfigError(f"model.tap_every={tap_every} must divide the {n_blocks} CLIP blocks")
        self.tap_every = tap_every
        self.n_tokens = n_blocks // tap_every
        self.width = int(visual.class_embedding.shape[-1])
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if adapters is not None and len(adapters) != n_blocks:
            raise ValueError(f"need one adapter per CLIP block ({n_blocks}), got {len(adapters)}")
        self.adapters = nn.ModuleList(adapters) if adapters is not None else None
        # LaVIN uses neither the final LayerNorm nor the projection; dropping them keeps every parameter in use.
        visual.ln_post = nn.Identity()
        visual.proj = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))  # (B, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid², width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        taps = []
        for i, block in enumerate(v.transformer.resblocks):
            h = block.ln_1(x)
            if self.adapters is not None:
                h = self.adapters[i](h)  # routed on h[:, 0], each sample's own CLS token
            x = x + getattr(block, "ls_1", nn.Identity())(self._attention(block.attn, h))
            x = x + getattr(block, "ls_2", nn.Identity())(block.mlp(block.ln_2(x)))
            if (i + 1) % self.tap_every == 0:
                taps.append(x[:, 0])
        return torch.stack(taps, dim=1)

    @staticmethod
    def _attention(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
        if not attn.batch_first:  # open_clip < 2.20 keeps blocks sequence-first
            h = h.transpose(0, 1)
            return attn(h, h, h, need_weights=False)[0].transpose(0, 1)
        return attn(h, h, h, need_weights=False)[0]


def convert_openai_jit(src: str | Path, dst: str | Path) -> None:
    """Convert OpenAI's TorchScript ``ViT-L-14.pt`` into a safetensors state dict open_clip's CLIP accepts.

    TorchScript archives are read by ``torch.jit.load``, not unpickled; run it once, on a file you downloaded yourself.
    """
    from safetensors.torch import save_file

    module = torch.jit.load(str(src), map_location="cpu")
    state = {k: v.contiguous() for k, v in module.state_dict().items()
             if k not in ("input_resolution", "context_length", "vocab_size")}
    save_file(state, str(dst))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Convert OpenAI's CLIP TorchScript file to safetensors")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    convert_openai_jit(args.src, args.dst)
    print(f"wrote {args.dst}")
