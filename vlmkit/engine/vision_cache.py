"""Visual tokens computed once per image: the vision cache of few-shot evaluation.

An 8-shot prompt holds 9 images, and a sweep (shots × trials, each over the same queries, demos drawn from one pool)
uses each demo image ~20 times per point and each image again at every point. :class:`VisionCache` keeps each distinct
image's visual tokens (for OpenFlamingo: CLIP ViT + Perceiver output) the first time a batch needs them, keyed by the
image (``batch["image_keys"]``) and by a hash of the weights that made them, so a sweep encodes — and decodes — every
image once. Entries live on the model's device, least recently used first out once ``max_bytes`` is reached; evicted
entries go to a spill file when one is given (``run.vision_cache_spill``), else they are dropped and recomputed when
needed again. Results are identical with the cache off (tests/test_vision_cache.py).

Images a dataset did not load (``images_deferred``: datasets skip decoding when a cache will supply the tokens,
:func:`defer_images`) are decoded here, on a miss, by ``loader`` (key → transformed image tensor), in threads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("vlmkit")

#: Images encoded per vision forward on a miss (the misses of one batch are encoded together, in chunks of this).
ENCODE_CHUNK = 64


@dataclass
class CacheStats:
    hits: int = 0  # image slots served from memory
    spill_hits: int = 0  # image slots read back from the spill file
    misses: int = 0  # distinct images encoded
    decoded: int = 0  # images the cache itself decoded (deferred by the dataset)
    evicted: int = 0  # entries pushed out of memory (to the spill file, or dropped)

    def line(self) -> str:
        used = self.hits + self.spill_hits + self.misses
        rate = 100.0 * (self.hits + self.spill_hits) / used if used else 0.0
        return (f"{self.hits} hits, {self.spill_hits} from the spill file, {self.misses} misses ({rate:.1f} % hit "
                f"rate), {self.decoded} images decoded, {self.evicted} evicted")


class SpillFile:
    """Evicted entries appended to one file (raw bytes), read back by offset; deleted by :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: Any = None  # created by the first put
        self.index: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.index:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w+b")  # a fresh file: entries of an earlier run are never trusted
        data = value.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
        self._file.seek(0, os.SEEK_END)
        offset = self._file.tell()
        self._file.write(data)
        self.index[key] = (offset, len(data), tuple(value.shape), value.dtype)

    def get(self, key: str, device: torch.device) -> torch.Tensor:
        offset, size, shape, dtype = self.index[key]
        self._file.seek(offset)
        raw = bytearray(self._file.read(size))
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).to(device)

    def clear(self) -> None:
        self.index.clear()
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.path.unlink(missing_ok=True)


def weights_hash(modules: Iterable[tuple[str, nn.Module]]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer of ``modules``."""
    digest = hashlib.sha256()
    for prefix, module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            t = tensor.detach()
            digest.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class VisionCache:
    """Visual tokens by image key, for one model's vision weights (see the module docstring).

    ``loader`` maps an image key to its transformed image (for batches whose images were deferred);
    ``spill_path``: where evicted entries go (None: dropped)."""

    max_bytes: int
    spill_path: str | Path | None = None
    loader: Callable[[str], torch.Tensor] | None = None
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._spill = SpillFile(self.spill_path) if self.spill_path is not None else None
        self._weights: str | None = None
        self._versions: tuple | None = None

    # ------------------------------------------------------------------------------------------------ weights
    def bind(self, model: nn.Module) -> str:
        """Check the weights the cached tokens were made with; other weights (a training step, a loaded checkpoint)
        empty the cache. The hash is recomputed only when a vision parameter changed in place or was replaced."""
        parts = list(model.vision_cache_modules())
        versions = tuple((id(t), t._version, t.data_ptr()) for _, m in parts for t in [*m.parameters(), *m.buffers()])
        if versions != self._versions:
            self._versions = versions
            digest = weights_hash(parts)
            if digest != self._weights:
                if self._weights is not None:
                    logger.info("vision cache: the vision weights changed; %d cached images dropped", len(self))
                self.clear()
                self._weights = digest
        return self._weights or ""

    def __len__(self) -> int:
        return len(self._entries) + (len(self._spill.index) if self._spill is not None else 0)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        if self._spill is not None:
            self._spill.clear()

    def close(self) -> None:
        """Drop every entry and delete the spill file."""
        self.clear()
        if self._spill is not None:
            self._spill.close()

    # ----------------------------------------------------------------------------------------------- batches
    def fill(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """Put the batch's visual tokens into ``batch["media"]`` (what ``model.generate`` then uses)."""
        batch["media"] = self.media(model, batch)

    def media(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, T_img, n, d) visual tokens of the batch's image slots (zeros where a sample has fewer images)."""
        keys, mask = batch.get("image_keys"), batch["image_mask"]
        if keys is None:
            raise ValueError("the vision cache needs batch['image_keys'] (the datasets' samples carry image_keys)")
        slots = [(i, j, key) for i, row in enumerate(keys) for j, key in enumerate(row) if mask[i, j]]
        found = self._lookup({key for _, _, key in slots}, model, batch, slots)
        b, t = mask.shape
        some = next(iter(found.values()), None)
        if some is None:  # no image in the whole batch
            return model.encode_images(batch["images"], mask)
        media = some.new_zeros((b, t, *some.shape))
        for i, j, key in slots:
            media[i, j] = found[key]
        return media

    def _lookup(self, wanted: set[str], model: nn.Module, batch: Mapping[str, Any],
                slots: list[tuple[int, int, str]]) -> dict[str, torch.Tensor]:
        """The tokens of every wanted key. Each image slot counts once: a hit (in memory), a spill hit (read back
        from the spill file) or a miss (encoded now); an image in several slots of one batch is read or encoded once
        and its other slots count as hits."""
        found: dict[str, torch.Tensor] = {}
        from_spill: set[str] = set()
        device = model.perceiver.latents.device
        for key in sorted(wanted):
            if key in self._entries:
                self._entries.move_to_end(key)
                found[key] = self._entries[key]
            elif self._spill is not None and key in self._spill:
                found[key] = self._spill.get(key, device)
                from_spill.add(key)
        missing = [key for key in sorted(wanted) if key not in found]
        if missing:
            found.update(self._encode(missing, model, batch, slots))
        self.stats.misses += len(missing)
        self.stats.spill_hits += len(from_spill)
        self.stats.hits += len(slots) - len(missing) - len(from_spill)
        for key in sorted(wanted):  # most recently used last; over the bound, the oldest go
            self._put(key, found[key])
        return found

    def _encode(self, keys: list[str], model: nn.Module, batch: Mapping[str, Any],
                slots: list[tuple[int, int, str]]) -> dict[str, torch.Tensor]:
        pixels = self._pixels(keys, batch, slots)
        out: dict[str, torch.Tensor] = {}
        device = model.perceiver.latents.device
        for start in range(0, len(keys), ENCODE_CHUNK):
            chunk = keys[start:start + ENCODE_CHUNK]
            images = torch.stack([pixels[k] for k in chunk]).to(device)[:, None, None]  # (N, 1, 1, 3, H, W)
            tokens = model.encode_images(images)[:, 0]  # (N, n, d)
            out.update(zip(chunk, tokens))
        return out

    def _pixels(self, keys: list[str], batch: Mapping[str, Any],
                slots: list[tuple[int, int, str]]) -> dict[str, torch.Tensor]:
        if not batch.get("images_deferred"):
            where = {key: (i, j) for i, j, key in reversed(slots)}  # first slot of each key
            return {key: batch["images"][where[key]][0] for key in keys}
        if self.loader is None:
            raise ValueError("the batch's images were deferred to the vision cache, but it has no image loader")
        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:  # PIL decodes without the GIL
            images = list(pool.map(self.loader, keys))
        self.stats.decoded += len(keys)
        return dict(zip(keys, images))

    def _put(self, key: str, value: torch.Tensor) -> None:
        if key in self._entries:
            return
        self._entries[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            old, tensor = self._entries.popitem(last=False)
            self._bytes -= tensor.numel() * tensor.element_size()
            self.stats.evicted += 1
            if self._spill is not None:
                self._spill.put(old, tensor)

    @property
    def bytes_held(self) -> int:
        return self._bytes


# --------------------------------------------------------------------------------------------- the runner's side
def build_vision_cache(run: Mapping[str, Any], model: nn.Module, output_dir: str | Path) -> VisionCache | None:
    """The cache ``run.vision_cache_gb`` asks for, when the model can use one (None: off, or not applicable)."""
    from vlmkit import dist
    from vlmkit.engine.fsdp import is_sharded

    size = float(run.get("vision_cache_gb") or 0)
    if size <= 0 or not getattr(model, "supports_vision_cache", False):
        return None
    if is_sharded(model):  # every rank must run the sharded vision tower together: no rank may skip it on a hit
        logger.info("vision cache off: the model is sharded (run.strategy=fsdp)")
        return None
    spill = Path(output_dir) / f"vision_cache.rank{dist.rank()}.spill" if run.get("vision_cache_spill") else None
    return VisionCache(int(size * 1e9), spill_path=spill)


@contextlib.contextmanager
def serving(cache: VisionCache | None, model: nn.Module, dataset: Any,
            name: str) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """For one evaluation of ``dataset``: the batch hook that fills in the visual tokens (None without a cache).
    The dataset leaves its images undecoded meanwhile (the cache decodes what it misses); the hit/miss counts of
    the evaluation go to the log at the end."""
    if cache is None:
        yield None
        return
    cache.bind(model)

    def load(key: str) -> torch.Tensor:
        image = dataset.image_by_key(key)
        if image is None:
            raise KeyError(f"vision cache: no sample of {name} has the image {key}")
        return image

    deferring = hasattr(dataset, "image_by_key") and hasattr(dataset, "defer_images")
    cache.loader = load if deferring else None
    if deferring:
        dataset.defer_images(True)
    before = dataclasses.replace(cache.stats)
    try:
        yield functools.partial(cache.fill, model)
    finally:
        if deferring:
            dataset.defer_images(False)
        delta = CacheStats(*(getattr(cache.stats, f.name) - getattr(before, f.name)
                             for f in dataclasses.fields(CacheStats)))
        logger.info("vision cache, %s: %s; %d images held (%.1f MB)", name, delta.line(), len(cache),
                    cache.bytes_held / 1e6)
