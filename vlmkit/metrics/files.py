"""Reading the JSON files the scorers take, with one-line errors that say what, where and how to fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, missing_file


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
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} is not valid JSON: {path} (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"{how}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e


def list_field(obj: Any, key: str, what: str, source: str) -> list[Any]:
    """``obj`` if it is a list, else ``obj[key]`` (the official files wrap their lists: ``{"annotations": [...]}``)."""
    if isinstance(obj, dict) and key in obj:
        obj = obj[key]
    if not isinstance(obj, list):
        raise DataError(f"{what} in {source} must be a JSON list (or an object with a '{key}' list), "
                        f"got {type(obj).__name__}")
    return obj
