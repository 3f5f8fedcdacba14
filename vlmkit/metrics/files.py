"""Shapes of the JSON files the scorers take (reading them: :func:`vlmkit.io.read_json`)."""
from __future__ import annotations

from typing import Any

from vlmkit.errors import DataError


def list_field(obj: Any, key: str, what: str, source: str) -> list[Any]:
    """``obj`` if it is a list, else ``obj[key]`` (the official files wrap their lists: ``{"annotations": [...]}``)."""
    if isinstance(obj, dict) and key in obj:
        obj = obj[key]
    if not isinstance(obj, list):
        raise DataError(f"{what} in {source} must be a JSON list (or an object with a '{key}' list), "
                        f"got {type(obj).__name__}")
    return obj
