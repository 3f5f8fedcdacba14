"""The one protocol of every ``DATASETS`` entry: ``Builder(cfg).build(split, image_transform, train) -> Dataset``.

``cfg`` is the dataset's section of the run config (its ``default_config`` ⊕ the project's keys), as ``DATASETS.build_named``
gives it. A task builds every split it needs through this call, whatever the benchmark.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch.utils.data import Dataset

from vlmkit.processors.image import ImageTransform


class DatasetBuilder:
    """Base of dataset builders. Subclasses set ``default_config`` and implement :meth:`build`."""

    #: Every key of the dataset's config section with its default: a mapping, or a YAML under ``vlmkit/configs/``.
    default_config: ClassVar[Mapping[str, Any] | str | None] = None

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DatasetBuilder:
        return cls(cfg)

    def build(self, split: str, image_transform: ImageTransform | None = None, train: bool = False) -> Dataset:
        """The samples of ``split``: with targets when ``train``, prompts only otherwise (see vlmkit/models/base.py)."""
        raise NotImplementedError
