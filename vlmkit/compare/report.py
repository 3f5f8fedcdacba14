"""``vlmkit compare``: read the runs, print one warning line per incomplete run, write ``results.md`` (tables and figure
links), the figures (PNG) and ``report.html`` (one self-contained page: tables and base64-embedded figures)."""
from __future__ import annotations

import base64
import html
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from vlmkit.compare import plots
from vlmkit.compare.plots import plt
from vlmkit.compare.runs import Run, load_runs
from vlmkit.compare.tables import Table, build_tables
from vlmkit.errors import ConfigError
from vlmkit.io import write_text_atomic

RESULTS_FILE = "results.md"
REPORT_FILE = "report.html"


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Comparison:
    runs: list[Run]
    tables: list[Table]
    figures: list[Figure]
    warnings: list[str]


def _figure_jobs(runs: Sequence[Run], tables: Sequence[Table], colours: dict, out: Path,
                 published: str) -> list[tuple[str, Callable[[], Path | None]]]:
    """(caption, draw) of every figure the runs may allow; ``draw`` returns None when no run has the data."""
    jobs: list[tuple[str, Callable[[], Path | None]]] = [
        ("Training loss per optimizer step: raw and smoothed", lambda: plots.plot_loss(runs, colours, out / "loss.png")),
        ("Learning rate per optimizer step", lambda: plots.plot_lr(runs, colours, out / "lr.png")),
    ]
    for metric in dict.fromkeys(m for m in map(plots.validation_metric, runs) if m):
        jobs.append((f"Validation {metric} after each epoch evaluated during training",
                     lambda m=metric: plots.plot_validation(m, runs, colours, out / f"val_{m}.png")))
    for table in (t for t in tables if t.task):
        jobs.append((f"{table.title}: each column of the table",
                     lambda t=table: plots.plot_categories(t, colours, out / f"categories_{t.task}.png")))
    jobs.append(("Adapter dropout per LLM decoder layer, from each run's config",
                 lambda: plots.plot_dropout(runs, colours, out / "dropout.png")))
    sweeps = [r for r in runs if r.is_sweep]
    for metric in dict.fromkeys(str((r.fewshot or {}).get("main_metric")) for r in sweeps):
        group = [r for r in sweeps if str((r.fewshot or {}).get("main_metric")) == metric]
        jobs.append((f"Few-shot {metric} per number of shots (published 9B results dashed)",
                     lambda m=metric, g=group: plots.plot_fewshot(m, g, colours, out / f"fewshot_{m}.png", published)))
    return jobs


def compare(entries: Sequence[tuple[str, Path]], out: str | Path, published: str = "auto") -> Comparison:
    """Compare the runs ``(name, dir)`` into ``out``; raises ConfigError (before writing) when no run has any file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for results.md, report.html and the figures")
    runs = load_runs(entries)
    warnings = [w for w in (r.warning() for r in runs) if w]
    for line in warnings:
        print(line, file=sys.stderr, flush=True)
    usable = [r for r in runs if r.usable]
    colours = plots.run_colours([r.name for r in runs])
    tables = build_tables(usable)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for caption, draw in tqdm(_figure_jobs(usable, tables, colours, out, published), desc="figures",
                              disable=None, file=sys.stderr):
        try:
            path = draw()
        except Exception as e:  # data no run of vlmkit writes (a hand-edited file): lose the figure, not the report
            plt.close("all")
            warnings.append(f"warning: figure '{caption}' not drawn: {type(e).__name__}: {e}")
            print(warnings[-1], file=sys.stderr, flush=True)
            continue
        if path is not None:
            figures.append(Figure(path, caption))
    result = Comparison(runs, tables, figures, warnings)
    write_text_atomic(out / RESULTS_FILE, results_markdown(result))
    write_text_atomic(out / REPORT_FILE, report_html(result))
    return result


def _run_list(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """(name, path, status) per run."""
    return [(r.name, str(r.path), "complete" if not r.lacks else "incomplete" if r.usable else "left out")
            for r in runs]


def results_markdown(c: Comparison) -> str:
    lines = [f"# Comparison of {len(c.runs)} runs", ""]
    lines += [f"- `{name}`: {path} ({status})" for name, path, status in _run_list(c.runs)] + [""]
    if c.warnings:
        lines += [f"> {w}" for w in c.warnings] + [""]
    for table in c.tables:
        lines += [table.markdown(), ""]
    if not c.tables:
        lines += ["No run has results (metrics.json or fewshot_summary.json).", ""]
    for fig in c.figures:
        lines += [f"![{fig.caption}]({fig.path.name})", ""]
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}caption{font-weight:bold;text-align:left;padding:.3em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
.warn{color:#8a4b00}figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}"""


def report_html(c: Comparison) -> str:
    esc = html.escape
    runs = "".join(f"<li><code>{esc(n)}</code>: {esc(p)} ({s})</li>" for n, p, s in _run_list(c.runs))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vlmkit: comparison of {len(c.runs)} runs"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Comparison of {len(c.runs)} runs</h1><p>{datetime.now():%Y-%m-%d %H:%M}</p><ul>{runs}</ul>"]
    if c.warnings:
        parts.append("<ul class='warn'>" + "".join(f"<li>{esc(w)}</li>" for w in c.warnings) + "</ul>")
    parts += [t.html() for t in c.tables]
    for fig in c.figures:
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(fig.caption)}'>"
                     f"<figcaption>{esc(fig.caption)} ({esc(fig.path.name)})</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
