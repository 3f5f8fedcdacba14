"""Run configuration: project YAML ⊕ component defaults ⊕ ``--options``, validated, resolved and dumped.

A project YAML has three sections::

    extends: ../lavin/sqa_7b.yaml      # optional: a base project this one changes (a path, or a list of paths);
                                       # `datasets: {name: null}` drops a dataset the base uses
    model:    {arch: lavin, ...}       # over vlmkit/configs/models/<arch>.yaml
    datasets: {scienceqa: {...}}       # each over vlmkit/configs/datasets/<name>.yaml
    run:      {task: scienceqa, ...}   # over vlmkit/configs/run.yaml

Each default lives in exactly one place: ``vlmkit/configs/run.yaml`` for the run, and for every registered component
(model, dataset, scheduler, hook) its ``default_config`` — a YAML under ``vlmkit/configs/`` for the built-ins, a mapping
on a user's class (:mod:`vlmkit.schema`). A key that is not in the defaults is rejected with its dotted path and the
closest known key; a value whose type differs from the default's is rejected too (ints are accepted for floats; a
``null`` default accepts any value). ``run.scheduler`` is checked against the schedule it names, each ``run.hooks``
entry against its hook. Values may use OmegaConf interpolation, e.g. ``${oc.env:VLMKIT_DATA,data}/scienceqa``.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmkit.errors import ConfigError
from vlmkit.registry import DATASETS, HOOKS, MODELS, SCHEDULERS, import_modules
from vlmkit.schema import CONFIG_ROOT, check_keys, defaults_of, read_yaml, with_defaults

SECTIONS = ("model", "datasets", "run")
#: Keys of run.scheduler that every schedule takes; the rest are the named schedule's own (its default_config).
COMMON_SCHEDULER_KEYS = ("name", "warmup_epochs", "warmup_steps")


def load_project(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a project YAML and the chain of projects it ``extends`` (child keys win)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path} extends itself through {' -> '.join(str(p) for p in _seen)}")
    cfg = read_yaml(path)
    parents = cfg.pop("extends", None)
    if parents is None:
        return cfg
    parents = [parents] if isinstance(parents, str) else list(parents)
    base = OmegaConf.create({})
    for parent in parents:
        base = OmegaConf.merge(base, load_project(path.parent / parent, _seen + (path,)))
    return OmegaConf.merge(base, cfg)


def defaults_for(section: str, name: str | None = None) -> DictConfig | None:
    """The defaults of one component: ``vlmkit/configs/run.yaml`` for ``run``, else the registered model's or dataset
    builder's ``default_config`` (see :mod:`vlmkit.schema`); None when it declares none (keys pass unchecked)."""
    if section == "run":
        return read_yaml(CONFIG_ROOT / "run.yaml")
    registry = {"model": MODELS, "datasets": DATASETS}[section]
    defaults = defaults_of(registry.get(name))
    if section == "model" and defaults is not None and "arch" not in defaults:
        defaults["arch"] = name  # a user's default_config need not repeat its own name
    return defaults


def _scheduler(run_defaults: DictConfig, given: Any, source: str) -> DictConfig:
    """``run.scheduler``: the common keys (run.yaml) ⊕ the named schedule's own ``default_config``."""
    common = run_defaults.scheduler
    given = OmegaConf.create({}) if given is None else given
    name = given.get("name", common.name)
    defaults = OmegaConf.merge(common, defaults_of(SCHEDULERS.get(name)) or {})
    return with_defaults(defaults, given, "run.scheduler", source)


def _hooks(entries: Any, source: str) -> ListConfig:
    """``run.hooks``: each entry ``{type: <HOOKS name>, ...}`` checked against (and merged over) that hook's defaults."""
    checked = []
    for i, entry in enumerate(entries or []):
        where = f"run.hooks[{i}]"
        if not isinstance(entry, (dict, DictConfig)) or "type" not in entry:
            raise ConfigError(f"{where} in {source} must be a mapping with a 'type' key (one of: "
                              f"{', '.join(HOOKS.names())}), got {entry!r}")
        defaults = defaults_of(HOOKS.get(str(entry["type"])))
        if defaults is not None:
            defaults["type"] = entry["type"]
        checked.append(with_defaults(defaults, entry, where, source))
    return OmegaConf.create(checked)  # type: ignore[return-value]


def _generate_options(arch: str, given: Any, source: str) -> None:
    """``run.generate`` keys must be parameters of the model's ``generate`` (any key when it takes ``**kwargs``)."""
    generate = getattr(MODELS.get(arch), "generate", None)
    if generate is None or not given:
        return
    params = inspect.signature(generate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n not in ("self", "batch", "synced_gpus", "streamer")
               and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean 'run.generate.{close[0]}'?" if close else f"; it takes: {', '.join(allowed)}"
            raise ConfigError(f"unknown config key 'run.generate.{key}' in {source}: model '{arch}' generate() has no "
                              f"such parameter{hint}")


#: Valid ranges of the numeric run keys: (lowest, lowest is allowed); null values are checked where they mean "off".
RUN_RANGES: dict[str, tuple[float, bool]] = {
    "batch_size": (1, True), "eval_batch_size": (1, True), "num_workers": (0, True), "epochs": (1, True),
    "max_steps": (1, True), "accum_iter": (1, True), "effective_batch": (1, True), "lr": (0, False), "blr": (0, False),
    "min_lr": (0, True), "weight_decay": (0, True), "eps": (0, False), "grad_clip": (0, False), "save_every": (0, True),
    "eval_every": (0, True), "log_every": (1, True), "vision_cache_gb": (0, True),
}


def _parse_options(options: Sequence[str]) -> DictConfig:
    """``--options a.b=value ...``; an item without ``=`` or with an unparsable value is one error line."""
    for item in options:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            fix = f"; to set null write '{item}=null'" if key.strip() else ": it has no key before '='"
            raise ConfigError(f"--options item '{item}' is not KEY=VALUE (e.g. run.lr=2e-3){fix}")
        try:
            OmegaConf.from_dotlist([item])
        except Exception as e:  # OmegaConf's own errors and yaml's parser errors for the value
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"--options item '{item}': the value '{value}' cannot be parsed ({first}); quote "
                              "strings, close brackets: run.betas=[0.9,0.95]") from e
    return OmegaConf.from_dotlist(list(options))


def check_run_ranges(run: DictConfig, source: str) -> None:
    """Every numeric run key within its valid range (RUN_RANGES), named by its dotted path."""
    for key, (low, inclusive) in RUN_RANGES.items():
        value = run.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low or (value == low and not inclusive):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise ConfigError(f"run.{key} must be {bound}, got {value!r} (in {source})")
    betas = run.get("betas")
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"run.betas must be two numbers in [0, 1), got {list(betas)} (in {source})")


def load_config(path: str | Path, options: Sequence[str] = (), imports: Iterable[str] = ()) -> DictConfig:
    """Build the run config from a project YAML, its defaults and ``--options a.b=c`` overrides."""
    project = load_project(path)
    unknown = [k for k in project.keys() if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' in {path}; a project has only: {', '.join(SECTIONS)} (and extends)")
    given = OmegaConf.merge(project, _parse_options(options))
    source = f"{path}" + (" / --options" if options else "")
    for key in given.keys():
        if key not in SECTIONS:
            raise ConfigError(f"unknown section '{key}' in --options; a project has only: {', '.join(SECTIONS)}")

    run_defaults = defaults_for("run")
    run_given = given.get("run", OmegaConf.create({}))
    check_keys(run_defaults, run_given, "run", source, skip=("scheduler", "hooks"))
    import_modules(list(run_given.get("imports") or []) + list(imports))
    run = OmegaConf.merge(run_defaults, {k: v for k, v in run_given.items() if k not in ("scheduler", "hooks")})
    run.scheduler = _scheduler(run_defaults, run_given.get("scheduler"), source)
    run.hooks = _hooks(run_given.get("hooks"), source)

    model_given = given.get("model", None)
    if model_given is None or "arch" not in model_given:
        raise ConfigError(f"{source} has no model.arch (one of: {', '.join(MODELS.names())})")
    model = with_defaults(defaults_for("model", model_given.arch), model_given, "model", source)
    _generate_options(str(model_given.arch), run.generate, source)

    datasets = OmegaConf.create({})
    for name, ds_given in (given.get("datasets") or {}).items():
        if ds_given is None:  # `datasets: {name: null}` in a child project drops a dataset its parent uses
            continue
        datasets[name] = with_defaults(defaults_for("datasets", name), ds_given, f"datasets.{name}", source)

    cfg = OmegaConf.create({"model": model, "datasets": datasets, "run": run})
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve {source}: {' '.join(str(e).split())}") from e
    check_run_ranges(cfg.run, source)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config (atomically, so a crash never leaves half a file)."""
    from vlmkit.io import write_text_atomic

    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain-dict copy (for checkpoints and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
