"""Shared pieces of the COCO-image datasets (VQAv2, COCO captions): image sources, prompt templates, record datasets.

A builder turns the official annotation files (or webdataset shards of them) into *records*: one JSON-serialisable dict
per annotation unit, each naming its image by a key relative to the image root (``train2014/COCO_train2014_…jpg``).
An image source maps that key to a PIL image, from the files or from shards, so that a dataset reads the same samples
either way. :class:`RecordDataset` turns records into the samples models consume (see ``vlmkit/models/base.py``).
"""
from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from torch.utils.data import Dataset

from vlmkit.data.builder import DatasetBuilder
from vlmkit.data.validate import ImageRef
from vlmkit.errors import ConfigError, DataError, missing_file
from vlmkit.io import decode_image

class ImageSource(Protocol):
    """Maps an image key (path relative to the image root) to the image."""

    def load(self, key: str) -> Image.Image: ...

    def read_bytes(self, key: str) -> bytes: ...

    def ref(self, key: str, used_by: str) -> ImageRef:
        """The image as an input to check before a run (vlmkit/data/validate.py)."""


@dataclass(frozen=True)
class DeferredImage:
    """An image a dataset left undecoded (``defer_images``): the vision cache supplies its visual tokens, or decodes
    it by ``key`` on a miss (vlmkit/engine/vision_cache.py)."""

    key: str


class FileImageSource:
    """Images stored as files under ``root`` (the official layout)."""

    def __init__(self, root: str | Path, how_to_obtain: str) -> None:
        self.root = Path(root)
        self.how_to_obtain = how_to_obtain

    def path(self, key: str) -> Path:
        path = self.root / key
        if not path.is_file():
            raise missing_file(path, "image", self.how_to_obtain)
        return path

    def load(self, key: str) -> Image.Image:
        return decode_image(self.path(key), str(self.root / key), self.how_to_obtain)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def ref(self, key: str, used_by: str) -> ImageRef:
        return ImageRef(f"{self.root / key} ({used_by})", self.root / key, how=self.how_to_obtain)

    def cache_key(self, key: str) -> str:
        """A name of the image unique across sources (the vision cache's key)."""
        return str(self.root / key)


class PromptTemplate:
    """A few-shot chunk template such as ``{image_token}Question:{question} Short answer:{answer}{end_of_chunk_token}``.

    The text before the answer field is the query prompt; the answer field and what follows it (the end-of-chunk
    token) is the training target, so a model learns to close its answer with the chunk end it stops generating at.
    """

    def __init__(self, template: str, answer_field: str, image_token: str, end_of_chunk_token: str,
                 where: str = "prompt_template") -> None:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        marker = "{" + answer_field + "}"
        if marker not in template:
            raise ConfigError(f"{where} '{template}' has no '{marker}' field marking where the answer goes")
        if "image_token" not in fields:
            # Without the tag the model never attends to the image (a training bug the Flamingo model refuses too).
            raise ConfigError(f"{where} '{template}' has no '{{image_token}}' field; every chunk needs the image tag")
        self.template = template
        self.answer_field = answer_field
        self.image_token = image_token
        self.end_of_chunk_token = end_of_chunk_token
        self.fields = fields - {answer_field, "image_token", "end_of_chunk_token"}
        self._head, self._tail = template.split(marker, 1)

    def _fill(self, part: str, values: Mapping[str, Any]) -> str:
        try:
            return part.format(image_token=self.image_token, end_of_chunk_token=self.end_of_chunk_token, **values)
        except KeyError as e:
            raise ConfigError(f"prompt template '{self.template}' uses field {e} that this dataset does not provide "
                              f"(available: {', '.join(sorted(values))})") from e

    def query(self, values: Mapping[str, Any]) -> str:
        """The prompt of a sample to answer (ends where the answer would start)."""
        return self._fill(self._head, values)

    def target(self, answer: str, values: Mapping[str, Any]) -> str:
        """The answer followed by the rest of the chunk (the end-of-chunk token)."""
        return answer + self._fill(self._tail, values)

    def demo(self, answer: str, values: Mapping[str, Any]) -> str:
        """A complete in-context example."""
        return self.query(values) + self.target(answer, values)


class RecordDataset(Dataset):
    """Samples from records: image through ``transform``, prompt from the template, target when training.

    Subclasses say which record fields fill the template (:meth:`prompt_values`), what the training answer and the
    in-context demo answer are, and which extra keys a sample carries for the task.
    """

    def __init__(self, records: Sequence[dict[str, Any]], images: ImageSource, transform: Callable[[Any], Any] | None,
                 template: PromptTemplate, train: bool, name: str, split: str) -> None:
        self.records = list(records)
        self.images = images
        self.transform = transform
        self.template = template
        self.train = train
        self.name = name
        self.split = split
        self._deferred = False  # set by defer_images while a vision cache supplies the visual tokens
        self._by_image_key: dict[str, int] | None = None
        self._position = {r["id"]: i for i, r in enumerate(self.records)}
        if len(self._position) != len(self.records):
            raise DataError(f"{name} split '{split}' has duplicate sample ids; the annotation files are inconsistent")

    # --- what subclasses define
    def prompt_values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def train_answer(self, record: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def demo_answer(self, record: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def extras(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    # --- shared
    def __len__(self) -> int:
        return len(self.records)

    def sample_id(self, index: int) -> str:
        return self.records[index]["id"]

    def index_of(self, sample_id: str) -> int:
        return self._position[sample_id]

    def record_by_id(self, sample_id: str) -> dict[str, Any]:
        return self.records[self._position[sample_id]]

    def image_refs(self) -> list[ImageRef]:
        """Every image this dataset reads, once (checked before a run by vlmkit/data/validate.py)."""
        first_user: dict[str, str] = {}
        for record in self.records:
            first_user.setdefault(record["image"], record["id"])
        return [self.images.ref(key, f"{self.name} {self.split} sample {sid}") for key, sid in first_user.items()]

    def image(self, index: int) -> Any:
        """The transformed image of sample ``index``."""
        img = self.images.load(self.records[index]["image"])
        return self.transform(img) if self.transform is not None else img

    def image_key(self, index: int) -> str:
        """The vision cache's key of sample ``index``'s image (unique across datasets and roots)."""
        key = self.records[index]["image"]
        named = getattr(self.images, "cache_key", None)
        return named(key) if named is not None else f"{self.name}:{key}"

    def defer_images(self, defer: bool) -> None:
        """Leave images undecoded (a vision cache supplies their visual tokens), or load them again."""
        self._deferred = defer

    def image_or_deferred(self, index: int) -> Any:
        """The transformed image, or a :class:`DeferredImage` while :meth:`defer_images` is on."""
        return DeferredImage(self.image_key(index)) if self._deferred else self.image(index)

    def image_by_key(self, key: str) -> Any | None:
        """The transformed image whose :meth:`image_key` is ``key`` (None: no sample of this dataset has it)."""
        if self._by_image_key is None:  # built whole before it is published: the vision cache loads in threads
            by_key: dict[str, int] = {}
            for i in range(len(self.records)):
                by_key.setdefault(self.image_key(i), i)
            self._by_image_key = by_key
        index = self._by_image_key.get(key)
        return None if index is None else self.image(index)

    def prompt_text(self, index: int) -> str:
        """The prompt of sample ``index`` without loading its image (for grouping evaluation batches by length)."""
        return self.query_prompt(index)

    def query_prompt(self, index: int) -> str:
        return self.template.query(self.prompt_values(self.records[index]))

    def demo_prompt(self, index: int) -> str:
        record = self.records[index]
        return self.template.demo(self.demo_answer(record), self.prompt_values(record))

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        values = self.prompt_values(record)
        target = self.template.target(self.train_answer(record), values) if self.train else ""
        return {"id": record["id"], "images": [self.image_or_deferred(index)], "image_keys": [self.image_key(index)],
                "prompt": self.template.query(values), "target": target, **self.extras(record)}


def check_split(name: str, split: str, known: Mapping[str, Any]) -> None:
    """A split the dataset config does not define is a ConfigError listing the defined ones."""
    if split not in known:
        raise ConfigError(f"dataset {name} has no split '{split}' (datasets.{name}.splits defines: "
                          f"{', '.join(map(str, known))})")


def nonempty(records: list[dict[str, Any]], name: str, split: str, source: str) -> list[dict[str, Any]]:
    if not records:
        raise DataError(f"{name} split '{split}' is empty (read from {source}); check the files or the split name")
    return records


def subset(records: list[dict[str, Any]], max_samples: int | None, seed: int) -> list[dict[str, Any]]:
    """A fixed random subset of ``max_samples`` records (in their original order), or all of them."""
    if max_samples is None or max_samples >= len(records):
        return records
    import random

    keep = set(random.Random(seed).sample(range(len(records)), max_samples))
    return [r for i, r in enumerate(records) if i in keep]


class RecordBuilder(DatasetBuilder):
    """Base of the COCO-image builders (VQAv2, COCO captions): records from the official files or from shards.

    ``cfg`` is the dataset's section of the run config (``vlmkit/configs/datasets/<name>.yaml`` ⊕ the project's keys).
    When ``cfg.shards`` is set, records and images come from webdataset shards written by
    :func:`vlmkit.data.shards.write_shards` instead of the official files.
    """

    name: str = ""
    how_to_obtain: str = ""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self._shards: Any = None

    def raw_records(self, split: str) -> list[dict[str, Any]]:
        """Records of ``split`` read from the official files (subclasses)."""
        raise NotImplementedError

    def _shard_index(self) -> Any:
        if self._shards is None:
            from vlmkit.data.shards import ShardIndex

            self._shards = ShardIndex.load(self.cfg["shards"])
        return self._shards

    def records(self, split: str) -> list[dict[str, Any]]:
        """Records of ``split`` from the shards when configured, else from the official files; never empty."""
        check_split(self.name, split, self.cfg["splits"])
        if self.cfg.get("shards"):
            return nonempty(self._shard_index().records(split), self.name, split, str(self.cfg["shards"]))
        return nonempty(self.raw_records(split), self.name, split, str(self.cfg["root"]))

    def image_source(self) -> ImageSource:
        if self.cfg.get("shards"):
            from vlmkit.data.shards import ShardImageSource

            return ShardImageSource(self._shard_index())
        return FileImageSource(self.cfg["root"], self.how_to_obtain)

    def template(self) -> PromptTemplate:
        return PromptTemplate(str(self.cfg["prompt_template"]), self.answer_field, str(self.cfg["image_token"]),
                              str(self.cfg["end_of_chunk_token"]), where=f"datasets.{self.name}.prompt_template")

    answer_field: str = "answer"

    def build(self, split: str, transform: Callable[[Any], Any] | None, train: bool) -> RecordDataset:
        raise NotImplementedError
