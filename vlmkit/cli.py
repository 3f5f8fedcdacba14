"""Command-line entry points behind tools/*.py: argument parsing and the one-line error contract.

A user error (:class:`vlmkit.errors.VlmkitError`) prints ``error: <message>`` on stderr and exits with status 2; with
``--debug`` the traceback is shown instead. Under torchrun every rank reaches the same error; only rank 0 prints it.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from vlmkit.errors import VlmkitError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-path", required=True, help="project YAML, e.g. projects/lavin/sqa_7b.yaml")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. run.lr=2e-3 model.adapter_dim=16")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers components (repeatable); same as run.imports")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")


def guarded(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``main``; turn a VlmkitError into one stderr line and exit status 2."""
    try:
        return main(args)
    except VlmkitError as e:
        if args.debug:
            raise
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def train_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (and evaluate) a model from a project YAML.")
    _common(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from <run.output_dir>/checkpoints/last.pt")
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.config import load_config
        from vlmkit.engine.runner import train

        cfg = load_config(a.cfg_path, a.options, a.imports)
        train(cfg, resume=a.resume)
        return 0

    return guarded(run, args)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a model (optionally with trained weights) on dataset splits.")
    _common(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="trained weights: model.safetensors, checkpoints/*.pt or an OpenFlamingo checkpoint.pt")
    parser.add_argument("--split", dest="splits", nargs="+", default=None,
                        help="splits to evaluate (default: run.test_splits)")
    parser.add_argument("--shots", nargs="+", type=int, default=None, metavar="N",
                        help="few-shot sweep: evaluate with each number of demos (0 = text-only zero-shot demos) into "
                             "<output_dir>/shots<N>/trial<t>/ and summarize in fewshot_summary.json (docs/fewshot.md)")
    parser.add_argument("--trials", type=int, default=None, metavar="T",
                        help="with --shots: trials 0..T-1 per shots, each with other demos (default 1)")
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.config import load_config
        from vlmkit.errors import ConfigError

        if a.shots is None and a.trials is not None:
            raise ConfigError("--trials needs --shots (e.g. --shots 0 4 8 --trials 3)")
        cfg = load_config(a.cfg_path, a.options, a.imports)
        if a.shots is not None:
            from vlmkit.engine.sweep import run_sweep

            run_sweep(cfg, a.shots, 1 if a.trials is None else a.trials, checkpoint=a.checkpoint, splits=a.splits)
            return 0
        from vlmkit.engine.runner import evaluate

        evaluate(cfg, checkpoint=a.checkpoint, splits=a.splits)
        return 0

    return guarded(run, args)


def entry(main: Callable[[Sequence[str] | None], int]) -> None:
    """Used by tools/*.py: run and exit with its status."""
    sys.exit(main(None))
