"""Checking the images a chat user hands in: a file that decodes as an image, within byte and pixel limits.

Both front ends (terminal ``/image PATH`` and the web upload) go through :func:`load_chat_image`, so a bad file is the
same one-line message in either, never a traceback and never a half-attached image.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmkit.errors import DataError
from vlmkit.io import IMAGE_READ_ERRORS

#: Defaults of ``--max-image-bytes`` / ``--max-image-pixels``: far above any photo a VLM of 224-336 px input needs,
#: far below what would exhaust a server's memory when decoded.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageLimits:
    """Largest accepted file (bytes) and decoded size (width x height)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def _read_bytes(path: Path, name: str, limits: ImageLimits) -> bytes:
    if not path.exists():
        raise DataError(f"image not found: {name}")
    if not path.is_file():
        raise DataError(f"{name} is not a file")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise DataError(f"{name} is {size:,} bytes; the limit is {limits.max_bytes:,} (--max-image-bytes)")
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes), not an image")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror or e}") from e


def load_chat_image(path: str | Path, limits: ImageLimits = ImageLimits(), name: str | None = None) -> Image.Image:
    """An RGB image from ``path``; anything else is a :class:`DataError` saying why (missing, too large, not an image).

    The header is read first, so the pixel limit holds before the pixels are decoded (no decompression bomb)."""
    path = Path(path).expanduser()
    name = name or str(path)
    data = _read_bytes(path, name, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise DataError(f"{name} is {width}x{height} = {width * height:,} pixels; the limit is "
                                    f"{limits.max_pixels:,} (--max-image-pixels)")
                return img.convert("RGB")  # forces the full decode: a truncated file fails here
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name} is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{name} is not an image (no image format recognised: PNG, JPEG, GIF, BMP, WebP, ...)") from e
    except IMAGE_READ_ERRORS as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{name} is not an image this chat can read (PNG, JPEG, GIF, BMP, WebP, ...): {reason}") from e
