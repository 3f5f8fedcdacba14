"""Registries: one object per kind of component, filled by decorators, built from config mappings.

    @MODELS.register("lavin")
    class LaVIN(nn.Module): ...

    model = MODELS.build({"arch": "lavin", ...})

A user's own module registers the same way; ``run.imports`` (or ``--import``) imports it before the run is built.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from vlmkit.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry:
    """A name → class (or factory) table for one kind of component."""

    def __init__(self, kind: str, key: str = "type") -> None:
        self.kind = kind
        self.key = key  # the config field that names the entry: "arch" for models, "type" elsewhere
        self._entries: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register a class or function under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries and self._entries[key] is not obj:
                old = self._entries[key]
                raise ValueError(
                    f"{self.kind} '{key}' is already registered by {old.__module__}.{old.__qualname__}; "
                    f"choose another name for {obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]
                )
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        """The entry registered as ``name``; an unknown name lists the closest registered names."""
        load_builtins()
        if name not in self._entries:
            registered = sorted(self._entries)
            close = difflib.get_close_matches(str(name), registered, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{hint or ';'} registered: {', '.join(registered) or '(none)'}"
            )
        return self._entries[name]

    def build(self, cfg: Mapping[str, Any], where: str | None = None, **kwargs: Any) -> Any:
        """Instantiate the entry named by ``cfg[self.key]`` (see :meth:`build_named`)."""
        if self.key not in cfg:
            raise ConfigError(f"{where or self.kind} config has no '{self.key}' key naming what to build "
                              f"(one of: {', '.join(self.names())})")
        return self.build_named(str(cfg[self.key]), cfg, where, **kwargs)

    def build_named(self, name: str, cfg: Mapping[str, Any], where: str | None = None, **kwargs: Any) -> Any:
        """Instantiate entry ``name`` from ``cfg``, checked against and merged over its ``default_config``.

        ``where`` is the config path named in errors (``model``, ``datasets.vqav2``, ``run.hooks[0]``). An entry with a
        ``from_config`` classmethod receives the whole mapping; otherwise the keys (but the name key) are passed as
        keyword arguments.
        """
        from omegaconf import OmegaConf

        from vlmkit.schema import defaults_of, with_defaults

        entry = self.get(name)
        defaults = defaults_of(entry)
        if defaults is not None and self.key in cfg and self.key not in defaults:
            defaults[self.key] = name
        full = with_defaults(defaults, cfg, where or self.kind, f"{self.kind} '{name}'")
        if hasattr(entry, "from_config"):
            return entry.from_config(full, **kwargs)
        rest = {k: v for k, v in OmegaConf.to_container(full, resolve=True).items() if k != self.key}
        return entry(**rest, **kwargs)

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterable[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS = Registry("model", key="arch")
TASKS = Registry("task")
DATASETS = Registry("dataset")
PROCESSORS = Registry("processor")
SCHEDULERS = Registry("scheduler")
HOOKS = Registry("hook")


def import_modules(names: Iterable[str]) -> None:
    """Import user modules so that their ``@MODELS.register`` decorators run."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import module '{name}' listed in run.imports/--import: {e}") from e


# vlmkit's own components, imported on first registry use (explicit, so a reader can find every registration).
BUILTIN_MODULES = (
    "vlmkit.engine.schedulers",
    "vlmkit.engine.hooks",
    "vlmkit.models.lavin",
    "vlmkit.models.flamingo",
    "vlmkit.data.scienceqa",
    "vlmkit.data.vqav2",
    "vlmkit.data.coco",
    "vlmkit.data.image_text",
    "vlmkit.tasks.scienceqa",
    "vlmkit.tasks.vqa",
    "vlmkit.tasks.caption",
    "vlmkit.tasks.image_text",
)
_builtins_loaded = False


def load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
