"""Config keys and their defaults, checked the same way for every component, built-in or a user's.

A registered component (model, dataset builder, scheduler, hook) declares its keys in ONE place, its
``default_config``: a mapping, or the name of a YAML file under ``vlmkit/configs/`` (the built-ins use files, so the
defaults read like documentation). A given config is then checked against it — an unknown key is an error with its
dotted path and the closest known key, a value of another type is an error — and merged over it. The config loader
(``vlmkit/config.py``) and ``Registry.build`` both go through :func:`with_defaults`, so ``MODELS.build({...})`` in
Python is as strict as a project YAML.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmkit.errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"  # shipped inside the package (setup.py package_data)


def read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml's own errors carry line numbers; keep them on one line
        raise ConfigError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping")
    return cfg


def defaults_of(entry: Any) -> DictConfig | None:
    """A registered component's ``default_config`` as a DictConfig (None when it declares none: keys unchecked)."""
    declared = getattr(entry, "default_config", None)
    if declared is None:
        return None
    if isinstance(declared, (str, Path)):
        return read_yaml(CONFIG_ROOT / declared)
    return OmegaConf.create(dict(declared))


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return isinstance(value, type(default))
    if isinstance(default, (list, ListConfig)):
        return isinstance(value, (list, ListConfig))
    if isinstance(default, (dict, DictConfig)):
        return isinstance(value, (dict, DictConfig))
    return True


def check_keys(defaults: DictConfig, given: DictConfig, where: str, source: str, skip: tuple[str, ...] = ()) -> None:
    """Reject keys of ``given`` that ``defaults`` lacks and values whose type differs. An empty default mapping is open.

    ``where`` is the dotted path of ``given`` (``model``, ``run.scheduler``), ``source`` the file or call it came from;
    keys in ``skip`` are checked elsewhere.
    """
    if len(defaults) == 0:
        return
    for key in given.keys():
        if key in skip:
            continue
        dotted = f"{where}.{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults.keys()], n=1, cutoff=0.6)
            hint = (f"; did you mean '{where}.{close[0]}'?" if close
                    else f"; known keys: {', '.join(map(str, defaults.keys()))}")
            raise ConfigError(f"unknown config key '{dotted}' in {source}{hint}")
        d = OmegaConf.to_container(defaults, resolve=False)[key]
        g = given._get_node(key)
        g_val = g._value() if g is not None else None
        if isinstance(g_val, str) and g_val.startswith("${"):
            continue  # interpolations are checked after resolution by the component that reads them
        g_plain = OmegaConf.to_container(given, resolve=True)[key] if not isinstance(g_val, str) else g_val
        if not _type_ok(d, g_plain):
            raise ConfigError(
                f"config key '{dotted}' in {source} must be {type(d).__name__} (like its default {d!r}), got {g_plain!r}"
            )
        if isinstance(d, dict) and isinstance(given[key], DictConfig):
            check_keys(defaults[key], given[key], dotted, source)


def as_config(cfg: Mapping[str, Any] | None) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.create(dict(cfg or {}))
    except OmegaConfBaseException as e:
        raise ConfigError(f"not a config mapping: {' '.join(str(e).split())}") from e


def with_defaults(defaults: DictConfig | None, given: Mapping[str, Any], where: str, source: str) -> DictConfig:
    """``given`` checked against ``defaults`` and merged over them (``given`` alone when there are no defaults)."""
    given = as_config(given)
    if defaults is None:
        return given
    check_keys(defaults, given, where, source)
    return OmegaConf.merge(defaults, given)  # type: ignore[return-value]
