"""Registries: one object per kind of component, filled by decorators, built from config mappings.

    @MODELS.register("lavin")
    class LaVIN(nn.Module): ...

    model = MODELS.build({"arch": "lavin", ...})

A user's own module registers the same way; ``run.imports`` (or ``--import``) imports it before the run is built.

vlmkit's own components are known by name before their modules are imported (:data:`BUILTINS`, name →
``"module:Class"``). Listing them (``vlmkit list``, :meth:`Registry.names`, :meth:`Registry.doc`) imports none of
them, so not torch either; :meth:`Registry.get` imports only the module of the entry asked for, where its
``@register`` decorator runs, so a run imports the modules of the components it uses and no others.
"""
from __future__ import annotations

import difflib
import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vlmkit.errors import ConfigError, UnknownNameError

T = TypeVar("T")
#: :func:`_source_docstring`'s answer when the source file does not tell (:meth:`Registry.doc` then imports the entry).
_UNREAD = object()


class Registry:
    """A name → class (or factory) table for one kind of component.

    ``builtins`` (name → ``"module:Class"``) are entries whose module is imported on their first :meth:`get`.
    """

    def __init__(self, kind: str, key: str = "type", builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.key = key  # the config field that names the entry: "arch" for models, "type" elsewhere
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = dict(builtins or {})  # name → "module:Class", until that module registers it

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register a class or function under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            module, qualname = obj.__module__, obj.__qualname__  # type: ignore[attr-defined]
            where = f"{module}.{qualname}"
            if key in self._lazy:  # a built-in name: only its own module may fill it in
                if self._lazy[key] != f"{module}:{qualname}":
                    raise ValueError(f"{self.kind} '{key}' is already registered by "
                                     f"{self._lazy[key].replace(':', '.')}; choose another name for {where}")
                del self._lazy[key]
            elif key in self._entries and self._entries[key] is not obj:
                old = self._entries[key]
                raise ValueError(
                    f"{self.kind} '{key}' is already registered by {old.__module__}.{old.__qualname__}; "
                    f"choose another name for {where}"
                )
            self._entries[key] = obj
            return obj

        return add

    def get(self, name: str) -> Any:
        """The entry registered as ``name``; an unknown name lists the closest registered names."""
        if name in self._lazy:
            self._import(name)
        if name not in self._entries:
            registered = self.names()
            close = difflib.get_close_matches(str(name), registered, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{hint or ';'} registered: {', '.join(registered) or '(none)'}"
            )
        return self._entries[name]

    def _import(self, name: str) -> None:
        """Import the module of built-in entry ``name``; its ``@register`` decorator replaces the placeholder."""
        module = self._lazy[name].partition(":")[0]
        importlib.import_module(module)
        if name in self._lazy:
            raise RuntimeError(f"{module} did not register {self.kind} '{name}' as vlmkit.registry.BUILTINS says "
                               f"({self._lazy[name]})")

    def doc(self, name: str) -> str | None:
        """The docstring of entry ``name``; a built-in not imported yet is read from its source file, not imported."""
        if name in self._lazy:
            found = _source_docstring(self._lazy[name])
            if found is not _UNREAD:
                return found  # type: ignore[return-value]
        return getattr(self.get(name), "__doc__", None)

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
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterable[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _source_docstring(target: str) -> object:
    """The docstring of top-level class ``Class`` of ``"vlmkit.<module>:Class"``, read from the module's source file
    without importing it; :data:`_UNREAD` when the file or the class's own docstring is not there (a class without one
    may still get a ``__doc__`` at import, e.g. from ``@dataclass``)."""
    import ast

    module, _, qualname = target.partition(":")
    package, *parts = module.split(".")
    if package != __name__.partition(".")[0] or not parts:
        return _UNREAD
    tree = _parsed(Path(__file__).resolve().parent.joinpath(*parts).with_suffix(".py"))
    for node in tree.body if tree is not None else ():
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == qualname:
            found = ast.get_docstring(node, clean=False)
            return _UNREAD if found is None else found
    return _UNREAD


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> Any:
    """The syntax tree of a source file (each parsed once: several entries live in one module), None if unreadable."""
    import ast

    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


#: vlmkit's own components: registry → name → "module:Class" where its ``@register`` decorator runs. Nothing is imported
#: until an entry is asked for (tests/test_startup.py checks this table against what the modules register).
BUILTINS: dict[str, dict[str, str]] = {
    "MODELS": {"lavin": "vlmkit.models.lavin:LaVIN", "openflamingo": "vlmkit.models.flamingo.model:OpenFlamingo"},
    "TASKS": {"scienceqa": "vlmkit.tasks.scienceqa:ScienceQATask", "vqa": "vlmkit.tasks.vqa:VQATask",
              "caption": "vlmkit.tasks.caption:CaptionTask", "image_text": "vlmkit.tasks.image_text:ImageTextTask"},
    "DATASETS": {"scienceqa": "vlmkit.data.scienceqa:ScienceQABuilder", "vqav2": "vlmkit.data.vqav2:VQAv2Builder",
                 "coco_caption": "vlmkit.data.coco:COCOCaptionBuilder",
                 "image_text": "vlmkit.data.image_text:ImageTextBuilder"},
    "PROCESSORS": {"scienceqa_prompt": "vlmkit.processors.prompts:ScienceQAPrompt"},
    "SCHEDULERS": {"constant": "vlmkit.engine.schedulers:ConstantSchedule",
                   "warmup_cosine": "vlmkit.engine.schedulers:WarmupCosineSchedule",
                   "step_decay": "vlmkit.engine.schedulers:StepDecaySchedule",
                   "exponential_decay": "vlmkit.engine.schedulers:ExponentialDecaySchedule",
                   "cyclical": "vlmkit.engine.schedulers:CyclicalSchedule"},
    "HOOKS": {"wandb": "vlmkit.engine.hooks:WandbHook"},
}

MODELS = Registry("model", key="arch", builtins=BUILTINS["MODELS"])
TASKS = Registry("task", builtins=BUILTINS["TASKS"])
DATASETS = Registry("dataset", builtins=BUILTINS["DATASETS"])
PROCESSORS = Registry("processor", builtins=BUILTINS["PROCESSORS"])
SCHEDULERS = Registry("scheduler", builtins=BUILTINS["SCHEDULERS"])
HOOKS = Registry("hook", builtins=BUILTINS["HOOKS"])


def import_modules(names: Iterable[str]) -> None:
    """Import user modules so that their ``@MODELS.register`` decorators run."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import module '{name}' listed in run.imports/--import: {e}") from e


#: The modules that register vlmkit's own components (each imported on first use of one of its entries).
BUILTIN_MODULES = tuple(dict.fromkeys(target.partition(":")[0] for table in BUILTINS.values()
                                      for target in table.values()))
_builtins_loaded = False


def load_builtins() -> None:
    """Import every built-in component's module now (a registry imports each on first use anyway)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
