"""The CLIP vision tower of both models: one loader (open_clip's public ``CLIP``), one stem, two taps.

OpenFlamingo takes the patch tokens after the last block, before ``ln_post`` (:func:`clip_patch_tokens`). LaVIN
keeps the CLS token after every ``tap_every``-th residual block (ViT-L/14: 24 blocks, every 4th ⇒ 6 tokens of width
1024); ``ln_post`` and ``proj`` are not used (:class:`CLIPVisionTaps`). The blocks are iterated here from their public sub-modules (conv1,
class/positional embeddings, ln_pre, each block's ln_1/attn/ln_2/mlp), so the taps do not depend on what open_clip's
``forward`` returns in a given version.

Weights come from a local file only, never a hub name: open_clip's ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``) of ``timm/vit_large_patch14_clip_224.openai``, or a state dict converted from OpenAI's
``ViT-L-14.pt`` with :func:`convert_openai_jit`. A ``tiny`` vision_cfg mapping instead builds a small random tower.
"""
from __future__ import annotations

import argparse
import contextlib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError, missing_file
from vlmkit.models.adapters import MMAdapter

#: How to obtain the ViT-L/14 weights (``{key}``: the config key, ``{env}``: the environment variable that sets it).
HOW_TO_OBTAIN = ("how to obtain: download open_clip_model.safetensors of the open_clip ViT-L-14 'openai' weights "
                 "(Hugging Face repo timm/vit_large_patch14_clip_224.openai) and set {key} or {env}")
#: open_clip.CLIP always builds a text tower; vlmkit never uses it, so it is built on the meta device at the smallest size.
UNUSED_TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1}


def read_clip_state_dict(path: Path, how: str) -> dict[str, torch.Tensor]:
    """The image-tower tensors of a CLIP checkpoint: an open_clip CLIP state dict (``visual.*``), an open-flamingo one
    (``vision_encoder.*``) or a tower-only one; safetensors or a torch file of plain tensors (never unpickled code)."""
    if not path.is_file():
        raise missing_file(path, "CLIP vision weights", how)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        if _is_torchscript(path):
            raise CheckpointError(
                f"{path} is OpenAI's TorchScript archive, which vlmkit does not unpickle; convert it once with "
                f"`python -m vlmkit.models.clip {path} {path.with_suffix('.safetensors')}`")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a non-tensor pickle or a damaged file
            raise CheckpointError(f"cannot read CLIP weights {path}: {' '.join(str(e).split())[:300]}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in ("visual.", "vision_encoder."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl`` (plain state dicts have neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def tower_config(model_name: str, tiny: Mapping[str, Any] | None) -> tuple[dict[str, Any], int, bool]:
    """(vision_cfg, embed_dim, quick_gelu) of an open_clip model config, or of a ``tiny`` vision_cfg mapping (which may
    carry ``embed_dim`` and ``quick_gelu``; open_clip's defaults otherwise). The activation is read from the model
    config — ``ViT-L-14-quickgelu`` for OpenAI's weights, which were trained with QuickGELU — never assumed."""
    import open_clip

    if tiny is not None:
        vision_cfg = dict(tiny)
        return vision_cfg, int(vision_cfg.pop("embed_dim", vision_cfg["width"])), bool(vision_cfg.pop("quick_gelu", False))
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ConfigError(f"'{model_name}' is not an open_clip model config (e.g. ViT-L-14-quickgelu)")
    vision_cfg = dict(model_cfg["vision_cfg"])
    if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(f"'{model_name}' is not an open_clip ViT (timm and ResNet towers are not supported)")
    return vision_cfg, int(model_cfg["embed_dim"]), bool(model_cfg.get("quick_gelu", False))


def build_clip_vision(model_name: str, weights: str | Path | None, tiny: Mapping[str, Any] | None, how: str,
                      load_weights: bool = True) -> nn.Module:
    """open_clip's ``VisionTransformer`` (fp32, CPU), through open_clip's public ``CLIP`` class.

    ``weights``: a local file (:func:`read_clip_state_dict`), loaded strictly; None: random. ``load_weights`` False
    builds the structure on the meta device (to count parameters without files). ``how`` says how to obtain weights.
    """
    import open_clip

    vision_cfg, embed_dim, quick_gelu = tower_config(model_name, tiny)
    if load_weights and weights is None and tiny is None:
        raise ConfigError(f"CLIP '{model_name}' needs its weights file ({how})")
    state = read_clip_state_dict(Path(weights), how) if load_weights and weights is not None else None
    with torch.device("cpu" if load_weights and state is None else "meta"):
        visual = open_clip.CLIP(embed_dim, vision_cfg, UNUSED_TEXT_CFG, quick_gelu=quick_gelu).visual
    if state is not None:
        try:
            visual.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{weights} does not hold this CLIP vision tower ({tiny or model_name}): "
                                  f"{' '.join(str(e).split())[:300]}") from e
    return visual


def vision_stem(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding + CLS + positions + ``ln_pre``: the (N, 1 + grid², width) input of the first block, batch-first.
    Run from the tower's sub-modules, so the taps are the same with every open_clip version."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (N, width, grid, grid)
    x = x.flatten(2).transpose(1, 2)  # (N, grid², width)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


#: nn.MultiheadAttention's native inference "fast path" for the ViT blocks. Off: benchmarks/vision_fastpath.py measured
#: it 1.07x (scaled OpenFlamingo tower, 72 images) and 1.10x (ViT-B/16 shape) slower than the regular path on the CPU,
#: and the regular path runs scaled_dot_product_attention, which has the fused kernels on GPUs.
MHA_FASTPATH = False


@contextlib.contextmanager
def mha_fastpath(enabled: bool = MHA_FASTPATH) -> Iterator[None]:
    """Run the enclosed attention with PyTorch's MHA fast path on or off (restored afterwards)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def clip_patch_tokens(visual: nn.Module, images: torch.Tensor, fastpath: bool = MHA_FASTPATH) -> torch.Tensor:
    """Patch tokens after the last block, BEFORE ``ln_post``, CLS dropped (OpenFlamingo's vision features).

    open_clip 2.16 (what the released OpenFlamingo weights were trained with) returned these; 3.x applies ``ln_post``
    first, so the blocks are run here explicitly. ``fastpath``: see :data:`MHA_FASTPATH`.
    """
    x = vision_stem(visual, images)
    batch_first = getattr(visual.transformer, "batch_first", False)  # open_clip < 2.24 runs blocks sequence-first
    if not batch_first:
        x = x.transpose(0, 1)
    with mha_fastpath(fastpath):
        for block in visual.transformer.resblocks:
            x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x[:, 1:]


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
        x = vision_stem(v, images)
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
        with mha_fastpath():
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
