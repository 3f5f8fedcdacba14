"""Results tables across runs: one per task (ScienceQA categories, VQA answer types, caption metrics, ...) from each
run's metrics.json, and one per few-shot metric (shots × run, mean ± std) from sweeps' fewshot_summary.json. The best
value of each column (of each row for few-shot tables) is bold; values are compared as displayed (two decimals)."""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmkit.compare.runs import Run
from vlmkit.metrics.scienceqa import SQA_CATEGORIES
from vlmkit.registry import TASKS, load_builtins

#: How each task is titled, and what its numbers are.
TASK_TITLES = {"scienceqa": "ScienceQA accuracy (%)", "vqa": "VQA accuracy (%)", "caption": "Caption scores (×100)"}
#: Which split a table shows when a run has several (first match; then the run's first split).
SPLIT_PREFERENCE = ("test", "val")
DECIMALS = 2
ANSWER_TYPE = "answer_type/"

Column = tuple[str, Callable[[dict[str, Any]], Any]]


@dataclass
class Table:
    """A table ready to print as Markdown or HTML; ``bold[i][j]`` marks cell ``rows[i][j]`` as a best value."""

    title: str
    header: list[str]
    rows: list[list[str]]
    bold: list[list[bool]] = field(default_factory=list)
    values: list[list[float | None]] = field(default_factory=list)  # the numbers behind the cells (None: "-")
    runs: list[str] = field(default_factory=list)  # the run behind each row (task tables) or column (few-shot tables)
    task: str = ""  # the task of a per-task table ("" for a few-shot table)

    def markdown(self) -> str:
        align = "|:---|" + "---:|" * (len(self.header) - 1)
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |", align]
        for cells, marks in zip(self.rows, self.bold):
            lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(cells, marks)) + " |")
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = []
        for cells, marks in zip(self.rows, self.bold):
            tds = "".join(f"<td><b>{html.escape(c)}</b></td>" if b else f"<td>{html.escape(c)}</td>"
                          for c, b in zip(cells, marks))
            body.append(f"<tr>{tds}</tr>")
        return (f"<table><caption>{html.escape(self.title)}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>")


def task_class(task: str) -> Any:
    load_builtins()
    return TASKS.get(task) if task in TASKS else None


def task_scale(task: str | None) -> float:
    """The factor papers report the task's metrics with (captions ×100), from the task's ``table_scale``."""
    cls = task_class(task) if task else None
    return float(getattr(cls, "table_scale", 1.0) or 1.0)


def task_of_metric(metric: str) -> str | None:
    """The registered task whose main metric is ``metric`` (a sweep summary names only its metric)."""
    load_builtins()
    return next((name for name in TASKS.names() if getattr(TASKS.get(name), "main_metric", None) == metric), None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def task_columns(task: str, metrics: Sequence[dict[str, Any]]) -> list[Column]:
    """The columns of a task's table: ScienceQA's categories, VQA's overall + answer types, the task's headline
    metrics, or else every numeric metric (counts left out)."""
    if task == "scienceqa":
        return [(c, lambda m, c=c: m.get(c)) for c in SQA_CATEGORIES]
    scale = task_scale(task)
    if task == "vqa":  # answer types as metrics.json flattens them ("answer_type/yes/no"), or nested
        types = sorted({k[len(ANSWER_TYPE):] for m in metrics for k in m if k.startswith(ANSWER_TYPE)}
                       | {t for m in metrics for t in (m.get("perAnswerType") or {})})
        return [("overall", lambda m: m.get("overall"))] + [
            (t, lambda m, t=t: m.get(ANSWER_TYPE + t, (m.get("perAnswerType") or {}).get(t))) for t in types]
    cls = task_class(task)
    names = list(getattr(cls, "table_metrics", ()) or ())
    if not names:
        names = sorted({k for m in metrics for k, v in m.items() if _number(v) is not None
                        and not k.startswith("num_") and k != "n"})
    return [(n, lambda m, n=n: None if _number(m.get(n)) is None else _number(m.get(n)) * scale) for n in names]


def pick_split(keys: Sequence[str]) -> str | None:
    """The split a table shows: ``test`` (or ``<dataset>_test``), else ``val``, else the first one."""
    keys = list(keys)
    for wanted in SPLIT_PREFERENCE:
        for key in keys:
            if key == wanted or key.endswith(f"_{wanted}"):
                return key
    return keys[0] if keys else None


def best_marks(values: Sequence[float | None]) -> list[bool]:
    """True at the highest value (as displayed); nothing is marked when fewer than two values exist."""
    shown = [None if v is None else round(v, DECIMALS) for v in values]
    present = [v for v in shown if v is not None]
    if len(present) < 2:
        return [False] * len(values)
    top = max(present)
    return [v == top for v in shown]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.{DECIMALS}f}"


def task_table(task: str, runs: Sequence[Run]) -> Table:
    """One row per run (its preferred split), one column per metric of the task; best per column bold."""
    picked = [(r, pick_split([k for k, v in (r.metrics or {}).items() if isinstance(v, dict)])) for r in runs]
    picked = [(r, s) for r, s in picked if s is not None]
    splits = [s for _, s in picked]
    common = max(set(splits), key=splits.count)
    columns = task_columns(task, [r.metrics[s] for r, s in picked])  # type: ignore[index]
    values = [[_number(get(r.metrics[s])) for _, get in columns] for r, s in picked]  # type: ignore[index]
    names = [r.name if s == common else f"{r.name} ({s})" for r, s in picked]
    by_column = [best_marks([row[j] for row in values]) for j in range(len(columns))]
    bold = [[False] + [by_column[j][i] for j in range(len(columns))] for i in range(len(picked))]
    rows = [[name] + [_fmt(v) for v in row] for name, row in zip(names, values)]
    title = f"{TASK_TITLES.get(task, task)} on {common}"
    return Table(title, ["Method"] + [c for c, _ in columns], rows, bold, [[None] + row for row in values],
                 [r.name for r, _ in picked], task)


def fewshot_points(run: Run, scale: float = 1.0) -> dict[int, tuple[float, float]]:
    """shots → (mean, std) × ``scale`` of a sweep's main metric on its preferred split."""
    by_split = (run.fewshot or {}).get("splits") or {}
    points = by_split.get(pick_split(list(by_split))) or {}
    out = {}
    for n, point in points.items():
        mean = _number((point or {}).get("mean")) if isinstance(point, dict) else None
        if mean is not None and str(n).isdigit():  # a malformed entry is left out, not fatal
            out[int(n)] = (mean * scale, (_number(point.get("std")) or 0.0) * scale)
    return out


def fewshot_table(metric: str, runs: Sequence[Run]) -> Table:
    """Shots × run, cells "mean ± std" of the sweep's main metric (scaled as the task reports it); best per row bold."""
    scale = task_scale(task_of_metric(metric))
    cells = {run.name: fewshot_points(run, scale) for run in runs}
    all_shots = sorted({n for by_shots in cells.values() for n in by_shots})
    rows, bold, values = [], [], []
    for n in all_shots:
        means = [cells.get(r.name, {}).get(n, (None, None))[0] for r in runs]
        marks = best_marks(means)
        row = [str(n)]
        for r in runs:
            point = cells.get(r.name, {}).get(n)
            row.append("-" if point is None else f"{point[0]:.{DECIMALS}f} ± {point[1]:.{DECIMALS}f}")
        rows.append(row)
        bold.append([False] + marks)
        values.append([float(n)] + means)
    trials = sorted({int((r.fewshot or {}).get("trials", 1)) for r in runs})
    title = (f"Few-shot {metric}{' (×100)' if scale != 1 else ''}, mean ± std over "
             f"{'/'.join(map(str, trials))} trial(s)")
    return Table(title, ["shots"] + [r.name for r in runs], rows, bold, values, [r.name for r in runs])


def build_tables(runs: Sequence[Run]) -> list[Table]:
    """Every table the runs allow: one per task (in order of first appearance), then one per few-shot metric."""
    tables = []
    scored = [r for r in runs if not r.is_sweep and r.task
              and any(isinstance(v, dict) for v in (r.metrics or {}).values())]
    for task in dict.fromkeys(r.task for r in scored):
        tables.append(task_table(str(task), [r for r in scored if r.task == task]))
    sweeps = [r for r in runs if r.is_sweep]
    for metric in dict.fromkeys(str((r.fewshot or {}).get("main_metric")) for r in sweeps):
        tables.append(fewshot_table(metric, [r for r in sweeps if str((r.fewshot or {}).get("main_metric")) == metric]))
    return tables
