"""The few-shot sweep's protocol files, written by vlmkit/engine/sweep.py (docs/fewshot.md): ``fewshot.jsonl`` (one row
per shots × trial with every metric and its timing), ``fewshot.md`` (mean ± std per shots; the published 9B figures
for the OpenFlamingo-9B setup) and ``protocol.json`` (the fully resolved protocol).
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from vlmkit.config import to_dict
from vlmkit.engine.evaluation import metric_key
from vlmkit.io import write_text_atomic

if TYPE_CHECKING:
    from vlmkit.engine.runner import Runner

SUMMARY_FILE = "fewshot_summary.json"
ROWS_FILE = "fewshot.jsonl"  # one row per (shots, trial)
TABLE_FILE = "fewshot.md"  # mean ± std per shots (+ the published 9B figures for the 9B setup)
PROTOCOL_FILE = "protocol.json"  # the fully resolved protocol
#: Fields of a fewshot.jsonl row that depend on the machine, not on the protocol.
TIMING_FIELDS = ("seconds", "samples_per_s")



logger = logging.getLogger("vlmkit")


def fewshot_datasets(cfg: DictConfig) -> list[str]:
    """Names of the config's datasets that have a ``fewshot`` section."""
    return [str(name) for name, dcfg in cfg.datasets.items() if dcfg.get("fewshot") is not None]


def _fewshot_view(dataset: Any) -> Any:
    """The :class:`~vlmkit.data.fewshot.FewShotDataset` of an evaluated split (under any subset wrapper), or None."""
    while dataset is not None and not hasattr(dataset, "demo_dataset"):
        dataset = getattr(dataset, "dataset", None)
    return dataset


def _per_dataset(cfg: DictConfig, value: Any) -> Any:
    """``value(fewshot_cfg)`` of the one few-shot dataset, or ``{name: value}`` when several disagree."""
    values = {name: value(cfg.datasets[name].fewshot) for name in fewshot_datasets(cfg)}
    distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
    return next(iter(values.values())) if len(distinct) == 1 else values


def sampler_name(fewshot: Any) -> str:
    return "rices" if fewshot.get("rices") else "random"


def point_row(runner: Runner, shots: int, trial: int, results: Mapping[str, Mapping[str, Any]],
              seconds: float) -> dict[str, Any]:
    """The fewshot.jsonl row of one point: every metric per split, the item count, the wall time on this rank."""
    cfg = runner.cfg
    count = 0
    for name, by_split in runner.datasets.items():
        for split, dataset in by_split.items():
            key = metric_key(name, split, len(runner.datasets))
            if key in results:
                counts = [v for k, v in results[key].items() if k.startswith("num_") and isinstance(v, int)]
                count += counts[0] if counts else len(dataset)
    return {"shots": shots, "trial": trial, "seed": _per_dataset(cfg, lambda f: int(f.seed)),
            "sampler": _per_dataset(cfg, sampler_name), "metrics": {k: dict(v) for k, v in results.items()},
            "num_samples": count, "seconds": round(seconds, 4),
            "samples_per_s": round(count / seconds, 3) if seconds > 0 else None}


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def generation_settings(cfg: DictConfig, task: Any) -> dict[str, Any]:
    """The keyword arguments generation runs with: the model's ``generate`` defaults overlaid by ``run.generate``
    (execution details that never change the text, ``synced_gpus`` and ``streamer``, left out)."""
    import inspect

    from vlmkit.registry import MODELS

    settings: dict[str, Any] = {}
    generate = getattr(MODELS.get(str(cfg.model.arch)), "generate", None)
    if generate is not None:
        for name, param in inspect.signature(generate).parameters.items():
            if param.default is not inspect.Parameter.empty and name not in ("synced_gpus", "streamer"):
                settings[name] = param.default
    settings.update(task.generation_kwargs())
    return json.loads(json.dumps(settings, default=str))


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    import vlmkit

    versions: dict[str, str | None] = {"vlmkit": vlmkit.__version__}
    for name, dist_name in (("torch", "torch"), ("transformers", "transformers"), ("open_clip", "open_clip_torch")):
        try:
            versions[name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _file_entry(path: str | None) -> dict[str, Any] | None:
    from vlmkit.io import file_sha256

    if not path:
        return None
    return {"path": str(path), "sha256": file_sha256(path) if Path(path).is_file() else None}


def sweep_protocol(runner: Runner, shots: Sequence[int], trials: int, checkpoint: str | None) -> dict[str, Any]:
    """protocol.json: everything a sweep's numbers depend on, resolved (the same at any number of ranks).

    Per few-shot dataset: the evaluated items (count and ids hash per split), the demo pool (split, size, ids hash), the
    query set of every trial (random demos) or the RICES cache key, prompts, separator, zero-shot demos and
    postprocessing; then generation settings, model (arch, hash of the resolved model config, checkpoint sha256),
    library versions and the shots × trials list."""
    from vlmkit.data.fewshot import choose_query_set, ids_sha256, vision_key

    cfg = runner.cfg
    plain = to_dict(cfg)
    datasets: dict[str, Any] = {}
    for name in fewshot_datasets(cfg):
        dcfg, fs = plain["datasets"][name], plain["datasets"][name]["fewshot"]
        evaluated: dict[str, Any] = {}
        demo = None
        for split in runner.splits:
            view = _fewshot_view(runner.datasets.get(name, {}).get(split))
            if view is None:
                continue
            ids = [view.query_dataset.sample_id(i) for i in range(len(view.query_dataset))]
            evaluated[split] = {"num_items": len(ids), "ids_sha256": ids_sha256(ids)}
            demo = view.demo_dataset
        entry: dict[str, Any] = {"evaluated": evaluated, "sampler": sampler_name(fs), "seed": fs["seed"],
                                 "query_set_size": fs["query_set_size"], "demo_split": fs["demo_split"]}
        if demo is not None:
            pool = [demo.sample_id(i) for i in range(len(demo))]
            entry["demo_pool"] = {"split": demo.split, "size": len(pool), "ids_sha256": ids_sha256(pool)}
            if not fs["rices"]:
                query_sets = {}
                for t in range(trials):
                    chosen = [pool[i] for i in choose_query_set(len(pool), int(fs["query_set_size"]), int(fs["seed"]), t)]
                    query_sets[str(t)] = {"size": len(chosen), "ids_sha256": ids_sha256(chosen)}
                entry["query_sets"] = query_sets
        if fs["rices"]:
            entry["rices"] = {"features_dir": fs.get("rices_features_dir"), "vision": vision_key(cfg.model)}
        entry.update({
            "prompt_template": dcfg.get("prompt_template"), "image_token": dcfg.get("image_token"),
            "end_of_chunk_token": dcfg.get("end_of_chunk_token"),
            "demo_answer": dcfg.get("demo_answer"), "demo_separator": fs["demo_separator"],
            "zero_shot_demos": fs["zero_shot_demos"], "postprocess": dcfg.get("postprocess"),
            "max_samples": dcfg.get("max_samples"), "subset_seed": dcfg.get("subset_seed"),
        })
        datasets[name] = entry
    model = plain["model"]
    model_hash = hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "task": plain["run"].get("task"), "main_metric": runner.task.main_metric,
        "shots": list(shots), "trials": trials, "points": [[n, t] for n in shots for t in range(trials)],
        "splits": list(runner.splits), "datasets": datasets,
        "generation": generation_settings(cfg, runner.task),
        "run": {"seed": plain["run"].get("seed"), "amp": plain["run"].get("amp")},
        "model": {"arch": model.get("arch"), "config_sha256": model_hash,
                  "checkpoint": _file_entry(checkpoint), "model_checkpoint": _file_entry(model.get("checkpoint")),
                  "published_setup": published_variant(plain)},
        "versions": _versions(),
    }


def published_variant(config: Mapping[str, Any]) -> str | None:
    """"v1"/"v2" when the config is the OpenFlamingo-9B setup (vlmkit.compare.published.nine_b_variant), and — when
    the LM directory's config.json can be read — its LM really is a 7B (hidden size 4096, 32 layers); else None."""
    from vlmkit.compare.published import nine_b_variant

    variant = nine_b_variant(dict(config))
    if variant is None:
        return None
    path = Path(str(((config.get("model") or {}).get("lm") or {}).get("path") or "")) / "config.json"
    if path.is_file():
        try:
            lm = json.loads(path.read_text())
        except ValueError:
            return None
        width = lm.get("hidden_size", lm.get("d_model"))
        depth = lm.get("num_hidden_layers", lm.get("n_layers"))
        if (width, depth) != (4096, 32):
            return None
    return variant


def _cell(values: Sequence[float], scale: float) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def format_markdown(cfg: DictConfig, task: Any, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                    shots: Sequence[int]) -> str:
    """fewshot.md: per split, mean ± std over trials of every metric per shots (× the task's table scale, as its
    tables); for the OpenFlamingo-9B setup the published OpenFlamingo-9B and Flamingo-9B figures as extra rows."""
    from vlmkit.compare.published import PUBLISHED_SHOTS, published_curves

    scale = float(getattr(task, "table_scale", 1.0))
    main = str(summary["main_metric"])
    trials = int(summary["trials"])
    sampler = _per_dataset(cfg, sampler_name)
    seed = _per_dataset(cfg, lambda f: int(f.seed))
    variant = published_variant(to_dict(cfg))
    lines = [f"# Few-shot sweep: {cfg.model.arch}, task {cfg.run.task}", "",
             f"Mean ± sample std over {trials} trial{'s' if trials > 1 else ''} per shots; demos: "
             f"{sampler if isinstance(sampler, str) else json.dumps(sampler)} (seed "
             f"{seed if isinstance(seed, int) else json.dumps(seed)}). "
             + (f"Metrics × {scale:g} as the task's tables. " if scale != 1 else "")
             + f"Every point: {ROWS_FILE}; how it was made: {PROTOCOL_FILE}.", ""]
    keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    for key in keys:
        by_shots: dict[int, list[Mapping[str, Any]]] = {}
        for r in rows:
            if key in r["metrics"]:
                by_shots.setdefault(int(r["shots"]), []).append(r["metrics"][key])
        names = list(dict.fromkeys(m for ms in by_shots.values() for point in ms for m, v in point.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)))
        names = sorted(names, key=lambda m: (m != main, m.startswith("num_"), names.index(m)))
        lines += [f"## {key}", "", "| shots | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for n in shots:
            points = by_shots.get(n, [])
            cells = []
            for m in names:
                values = [float(p[m]) for p in points if isinstance(p.get(m), (int, float))]
                if not values:
                    cells.append("-")
                elif m.startswith("num_"):
                    cells.append(f"{int(values[0])}")
                else:
                    cells.append(_cell(values, scale))
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
        curves = published_curves(main, variant) if variant is not None and main in [*names] else {}
        if curves:
            cell = summary["splits"].get(key, {})
            lines += [f"### {key}: {main} next to the published 9B results (OpenFlamingo-9B {variant} setup)", "",
                      "| | " + " | ".join(f"{n} shots" for n in shots) + " |", "|---|" + "---|" * len(shots),
                      "| this sweep | " + " | ".join(
                          f"{cell[str(n)]['mean'] * scale:.2f} ± {cell[str(n)]['std'] * scale:.2f}"
                          if str(n) in cell else "-" for n in shots) + " |"]
            for label, values in curves.items():
                published = dict(zip(PUBLISHED_SHOTS, values))
                lines.append(f"| published: {label} | " + " | ".join(
                    f"{published[n]:.2f}" if n in published else "-" for n in shots) + " |")
            lines += ["", "Published rows: the papers' numbers (REFERENCE figures), not measured by this sweep.", ""]
    return "\n".join(lines).rstrip() + "\n"
