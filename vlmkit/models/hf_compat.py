"""The places where vlmkit depends on how transformers calls or names things, in one file.

transformers changes keyword names and call patterns between minor releases (5.2x renamed the cache argument
``past_key_values`` → ``cache`` and stopped passing ``cache_position``). vlmkit reads such details here, from the objects
themselves (a signature, the type of an argument), never from a guess about one release. docs/compatibility.md lists
every dependency on transformers' internals and the versions tested.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _cache_class() -> type:
    from transformers import Cache

    return Cache


def find_cache(args: Iterable[Any], kwargs: dict[str, Any]) -> Any | None:
    """The KV-cache object among a call's arguments, under whatever keyword (or position) this release uses."""
    cache_type = _cache_class()
    found = [value for value in (*args, *kwargs.values()) if isinstance(value, cache_type)]
    if len(found) > 1 and any(value is not found[0] for value in found[1:]):
        raise RuntimeError("a language-model call carries two different KV caches; vlmkit cannot tell which is used")
    return found[0] if found else None


def call_input_ids(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """``input_ids`` of a causal-LM call, passed by keyword or as the first positional argument."""
    input_ids = kwargs.get("input_ids")
    if input_ids is None and args and isinstance(args[0], torch.Tensor):
        input_ids = args[0]
    if input_ids is None:
        raise RuntimeError("the language model was called without input_ids (inputs_embeds only?): the images cannot "
                           "be placed on its tokens")
    return input_ids



def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword this release's causal LM takes its KV cache by (``past_key_values`` → ``cache`` in 5.2x)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise RuntimeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; this transformers "
                       "release is not supported (see docs/compatibility.md)")


def new_cache(model: torch.nn.Module) -> Any:
    """An empty dynamic KV cache for ``model`` (what ``generate`` would create)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # releases whose DynamicCache takes no config
        return DynamicCache()


def repeat_cache_rows(cache: Any, repeats: int) -> None:
    """Each row of a KV cache repeated ``repeats`` times in place (row i → rows i·r … i·r+r-1, as ``generate``
    expands its inputs for beam search)."""
    if not hasattr(cache, "batch_repeat_interleave"):
        raise RuntimeError(f"{type(cache).__name__} cannot repeat its rows (no batch_repeat_interleave); this "
                           "transformers release is not supported (see docs/compatibility.md)")
    cache.batch_repeat_interleave(repeats)
