"""Files and seeds, one way each: JSON reading with one-line errors, atomic writes, image decoding, seed mixing.

Every reader turns a missing, unreadable or malformed input into a :class:`~vlmkit.errors.DataError` that says what
the file is, where it is and how to obtain or fix it. Every writer writes a temporary file next to the target and moves
it into place with ``os.replace``, so a crash never leaves half a file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlmkit.errors import DataError, missing_file

# What PIL raises on a truncated or non-image file (SyntaxError and ValueError come from some broken headers).
IMAGE_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def read_json(path: str | Path, what: str, how: str) -> Any:
    """Load a JSON file; a missing, unreadable or malformed file becomes a one-line :class:`DataError`.

    ``what`` names the file for the message ("VQA annotations"), ``how`` says how to obtain or fix it.
    """
    path = Path(path)
    if not path.exists():
        raise missing_file(path, what, how)
    if path.is_dir():
        raise DataError(f"{what} must be a JSON file, but {path} is a directory ({how})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=lambda pairs: _unique_keys(pairs, path, what, how))
    except json.JSONDecodeError as e:
        raise DataError(f"{what} is not valid JSON: {path} (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"{how}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {' '.join(str(e).split())} ({how})") from e


def _unique_keys(pairs: list[tuple[str, Any]], path: Path, what: str, how: str) -> dict[str, Any]:
    """A JSON object whose keys are unique (``json`` would silently keep the last of two equal keys)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DataError(f"{what} {path} has the key {key!r} twice (only one value can count); {how}")
        obj[key] = value
    return obj


def check_fields(item: Any, fields: Mapping[str, type | tuple[type, ...]], what: str, path: Path, how: str) -> None:
    """``item`` is an object holding every field of ``fields`` with a value of its type; else one DataError naming the
    file, the item (``what``), the field and the fix."""
    if not isinstance(item, Mapping):
        raise DataError(f"{what} in {path} is a {type(item).__name__}, not an object; {how}")
    for name, types in fields.items():
        if name not in item:
            raise DataError(f"{what} in {path} has no '{name}' field; {how}")
        if not isinstance(item[name], types) or isinstance(item[name], bool) and bool not in _as_tuple(types):
            names = "/".join(t.__name__ for t in _as_tuple(types))
            raise DataError(f"{what} in {path}: '{name}' is {item[name]!r} ({type(item[name]).__name__}), expected "
                            f"{names}; {how}")


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def unique_ids(ids: Iterable[Any], what: str, path: Path, how: str) -> None:
    """Every id once; else one DataError naming the first repeated id."""
    seen: set[Any] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"{what} {i!r} appears twice in {path} (ids must be unique); {how}")
        seen.add(i)


def temporary_sibling(path: Path) -> Path:
    """Where an atomic write of ``path`` writes first: a hidden file in the same directory (same file system)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temp files of earlier writes of ``path`` whose process is gone (a save killed by SIGKILL leaves one,
    and checkpoints are large); a live writer's file is left alone. Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) still runs; this process counts as gone (its own stale files)."""
    if pid == os.getpid():
        return False  # our own earlier, failed write of this file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)`` — ``p`` appears complete or not at all; the temp file never stays,
    and temp files that killed earlier writes left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` and move ``tmp`` to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=isinstance(obj, dict)) + "\n")


def decode_image(data: bytes | Path, name: str, how: str = "re-download the file or remove the samples that use it"
                 ) -> Image.Image:
    """An RGB PIL image from a path or bytes; a missing or undecodable image is a DataError naming ``name``."""
    if isinstance(data, Path) and not data.is_file():
        raise missing_file(data, f"image {name}", how)
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.convert("RGB")  # convert() forces a full decode, so truncation is caught here
    except IMAGE_READ_ERRORS as e:
        raise DataError(f"cannot decode image {name}: {' '.join(str(e).split())} ({how})") from e


def stable_seed(*parts: object) -> int:
    """A 64-bit seed mixed from ``parts``: the same in every process and Python run (unlike ``hash()``), and nearby
    inputs (epoch 1 vs 2, rank 0 vs 1) give unrelated seeds. Fits ``random.Random`` and ``torch.Generator``."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime within a process: a 7B checkpoint is read once)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]
