"""The contract every vlmkit model implements (see docs/extending.md for a worked example).

A model is a plain ``nn.Module`` registered with ``@MODELS.register("<arch>")``. The runner only ever calls what is
declared here, so a new model needs nothing else from vlmkit.

Samples (what datasets yield, before collation) are dicts::

    {"id": str,                    # unique within a split; used to deduplicate gathered predictions
     "images": list[Tensor],       # 0..n images, already transformed by ``model.image_transform`` (C, H, W)
     "prompt": str,                # the model input text (for few-shot: demos + query, with the model's image tags)
     "target": str,                # the text to learn (answer / caption); "" at evaluation
     ...}                          # any extra keys the task needs; collators ignore them

A batch is what ``model.collator(train)`` makes of a list of samples: a dict of tensors plus ``"ids"`` (list[str]).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlmkit.errors import CheckpointError


@dataclass
class LoadReport:
    """What loading a trainable state dict found. ``missing`` must be empty for a strict load."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # trainable parameters the file lacks
    unexpected: list[str] = field(default_factory=list)  # keys the model does not have


class VLModel(nn.Module):
    """Base class of vlmkit models. Subclasses implement ``from_config``, ``collator``, ``forward`` and ``generate``."""

    #: Every config key of the model with its default: a mapping, or a YAML file under ``vlmkit/configs/`` (the
    #: built-ins: ``"models/<arch>.yaml"``). The config loader and ``MODELS.build`` check given keys against it.
    default_config: ClassVar[Mapping[str, Any] | str | None] = None
    #: PIL image → tensor transform that datasets apply to every image.
    image_transform: Callable[[Any], torch.Tensor]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "VLModel":
        raise NotImplementedError

    def collator(self, train: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """A picklable callable turning samples into a batch (tokenised, padded; ``"ids"`` kept)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training forward: returns at least ``{"loss": scalar}``."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **gen_kwargs: Any) -> list[str]:
        """Decoded continuations, one per sample, in batch order (prompt not included).

        Under ``run.strategy: fsdp`` the runner passes ``synced_gpus=True``: every decoding step is then a collective, so
        a model must keep stepping until every rank has finished (Hugging Face ``generate`` does this itself)."""
        raise NotImplementedError

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that training changes, by name (what checkpoints and ``model.safetensors`` hold)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
        """Load trainable weights; every key must exist with the same shape, and (if strict) every trainable one be given."""
        params = dict(self.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        report = LoadReport()
        for key, value in state.items():
            if key not in params:
                report.unexpected.append(key)
                continue
            if tuple(params[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"checkpoint tensor '{key}' has shape {tuple(value.shape)} but the model's is "
                    f"{tuple(params[key].shape)}: the checkpoint is from a model of another configuration"
                )
            report.loaded.append(key)
        report.missing = sorted(trainable - set(report.loaded))
        if report.unexpected:
            raise CheckpointError(
                f"checkpoint has {len(report.unexpected)} keys this {type(self).__name__} does not have "
                f"(e.g. '{report.unexpected[0]}'): it is a checkpoint of another model"
            )
        if strict and report.missing:
            raise CheckpointError(
                f"checkpoint lacks {len(report.missing)} trainable tensors of {type(self).__name__} "
                f"(e.g. '{report.missing[0]}'): it is a checkpoint of another model or configuration"
            )
        with torch.no_grad():
            for key in report.loaded:
                params[key].copy_(state[key].to(params[key].dtype))
        return report

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
