"""Every image a run will read, decoded once before the run writes anything.

A dataset lists its images with ``image_refs()`` (the built-in datasets do; a user's dataset may). Each image is read
and fully decoded by a pool of threads, split across ranks under torchrun; the bad ones of every rank are gathered, so
all ranks stop with the same one-line error naming the first bad file, the item that uses it and the fix.

Checks are remembered in a manifest per image folder (``$VLMKIT_CACHE_DIR`` or ``~/.cache/vlmkit``,
``image_checks/<hash>.json``): an image whose size and modification time are unchanged is not decoded again, so a second
run over the same data costs one ``stat`` per file. ``run.validate_images: false`` turns the check off.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from vlmkit import dist
from vlmkit.errors import DataError
from vlmkit.io import IMAGE_READ_ERRORS, decode_image, write_json_atomic

#: Stamp of a checked image: (size in bytes, modification time in ns) of the file that holds it.
Stamp = tuple[int, int]


@dataclass(frozen=True)
class ImageRef:
    """One image a dataset reads: ``label`` names it in errors (path and the item using it), ``file`` holds it (the
    image itself, or the shard it is in, at ``member``)."""

    label: str
    file: Path
    member: str = ""
    how: str = "re-download the file or remove the samples that use it"
    read: Callable[[], bytes] | None = field(default=None, compare=False, hash=False)

    def check(self) -> str | None:
        """None when the image decodes, else why not."""
        try:
            data = self.read() if self.read is not None else self.file
            decode_image(data, self.label, self.how)
        except DataError as e:
            return str(e)
        except IMAGE_READ_ERRORS as e:  # e.g. a shard that cannot be opened
            return f"cannot read image {self.label}: {' '.join(str(e).split())} ({self.how})"
        return None


def cache_dir() -> Path:
    return Path(os.environ.get("VLMKIT_CACHE_DIR") or Path.home() / ".cache" / "vlmkit")


def dataset_image_refs(dataset: Dataset) -> list[ImageRef]:
    """The images ``dataset`` will read (wrappers such as few-shot and concatenated datasets included)."""
    if isinstance(dataset, ConcatDataset):
        return [ref for part in dataset.datasets for ref in dataset_image_refs(part)]
    refs = getattr(dataset, "image_refs", None)
    return list(refs()) if callable(refs) else []


def validate_datasets(datasets: Mapping[str, Mapping[str, Dataset]], workers: int | None = None,
                      progress: bool = True) -> int:
    """Decode every image of ``datasets`` (name → split → dataset) once; raise one DataError naming the bad ones.

    Returns the number of distinct images checked. A collective under torchrun: call it on every rank.
    """
    refs = sorted({ref for by_split in datasets.values() for ds in by_split.values() for ref in dataset_image_refs(ds)},
                  key=lambda r: (str(r.file), r.member))
    if not refs:
        return 0
    manifests = _Manifests(refs)
    todo = [ref for ref in refs if not manifests.known_good(ref)]
    mine = todo[dist.rank()::dist.world_size()]
    bad = _check_all(mine, workers, progress and dist.is_main(), len(todo))
    all_bad = sorted((b for rank_bad in dist.gather_objects(bad) for b in rank_bad), key=lambda b: b[0])
    if dist.is_main():
        manifests.record(ref for ref in todo if ref.label not in {label for label, _ in all_bad})
    if all_bad:
        first = all_bad[0][1]
        more = f"; {len(all_bad) - 1} more of the {len(refs)} images are bad too, e.g. {all_bad[1][0]}" \
            if len(all_bad) > 1 else ""
        raise DataError(f"{first}{more} (checked before the run wrote anything; run.validate_images: false skips the "
                        "check)")
    return len(refs)


def _check_all(refs: Sequence[ImageRef], workers: int | None, progress: bool, total: int) -> list[tuple[str, str]]:
    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    bad = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(refs), desc=f"checking {total} images", unit="img", leave=False,
                 disable=None if progress and refs else True) as bar:  # None: only on a terminal
        for ref, problem in zip(refs, pool.map(ImageRef.check, refs)):
            bar.update()
            if problem is not None:
                bad.append((ref.label, problem))
    return bad


class _Manifests:
    """Checked images by folder: ``image_checks/<sha of the folder>.json`` = {"folder", "files": {name: [size, mtime]}}."""

    def __init__(self, refs: Iterable[ImageRef]) -> None:
        self.dir = cache_dir() / "image_checks"
        self.entries: dict[Path, dict[str, Stamp]] = {}
        self.stamps: dict[Path, Stamp | None] = {}
        for ref in refs:
            folder = ref.file.parent
            if folder not in self.entries:
                self.entries[folder] = self._read(folder)

    def _path(self, folder: Path) -> Path:
        return self.dir / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]}.json"

    def _read(self, folder: Path) -> dict[str, Stamp]:
        try:
            data = json.loads(self._path(folder).read_text())
            return {k: tuple(v) for k, v in data["files"].items()} if data.get("folder") == str(folder.resolve()) else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # no manifest yet, or an unreadable one: check again

    def _stamp(self, file: Path) -> Stamp | None:
        if file not in self.stamps:
            try:
                st = file.stat()
                self.stamps[file] = (st.st_size, st.st_mtime_ns)
            except OSError:
                self.stamps[file] = None
        return self.stamps[file]

    @staticmethod
    def _name(ref: ImageRef) -> str:
        return ref.file.name + (f"::{ref.member}" if ref.member else "")

    def known_good(self, ref: ImageRef) -> bool:
        stamp = self._stamp(ref.file)
        return stamp is not None and self.entries[ref.file.parent].get(self._name(ref)) == stamp

    def record(self, good: Iterable[ImageRef]) -> None:
        changed: set[Path] = set()
        for ref in good:
            stamp = self._stamp(ref.file)
            if stamp is not None:
                self.entries[ref.file.parent][self._name(ref)] = stamp
                changed.add(ref.file.parent)
        for folder in changed:
            try:
                write_json_atomic(self._path(folder), {"folder": str(folder.resolve()), "files": {
                    k: list(v) for k, v in sorted(self.entries[folder].items())}}, indent=None)
            except OSError:
                pass  # an unwritable cache only costs the next run another check

