"""The ``vlmkit`` command and the entry points behind tools/*.py: argument parsing and the one-line error contract.

    vlmkit train | evaluate | prepare-data | score | list | chat | inspect | compare | study
    (``vlmkit COMMAND --help`` for each)

A user error (:class:`vlmkit.errors.VlmkitError`) prints ``error: <message>`` on stderr and exits with status 2, any
other exception one ``error: <Type>: ...`` line and status 1; with ``--debug`` the traceback is shown instead. Under
torchrun the first rank to fail prints the line, with its rank (vlmkit/failures.py).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vlmkit.errors import VlmkitError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-path", required=True, help="project YAML, e.g. projects/lavin/sqa_7b.yaml")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. run.lr=2e-3 model.adapter_dim=16")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers components (repeatable); same as run.imports")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")


def guarded(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``main``; any failure becomes one ``error:`` line from the first rank that failed (vlmkit/failures.py)."""
    from vlmkit.failures import INTERRUPT_STATUS, Interrupted, describe_exception, report

    try:
        return main(args)
    except Interrupted as e:
        return report(str(e), INTERRUPT_STATUS)
    except KeyboardInterrupt:
        return report("interrupted", INTERRUPT_STATUS)
    except VlmkitError as e:
        if args.debug:
            raise
        return report(str(e), 2)
    except Exception as e:
        if args.debug:
            raise
        return report(describe_exception(e), 1)


def resume_command(argv: Sequence[str] | None, prog: str | None) -> str:
    """The command line that continues this run: the same arguments plus ``--resume`` (under the same launcher)."""
    import shlex

    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]
    args += [] if "--resume" in args else ["--resume"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        head = ["torchrun", f"--nproc_per_node={world}", sys.argv[0]]
    elif prog and prog.startswith("vlmkit"):
        head = prog.split()
    else:
        head = ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*head, *args])


LIST_HINT = "registered models, tasks, datasets and schedulers: `vlmkit list`"


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Train (and evaluate) a model from a project YAML.",
                                     epilog=LIST_HINT)
    _common(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from <run.output_dir>/checkpoints/last.pt")
    parser.add_argument("--force-config", action="store_true",
                        help="with --resume: accept a config that changes the data order, batch, model or optimisation")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in run.output_dir (its files are kept in .previous/ until the "
                             "new run finishes)")
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.config import load_config
        from vlmkit.engine.entrypoints import train
        from vlmkit.errors import ConfigError
        from vlmkit.failures import Interrupted

        if a.force_config and not a.resume:
            raise ConfigError("--force-config only applies to --resume")
        cfg = load_config(a.cfg_path, a.options, a.imports)
        try:
            train(cfg, resume=a.resume, overwrite=a.overwrite, force_config=a.force_config)
        except Interrupted as e:
            if not e.resumable:
                raise
            raise Interrupted(f"{e}; resume with: {resume_command(argv, prog)}", resumable=True) from None
        return 0

    return guarded(run, args)


def evaluate_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, epilog=LIST_HINT,
                                     description="Evaluate a model (optionally with trained weights) on dataset splits.")
    _common(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="trained weights: model.safetensors, checkpoints/*.pt or an OpenFlamingo checkpoint.pt")
    parser.add_argument("--split", dest="splits", nargs="+", default=None,
                        help="splits to evaluate (default: run.test_splits)")
    parser.add_argument("--shots", nargs="+", type=int, default=None, metavar="N",
                        help="few-shot sweep: evaluate with each number of demos (0 = text-only zero-shot demos) into "
                             "<output_dir>/shots<N>/trial<t>/ and summarize in fewshot_summary.json (docs/fewshot.md)")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where to write (default: run.output_dir; a directory holding a training run gets a new "
                             "evaluations/<time>/ inside it, so the run's own files are never replaced)")
    parser.add_argument("--trials", type=int, default=None, metavar="T",
                        help="with --shots: trials 0..T-1 per shots, each with other demos (default 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted evaluation: only the items its samples/*.jsonl lack are evaluated")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate the first N items of each split (written under subsets/limitN, marked as such)")
    parser.add_argument("--ids", default=None, metavar="FILE",
                        help="evaluate only the sample ids listed in FILE, one per line (written under subsets/)")
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.config import load_config
        from vlmkit.engine.evaluation import EvalOptions, read_ids
        from vlmkit.errors import ConfigError
        from vlmkit.failures import Interrupted

        if a.shots is None and a.trials is not None:
            raise ConfigError("--trials needs --shots (e.g. --shots 0 4 8 --trials 3)")
        cfg = load_config(a.cfg_path, a.options, a.imports)
        if a.shots is not None:
            from vlmkit.engine.sweep import run_sweep

            if a.limit is not None or a.ids is not None:
                raise ConfigError("--limit / --ids apply to a plain evaluation; a sweep's query set is "
                                  "datasets.<name>.fewshot.query_set_size (docs/fewshot.md)")
            try:
                run_sweep(cfg, a.shots, 1 if a.trials is None else a.trials, checkpoint=a.checkpoint,
                          splits=a.splits, output_dir=a.output_dir, resume=a.resume)
            except Interrupted as e:
                raise Interrupted(f"{e}; resume with: {resume_command(argv, prog)}", resumable=True) from None
            return 0
        from vlmkit.engine.entrypoints import evaluate

        options = EvalOptions(resume=a.resume, limit=a.limit, ids=read_ids(a.ids) if a.ids else None)
        try:
            evaluate(cfg, checkpoint=a.checkpoint, splits=a.splits, output_dir=a.output_dir, options=options)
        except Interrupted as e:
            raise Interrupted(f"{e}; resume with: {resume_command(argv, prog)}", resumable=True) from None
        return 0

    return guarded(run, args)


#: ``vlmkit/configs`` — the same folder as :data:`vlmkit.schema.CONFIG_ROOT`, named here so that ``vlmkit list`` does
#: not import omegaconf (tests/test_startup.py checks that both agree).
CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
#: Kind name (as typed after ``vlmkit list``) → (registry attribute, defaults folder under vlmkit/configs or None).
LIST_KINDS = {"models": ("MODELS", "models"), "tasks": ("TASKS", None), "datasets": ("DATASETS", "datasets"),
              "schedulers": ("SCHEDULERS", None), "hooks": ("HOOKS", None), "processors": ("PROCESSORS", None)}


def _summary(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0] if doc else "(no description)"


def list_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="List the registered components with their defaults file.")
    parser.add_argument("kinds", nargs="*", metavar="KIND",
                        help=f"what to list: {', '.join(LIST_KINDS)} (default: all)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers components first (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit import registry
        from vlmkit.errors import ConfigError

        unknown = [k for k in a.kinds if k not in LIST_KINDS]
        if unknown:
            raise ConfigError(f"vlmkit list: unknown kind '{unknown[0]}'; choose from {', '.join(LIST_KINDS)}")
        registry.import_modules(a.imports)
        for kind in a.kinds or list(LIST_KINDS):
            attr, folder = LIST_KINDS[kind]
            reg = getattr(registry, attr)
            print(f"{kind}:")
            for name in reg.names():
                defaults = CONFIG_ROOT / folder / f"{name}.yaml" if folder else None
                where = f"  [defaults: {defaults}]" if defaults is not None and defaults.is_file() else ""
                print(f"  {name:<16} {_summary(reg.doc(name))}{where}")  # built-ins stay unimported
        return 0

    return guarded(run, args)


#: ``vlmkit COMMAND``: (one-line description, "module:function" taking (argv, prog)).
COMMANDS = {
    "train": ("train (and evaluate) a model from a project YAML", "vlmkit.cli:train_main"),
    "evaluate": ("evaluate a model on dataset splits; few-shot sweeps with --shots", "vlmkit.cli:evaluate_main"),
    "prepare-data": ("generate synthetic datasets in the official layouts, or write shards", "vlmkit.prepare_data:main"),
    "score": ("score a results file with the official rules (scienceqa, vqa, caption)", "vlmkit.metrics.__main__:main"),
    "list": ("list registered models, tasks, datasets, schedulers, hooks, processors", "vlmkit.cli:list_main"),
    "chat": ("chat with a trained model about images (terminal, or --web)", "vlmkit.chat:chat_main"),
    "inspect": ("show an evaluation's answers item by item (terminal table or HTML page)", "vlmkit.inspect:inspect_main"),
    "compare": ("compare runs: results.md table, PNG plots, report.html", "vlmkit.compare:compare_main"),
    "study": ("train every project YAML of a folder (skipping finished runs), then compare them",
              "vlmkit.compare:study_main"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<13} {summary}" for name, (summary, _) in COMMANDS.items())
    return f"usage: vlmkit COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n`vlmkit COMMAND --help` shows a command's options."


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vlmkit`` console command: dispatch to a subcommand, which parses its own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        from vlmkit import __version__

        print(f"vlmkit {__version__}")
        return 0
    if args[0] not in COMMANDS:
        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"error: unknown command '{args[0]}'{hint} commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[args[0]][1].split(":")
    return getattr(importlib.import_module(module), function)(args[1:], prog=f"vlmkit {args[0]}")


def _exit(status: int) -> None:
    """Exit with ``status``. Under torchrun, without the interpreter's teardown: the process group is destroyed and
    every file closed by then, and gloo's threads can abort a finished rank during teardown ("terminate called without
    an active exception", exit -6) even though the run succeeded."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def console() -> None:
    """The installed ``vlmkit`` script (setup.py entry point)."""
    _exit(main())


def entry(main: Callable[..., int]) -> None:
    """Used by tools/*.py: run and exit with its status."""
    _exit(main(None, prog=Path(sys.argv[0]).name))
