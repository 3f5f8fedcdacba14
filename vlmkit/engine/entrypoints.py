"""The entry points of ``vlmkit train`` and ``vlmkit evaluate`` (also tools/train.py, tools/evaluate.py and
``vlmkit study``): the process around a :class:`~vlmkit.engine.runner.Runner` — the distributed group, logging,
SIGTERM as an interrupt, the run directory's lock — and the final tables.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

from omegaconf import DictConfig

from vlmkit import dist
from vlmkit.engine.build import run_logging
from vlmkit.engine.evaluation import EvalOptions, check_options, print_tables, warn_if_untrained, with_evaluation_dir
from vlmkit.engine.rundir import RunDirLock
from vlmkit.engine.runner import Runner
from vlmkit.failures import Interrupted, sigterm_as_interrupt

logger = logging.getLogger("vlmkit")


def train(cfg: DictConfig, resume: bool = False, overwrite: bool = False,
          force_config: bool = False) -> dict[str, dict[str, Any]]:
    """Train per ``cfg.run``, evaluate on the test splits, return the final metrics by split. ``overwrite``: replace a
    run already in ``run.output_dir``; ``force_config``: resume although the config changed (vlmkit/engine/rundir.py)."""
    device = dist.init(cfg.run.device)
    try:
        with run_logging(), sigterm_as_interrupt():
            runner = Runner.for_training(cfg, device, resume)
            runner.overwrite, runner.force_config = overwrite, force_config
            results = runner.train(resume)
            dist.barrier()  # every rank is done before the group is torn down (an early leaver aborts gloo at exit)
            return results
    finally:
        dist.cleanup()


def evaluate(cfg: DictConfig, checkpoint: str | None = None, splits: list[str] | None = None,
             output_dir: str | None = None, options: EvalOptions | None = None) -> dict[str, Any]:
    """Evaluate ``splits`` (default ``run.test_splits``) with optional trained weights; return metrics by split.

    Writes into ``output_dir`` (default ``run.output_dir``), or a fresh ``evaluations/<time>/`` inside it when it
    holds a training run; ``options``: ``--limit`` / ``--ids`` subsets, ``--resume`` (vlmkit/engine/evaluation.py)."""
    options = options or EvalOptions()
    check_options(options)
    options.checkpoint = checkpoint
    device = dist.init(cfg.run.device)
    try:
        with run_logging(), sigterm_as_interrupt():
            cfg = with_evaluation_dir(cfg, output_dir, options)
            runner = Runner.for_evaluation(cfg, device, splits, checkpoint)
            with RunDirLock(runner.output_dir) if dist.is_main() else contextlib.nullcontext(), \
                    run_logging(runner.output_dir / "log.txt"):
                warn_if_untrained(cfg, checkpoint)
                try:
                    results = runner.evaluate(runner.splits, options=options)
                except KeyboardInterrupt:
                    raise Interrupted(f"evaluation interrupted; the items done so far are recorded in "
                                      f"{runner.output_dir / 'samples'}", resumable=True) from None
                finally:
                    runner.close()
                print_tables(runner.task, results)
                warn_if_untrained(cfg, checkpoint)
                logger.info("outputs in %s: metrics.json, metrics.jsonl, predictions/, samples/, log.txt",
                            runner.output_dir)
            dist.barrier()  # every rank is done before the group is torn down
            return results
    finally:
        dist.cleanup()
