"""The ``vlmkit compare`` and ``vlmkit study`` commands (argument parsing; the one-line error contract of
:func:`vlmkit.cli.guarded`). A bad argument — also one argparse rejects — is one ``error:`` line and exit status 2."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from vlmkit.cli import guarded


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error: ...`` line (no usage block), as every vlmkit user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _published(parser: argparse.ArgumentParser) -> None:
    from vlmkit.compare.published import PUBLISHED_MODES  # not report.py: that imports matplotlib and torch

    parser.add_argument("--published", choices=PUBLISHED_MODES, default="auto",
                        help="published OpenFlamingo-9B / Flamingo-9B few-shot curves on sweep figures: auto (when a "
                             "sweep's config.yaml is the matching 9B setup), always, never (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")


def compare_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = OneLineParser(prog=prog, description="Compare runs: results tables (results.md), comparative figures "
                           "(PNG) and one self-contained report.html (docs/compare.md).")
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                        help="run.output_dir folders (trainings, evaluations or few-shot sweeps)")
    parser.add_argument("--out", required=True, help="folder for results.md, report.html and the figures")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="one name per RUN_DIR, in order (default: the folder names)")
    _published(parser)
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.compare.report import compare
        from vlmkit.compare.runs import check_run_dirs

        entries = check_run_dirs(a.run_dirs, a.names)
        result = compare(entries, a.out, a.published)
        for table in result.tables:
            print(table.markdown() + "\n")
        print(f"wrote {a.out}/results.md, {a.out}/report.html and {len(result.figures)} figure(s)", flush=True)
        return 0

    return guarded(run, args)


def study_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = OneLineParser(prog=prog, description="Train every project YAML of a folder (each into OUT/<yaml stem>; "
                           "finished runs are skipped) and compare them into OUT/compare (docs/compare.md).")
    parser.add_argument("yaml_dir", metavar="DIR_OF_YAMLS", help="folder of project YAMLs, e.g. "
                        "projects/quickstart/ablations")
    parser.add_argument("--out", required=True, help="study folder: OUT/<yaml stem>/ per run, OUT/compare/")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys of every run, e.g. run.device=cpu")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers components (repeatable); same as run.imports")
    _published(parser)
    args = parser.parse_args(argv)

    def run(a: argparse.Namespace) -> int:
        from vlmkit.compare.study import run_study

        return run_study(a.yaml_dir, a.out, a.options, a.imports, a.published)

    return guarded(run, args)
