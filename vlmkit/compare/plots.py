"""Comparative figures (matplotlib, Agg): each one readable alone — title, axis labels with units, a legend — and each
run drawn in the same colour in every figure. A figure is made only when at least one run has its data."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from vlmkit.compare.published import PUBLISHED_SHOTS, nine_b_variant, published_curves  # noqa: E402
from vlmkit.compare.runs import Run, llama_layers, validation_records  # noqa: E402
from vlmkit.compare.tables import Table, fewshot_points, task_class, task_of_metric, task_scale  # noqa: E402
from vlmkit.config import defaults_for  # noqa: E402
from vlmkit.errors import ConfigError  # noqa: E402
from vlmkit.models.adapters import dropout_schedule  # noqa: E402

FIGSIZE = (8.0, 4.8)
DPI = 100
#: The smoothed loss averages each point with its neighbours over 1/SMOOTH_FRACTION of the run.
SMOOTH_FRACTION = 15
#: Units of the main metrics on the axes.
METRIC_UNITS = {"Average": "accuracy (%)", "overall": "VQA accuracy (%)", "CIDEr": "CIDEr (×100)",
                "accuracy": "accuracy"}
#: What a sweep's main metric is, in figure titles.
METRIC_TITLES = {"overall": "VQA accuracy", "CIDEr": "caption CIDEr"}
PUBLISHED_STYLE = (("black", "s"), ("dimgray", "^"), ("darkgray", "D"))


def run_colours(names: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per run (input order), the same in every figure."""
    if len(names) <= 20:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        return {name: cmap(i) for i, name in enumerate(names)}
    cmap = plt.get_cmap("hsv")
    return {name: cmap(i / len(names)) for i, name in enumerate(names)}


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, path: Path, handles: Sequence[Any] | None = None) -> Path:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.savefig(path, bbox_inches="tight", pil_kwargs={"optimize": True})
    plt.close(fig)
    return path


def smooth(values: Sequence[float], log: bool = False) -> list[float]:
    """Centered moving average over about 1/SMOOTH_FRACTION of the points (no lag; shorter windows at the ends);
    of the logarithms when ``log`` (a loss falling over decades)."""
    xs = [math.log(v) for v in values] if log else list(values)
    half = max(1, round(len(xs) / SMOOTH_FRACTION / 2))
    out = []
    for i in range(len(xs)):
        window = xs[max(0, i - half): i + half + 1]
        out.append(sum(window) / len(window))
    return [math.exp(v) for v in out] if log else out


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r["step"]), float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))
           and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _widths(drawn: Sequence[tuple[Run, list[float], list[float]]], thin: float, step: float) -> list[float]:
    """A line is wider by ``step`` for each later run with the very same curve, so that coinciding runs show as nested
    coloured bands (the first widest) and every colour stays visible; a curve of its own is ``thin``."""
    return [thin + step * sum(x1 == x and y1 == y for _, x1, y1 in drawn[i + 1:])
            for i, (_, x, y) in enumerate(drawn)]


def _labels(drawn: Sequence[tuple[Run, list[float], list[float]]]) -> list[str]:
    """Run names; a run whose curve equals an earlier run's says so."""
    labels = []
    for i, (run, x, y) in enumerate(drawn):
        same = next((r.name for r, x0, y0 in drawn[:i] if x0 == x and y0 == y), None)
        labels.append(run.name if same is None else f"{run.name} (same as {same})")
    return labels


def plot_loss(runs: Sequence[Run], colours: dict[str, Any], path: Path) -> Path | None:
    """Training loss per optimizer step: raw (thin) and smoothed (thick); log scale when it spans decades."""
    drawn = [(r, *_series(r.train, "loss")) for r in runs]
    drawn = [(r, x, y) for r, x, y in drawn if x]
    if not drawn:
        return None
    lows = [v for _, _, y in drawn for v in y]
    log = min(lows) > 0 and max(lows) / min(lows) > 50
    fig, ax = _axes("Training loss (raw and smoothed)", "optimizer step", "loss (mean token cross-entropy, nats)")
    for (run, x, y), label, width in zip(drawn, _labels(drawn), _widths(drawn, 1.8, 1.2)):
        ax.plot(x, y, color=colours[run.name], linewidth=0.7, alpha=0.35)
        ax.plot(x, smooth(y, log), color=colours[run.name], linewidth=width, label=label, zorder=3 - width / 10)
    if log:
        ax.set_yscale("log")
    handles = ax.get_legend_handles_labels()[0] + [
        Line2D([], [], color="gray", linewidth=0.7, alpha=0.5, label="thin: raw (each logged step)"),
        Line2D([], [], color="gray", linewidth=1.8,
               label=f"thick: smoothed (centered mean,\n1/{SMOOTH_FRACTION} of the run)")]
    return _save(fig, ax, path, handles)


def plot_lr(runs: Sequence[Run], colours: dict[str, Any], path: Path) -> Path | None:
    """The learning rate each logged optimizer step used."""
    drawn = [(r, *_series(r.train, "lr")) for r in runs]
    drawn = [(r, x, y) for r, x, y in drawn if x]
    if not drawn:
        return None
    fig, ax = _axes("Learning-rate schedule", "optimizer step", "learning rate (AdamW step size)")
    for (run, x, y), label, width in zip(drawn, _labels(drawn), _widths(drawn, 1.8, 1.2)):
        ax.plot(x, y, color=colours[run.name], linewidth=width, label=label, zorder=3 - width / 10)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return _save(fig, ax, path)


def validation_metric(run: Run) -> str | None:
    """The main metric of the run's task when its validation records hold it."""
    cls = task_class(run.task) if run.task else None
    metric = getattr(cls, "main_metric", None)
    return metric if metric and any(metric in r for r in validation_records(run)) else None


def plot_validation(metric: str, runs: Sequence[Run], colours: dict[str, Any], path: Path) -> Path | None:
    """The task's main metric ``metric`` on the validation split(s) after each epoch evaluated during training."""
    series = []
    for run in runs:
        if validation_metric(run) != metric:
            continue
        epochs = ((run.config or {}).get("run") or {}).get("epochs")
        scale = task_scale(run.task)
        # the evaluation after training has epoch = the epoch count (during training: the finished epoch's index)
        pts = sorted((int(r["epoch"]) + 1, float(r[metric]) * scale) for r in validation_records(run)
                     if metric in r and (epochs is None or int(r["epoch"]) < int(epochs)))
        if pts:
            series.append((run, [p[0] for p in pts], [p[1] for p in pts]))
    if not series:
        return None
    fig, ax = _axes(f"Validation {metric} after each epoch", "epochs completed",
                    f"validation {METRIC_UNITS.get(metric, metric)}")
    for (run, x, y), label, width in zip(series, _labels(series), _widths(series, 1.8, 1.2)):
        ax.plot(x, y, marker="o", markersize=3 + width, linewidth=width, color=colours[run.name], label=label,
                zorder=3 - width / 10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, ax, path)


def plot_categories(table: Table, colours: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: one group per column of a task table, one bar per run; the y axis starts near the lowest bar."""
    columns = table.header[1:]
    values = [row[1:] for row in table.values]
    present = [v for row in values for v in row if v is not None]
    if not present or not columns:
        return None
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 0.9 * len(columns) + 2), FIGSIZE[1]), dpi=DPI)
    width = 0.8 / len(table.runs)
    for i, (name, row) in enumerate(zip(table.runs, values)):
        xs = [j + (i - (len(table.runs) - 1) / 2) * width for j, v in enumerate(row) if v is not None]
        ax.bar(xs, [v for v in row if v is not None], width=width, color=colours[name], label=name)
    low, high = min(present), max(present)
    bottom = 0.0 if low - 5 < high / 2 else 10.0 * math.floor((low - 5) / 10)  # zoom only into a narrow range
    ax.set_ylim(bottom, max(present) + max(1.0, 0.02 * max(present)))
    ax.set_xticks(range(len(columns)), columns)
    ax.set_title(f"{table.title}, per column")
    ax.set_xlabel("question category" if table.task == "scienceqa" else "metric")
    unit = table.title.split(" on ")[0]
    ax.set_ylabel(f"{unit}" + (f" — axis starts at {bottom:g}" if bottom > 0 else ""))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, ax, path)


def dropout_profile(config: dict[str, Any]) -> list[float] | None:
    """The LLM adapters' dropout per decoder layer of a LaVIN config (vlmkit's own schedule function)."""
    model = config.get("model") or {}
    if model.get("arch") != "lavin":
        return None
    n_layers = llama_layers(model)
    if n_layers is None:
        return None
    keys = ("dropout_schedule", "adapter_dropout", "dropout_min", "dropout_max")
    defaults = defaults_for("model", "lavin")  # for a config.yaml written before a key existed
    kind, p, p_min, p_max = (model.get(k, defaults[k]) for k in keys)
    try:
        return dropout_schedule(str(kind), n_layers, float(p), float(p_min), float(p_max))
    except (ConfigError, TypeError, ValueError):  # a hand-edited config.yaml: no profile rather than no comparison
        return None


def plot_dropout(runs: Sequence[Run], colours: dict[str, Any], path: Path) -> Path | None:
    """Each LaVIN run's adapter dropout p per LLM decoder layer; markers side by side where profiles coincide."""
    drawn = [(r, dropout_profile(r.config)) for r in runs if r.config is not None]
    drawn = [(r, p) for r, p in drawn if p]
    if not drawn:
        return None
    fig, ax = _axes("Adapter dropout per decoder layer (LLM adapters)", "decoder layer (0 = first)",
                    "dropout probability p")
    spread = 0.6 / len(drawn)
    for i, (run, profile) in enumerate(drawn):
        xs = [j + (i - (len(drawn) - 1) / 2) * spread for j in range(len(profile))]
        ax.plot(xs, profile, marker="o", markersize=4, linewidth=1.2, color=colours[run.name], label=run.name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(bottom=0.0)
    return _save(fig, ax, path)


def plot_fewshot(metric: str, runs: Sequence[Run], colours: dict[str, Any], path: Path,
                 published: str = "auto") -> Path | None:
    """Sweep metric (mean ± std over trials) per number of shots; published 9B curves dashed (see ``published``:
    auto = for the runs whose config is the matching 9B setup, always, never)."""
    scale = task_scale(task_of_metric(metric))
    drawn = [(r, fewshot_points(r, scale)) for r in runs]
    drawn = [(r, pts) for r, pts in drawn if pts]
    if not drawn:
        return None
    unit = METRIC_UNITS.get(metric, metric)
    fig, ax = _axes(f"Few-shot {METRIC_TITLES.get(metric, metric)} vs number of shots", "in-context examples (shots)",
                    unit)
    for run, pts in drawn:
        shots = sorted(pts)
        ax.errorbar(shots, [pts[n][0] for n in shots], yerr=[pts[n][1] for n in shots], marker="o", capsize=3,
                    color=colours[run.name], label=f"{run.name} (mean ± std)")
    for (label, values), (colour, marker) in zip(_curves(metric, [r for r, _ in drawn], published).items(),
                                                 PUBLISHED_STYLE):
        ax.plot(PUBLISHED_SHOTS, values, linestyle="--", marker=marker, color=colour, label=f"published: {label}")
    ax.set_xticks(sorted({n for _, pts in drawn for n in pts}))
    return _save(fig, ax, path)


def _curves(metric: str, runs: Sequence[Run], published: str) -> dict[str, tuple[float, ...]]:
    if published == "never":
        return {}
    variants = {nine_b_variant(r.config) for r in runs} - {None}
    if published == "always" and not variants:
        return published_curves(metric, None)
    curves: dict[str, tuple[float, ...]] = {}
    for variant in sorted(variants):
        curves.update(published_curves(metric, variant))
    return curves
