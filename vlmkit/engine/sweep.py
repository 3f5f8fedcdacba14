"""Few-shot sweep: ``tools/evaluate.py --shots 0 4 8 16 32 --trials 3`` evaluates one model at every (shots, trial).

The model is built (and its weights loaded, and sharded under FSDP) once; for each point the ``fewshot`` section of
every dataset that has one gets ``shots=N`` and ``trial=t``, the datasets are rebuilt and the splits evaluated into
``<run.output_dir>/shots{N}/trial{t}/`` exactly as a plain evaluation with those two options writes its output dir.
Then ``<run.output_dir>/fewshot_summary.json`` holds the task's main metric per split, shots and trial, with the mean
and sample standard deviation over trials, and rank 0 prints them as a Markdown table.

Beside it (rank 0): ``protocol.json`` (how the numbers were made: evaluated ids, demo pool and query sets as hashes,
prompts, generation, postprocessing, model/checkpoint hashes, library versions; written before the first point),
``config.yaml``, ``fewshot.jsonl`` (one row per point with every metric and its timing; rewritten after each point)
and ``fewshot.md`` (mean ± std of every metric per shots; the published 9B figures for the OpenFlamingo-9B setup).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vlmkit import dist
from vlmkit.config import save_config
from vlmkit.engine.build import run_logging, seed_everything
from vlmkit.engine.hooks import MetricsFiles
from vlmkit.engine.rundir import RunDirLock
from vlmkit.engine.evaluation import EvalOptions, table_logger, warn_if_untrained, with_evaluation_dir
from vlmkit.engine.runner import Runner
from vlmkit.engine.sweep_files import (PROTOCOL_FILE, ROWS_FILE, SUMMARY_FILE, TABLE_FILE, fewshot_datasets,
                                       format_markdown, point_row, sweep_protocol, write_rows)
from vlmkit.errors import ConfigError
from vlmkit.failures import sigterm_as_interrupt
from vlmkit.io import write_json_atomic, write_text_atomic

logger = logging.getLogger("vlmkit")

def point_dir(output_dir: str | Path, shots: int, trial: int) -> Path:
    """Where the evaluation of one (shots, trial) point is written."""
    return Path(output_dir) / f"shots{shots}" / f"trial{trial}"


def check_sweep(cfg: DictConfig, shots: Sequence[int], trials: int) -> list[int]:
    """Validate the sweep arguments against the config; return the shots without repeats, in the given order."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    negative = [n for n in shots if n < 0]
    if negative:
        raise ConfigError(f"--shots must be >= 0 (0 = text-only zero-shot demos), got {negative[0]}")
    if not fewshot_datasets(cfg):
        raise ConfigError(f"--shots: no dataset of this config ({', '.join(map(str, cfg.datasets))}) has a fewshot "
                          "section, so it cannot be evaluated few-shot; use a VQAv2 or COCO-caption config")
    return list(dict.fromkeys(int(n) for n in shots))


def set_point(cfg: DictConfig, shots: int, trial: int) -> None:
    """Set ``fewshot.shots`` and ``fewshot.trial`` of every dataset that has a fewshot section."""
    for name in fewshot_datasets(cfg):
        cfg.datasets[name].fewshot.shots = shots
        cfg.datasets[name].fewshot.trial = trial


def summarize(scores: Mapping[str, Mapping[int, Sequence[float]]], main_metric: str, trials: int) -> dict[str, Any]:
    """``{"main_metric", "trials", "splits": {split: {shots: {"trials", "mean", "std", "num_trials"}}}}``.

    ``std`` is the sample standard deviation over trials (0 with a single trial); shots are JSON keys (strings).
    """
    splits: dict[str, dict[str, Any]] = {}
    for key, by_shots in scores.items():
        splits[key] = {}
        for shots, values in by_shots.items():
            values = [float(v) for v in values]
            splits[key][str(shots)] = {
                "trials": values,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "num_trials": len(values),
            }
    return {"main_metric": main_metric, "trials": trials, "splits": splits}


def format_summary(summary: Mapping[str, Any], shots: Sequence[int], scale: float = 1.0) -> str:
    """A Markdown table: one row per shots, one column per split, cells "mean ± std" of the main metric × ``scale``."""
    keys = list(summary["splits"])
    lines = ["| shots | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for n in shots:
        cells = []
        for key in keys:
            cell = summary["splits"][key].get(str(n))
            cells.append("-" if cell is None else f"{cell['mean'] * scale:.2f} ± {cell['std'] * scale:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(cfg: DictConfig, shots: Sequence[int], trials: int = 1, checkpoint: str | None = None,
              splits: list[str] | None = None, output_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Evaluate every (shots, trial) with one model; write each point's files and the summary; return the summary.
    Writes where a plain evaluation would (``output_dir`` or ``run.output_dir``, see evaluation.with_evaluation_dir).
    ``resume``: points whose records are complete are skipped, a half-finished point continues its records."""
    shots = check_sweep(cfg, shots, trials)
    points = [(n, t) for n in shots for t in range(trials)]
    device = dist.init(cfg.run.device)
    try:
        with run_logging(), sigterm_as_interrupt():
            cfg = with_evaluation_dir(cfg, output_dir, EvalOptions(resume=resume))
            set_point(cfg, shots[0], 0)  # the datasets the runner builds and checks before writing are the first point's
            runner = Runner.for_evaluation(cfg, device, splits, checkpoint)
            with RunDirLock(runner.output_dir) if dist.is_main() else contextlib.nullcontext(), \
                    run_logging(runner.output_dir / "log.txt"):
                warn_if_untrained(cfg, checkpoint)
                protocol = sweep_protocol(runner, shots, trials, checkpoint)
                if dist.is_main():
                    save_config(runner.cfg, runner.output_dir / "config.yaml")
                    write_json_atomic(runner.output_dir / PROTOCOL_FILE, protocol)
                try:
                    summary = _sweep(runner, points, shots, trials, EvalOptions(resume=resume, checkpoint=checkpoint))
                finally:
                    runner.close()
                logger.info("outputs in %s: %s, %s, %s, %s, config.yaml, shots<N>/trial<t>/, log.txt",
                            runner.output_dir, SUMMARY_FILE, ROWS_FILE, TABLE_FILE, PROTOCOL_FILE)
                return summary
    finally:
        dist.cleanup()


def _finished_point(where: Path, rows_file: Path, n: int, t: int) -> tuple[dict | None, dict | None]:
    """(results, fewshot.jsonl row) of a point an earlier run of the sweep completed, else (None, None)."""
    metas = list((where / "samples").glob("*.meta.json"))
    if not metas or not (where / "metrics.json").is_file() or not rows_file.is_file():
        return None, None
    if not all(json.loads(m.read_text()).get("complete") for m in metas):
        return None, None
    row = next((r for r in map(json.loads, rows_file.read_text().splitlines())
                if r.get("shots") == n and r.get("trial") == t), None)
    return (json.loads((where / "metrics.json").read_text()), row) if row is not None else (None, None)


def _sweep(runner: Runner, points: Sequence[tuple[int, int]], shots: Sequence[int], trials: int,
           options: EvalOptions) -> dict[str, Any]:
    out = runner.output_dir
    scores: dict[str, dict[int, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    done_before = {(n, t): _finished_point(point_dir(out, n, t), out / ROWS_FILE, n, t) if options.resume
                   else (None, None) for n, t in points} if dist.is_main() else {}
    done_before = dist.broadcast_object(done_before)
    for i, (n, t) in enumerate(points):
        if i > 0:
            cfg = copy.deepcopy(runner.cfg)
            set_point(cfg, n, t)
            runner.rebuild(cfg)
        where = point_dir(out, n, t)
        results, row = done_before[n, t]
        if results is not None:
            logger.info("few-shot sweep %d/%d: shots=%d trial=%d finished earlier, skipped", i + 1, len(points), n, t)
            rows.append(row)
        else:
            logger.info("few-shot sweep %d/%d: shots=%d trial=%d", i + 1, len(points), n, t)
            MetricsFiles(where).reset()  # a rerun of the sweep replaces the point's log instead of appending to it
            seed_everything(int(runner.cfg.run.seed))  # each point as a plain evaluation starts it
            start = time.perf_counter()
            results = runner.evaluate(runner.splits, output_dir=where, options=options)
            rows.append(point_row(runner, n, t, results, time.perf_counter() - start))
        if dist.is_main():  # rewritten after every point: the finished points are there if the sweep dies
            write_rows(out / ROWS_FILE, rows)
        main = runner.task.main_metric
        for key, result in results.items():
            if main not in result:
                logger.warning("%s (shots=%d trial=%d) has no main metric '%s' (e.g. no public answers); "
                               "left out of the summary", key, n, t, main)
                continue
            scores.setdefault(key, {}).setdefault(n, []).append(float(result[main]))
            logger.info("shots=%d trial=%d %s %s=%.4f", n, t, key, main, result[main])
    summary = summarize(scores, runner.task.main_metric, trials)
    if dist.is_main():
        write_json_atomic(out / SUMMARY_FILE, summary)
        scale = float(getattr(runner.task, "table_scale", 1.0))
        text = (f"== few-shot {runner.task.main_metric} (mean ± std over {trials} trial{'s' if trials > 1 else ''}) "
                f"==\n" + format_summary(summary, shots, scale))
        print(text, flush=True)
        table_logger.info(text)  # log.txt holds the table too
        write_text_atomic(out / TABLE_FILE, format_markdown(runner.cfg, runner.task, summary, rows, shots))
    dist.barrier()
    return summary
