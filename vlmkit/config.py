"""Run configuration: project YAML ⊕ component defaults ⊕ ``--options``, validated, resolved and dumped.

A project YAML has three sections::

    extends: ../lavin/sqa_7b.yaml      # optional: a base project this one changes (a path, or a list of paths);
                                       # `datasets: {name: null}` drops a dataset the base uses
    model:    {arch: lavin, ...}       # over configs/models/<arch>.yaml
    datasets: {scienceqa: {...}}       # each over configs/datasets/<name>.yaml
    run:      {task: scienceqa, ...}   # over configs/run.yaml

Each default lives in exactly one place: the component's YAML under ``configs/``. A key that is not in the defaults is
rejected with its dotted path and the closest known key; a value whose type differs from the default's is rejected too
(ints are accepted for floats; a ``null`` default accepts any value). Values may use OmegaConf interpolation, e.g.
``${oc.env:VLMKIT_DATA,data}/scienceqa`` to read a path from the environment.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmkit.errors import ConfigError
from vlmkit.registry import MODELS, import_modules

SECTIONS = ("model", "datasets", "run")
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml's own errors carry line numbers; keep them on one line
        raise ConfigError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return cfg


def load_project(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a project YAML and the chain of projects it ``extends`` (child keys win)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path} extends itself through {' -> '.join(str(p) for p in _seen)}")
    cfg = _read_yaml(path)
    parents = cfg.pop("extends", None)
    if parents is None:
        return cfg
    parents = [parents] if isinstance(parents, str) else list(parents)
    base = OmegaConf.create({})
    for parent in parents:
        base = OmegaConf.merge(base, load_project(path.parent / parent, _seen + (path,)))
    return OmegaConf.merge(base, cfg)


def defaults_for(section: str, name: str | None = None) -> DictConfig | None:
    """The defaults of one component: ``configs/run.yaml``, ``configs/models/<arch>.yaml``, ``configs/datasets/<name>.yaml``.

    A model registered outside vlmkit may carry its defaults as a ``default_config`` mapping on its class instead.
    Returns None when a component has no defaults (its keys are then passed through unchecked).
    """
    if section == "run":
        return _read_yaml(CONFIG_ROOT / "run.yaml")
    sub = {"model": "models", "datasets": "datasets"}[section]
    path = CONFIG_ROOT / sub / f"{name}.yaml"
    if path.is_file():
        return _read_yaml(path)
    if section == "model":
        entry = MODELS.get(name)
        if getattr(entry, "default_config", None) is not None:
            return OmegaConf.create({"arch": name, **dict(entry.default_config)})
    return None


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


def _validate(defaults: DictConfig, given: DictConfig, where: str, source: str) -> None:
    """Reject keys of ``given`` that ``defaults`` lacks and values whose type differs. An empty default mapping is open."""
    if len(defaults) == 0:
        return
    for key in given.keys():
        dotted = f"{where}.{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults.keys()], n=1, cutoff=0.6)
            hint = f"; did you mean '{where}.{close[0]}'?" if close else f"; known keys: {', '.join(map(str, defaults.keys()))}"
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
            _validate(defaults[key], given[key], dotted, source)


def load_config(path: str | Path, options: Sequence[str] = (), imports: Iterable[str] = ()) -> DictConfig:
    """Build the run config from a project YAML, its defaults and ``--options a.b=c`` overrides."""
    project = load_project(path)
    unknown = [k for k in project.keys() if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' in {path}; a project has only: {', '.join(SECTIONS)} (and extends)")
    try:
        given = OmegaConf.merge(project, OmegaConf.from_dotlist(list(options)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad --options {list(options)}: {' '.join(str(e).split())}") from e
    source = f"{path}" + (" / --options" if options else "")
    for key in given.keys():
        if key not in SECTIONS:
            raise ConfigError(f"unknown section '{key}' in --options; a project has only: {', '.join(SECTIONS)}")

    run_defaults = defaults_for("run")
    run_given = given.get("run", OmegaConf.create({}))
    _validate(run_defaults, run_given, "run", source)
    run = OmegaConf.merge(run_defaults, run_given)
    import_modules(list(run.get("imports") or []) + list(imports))

    model_given = given.get("model", None)
    if model_given is None or "arch" not in model_given:
        raise ConfigError(f"{source} has no model.arch (one of: {', '.join(MODELS.names())})")
    model_defaults = defaults_for("model", model_given.arch)
    if model_defaults is not None:
        _validate(model_defaults, model_given, "model", source)
        model = OmegaConf.merge(model_defaults, model_given)
    else:
        model = model_given

    datasets = OmegaConf.create({})
    for name, ds_given in (given.get("datasets") or {}).items():
        if ds_given is None:  # `datasets: {name: null}` in a child project drops a dataset its parent uses
            continue
        ds_defaults = defaults_for("datasets", name)
        if ds_defaults is None:
            from vlmkit.registry import DATASETS

            DATASETS.get(name)  # an unknown dataset name is an error that lists the registered ones
            datasets[name] = ds_given
            continue
        _validate(ds_defaults, ds_given, f"datasets.{name}", source)
        datasets[name] = OmegaConf.merge(ds_defaults, ds_given)

    cfg = OmegaConf.create({"model": model, "datasets": datasets, "run": run})
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve {source}: {' '.join(str(e).split())}") from e
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain-dict copy (for checkpoints and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
