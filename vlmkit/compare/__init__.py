"""Comparing runs: ``vlmkit compare RUN_DIR ... --out DIR`` (tables, figures, report.html) and ``vlmkit study DIR
--out OUT`` (train a folder of project YAMLs, then compare them). See docs/compare.md.

    runs.py       what a run folder holds (config.yaml, metrics.jsonl, metrics.json, fewshot_summary.json)
    tables.py     results tables (per task; few-shot shots × run), best values bold
    plots.py      the figures (loss, learning rate, validation metric, per-category bars, dropout profile, few-shot)
    published.py  published 9B few-shot numbers and the config test for the matching setup
    report.py     results.md and the self-contained report.html
    study.py      training a folder of YAMLs, then comparing them
    cli.py        compare_main / study_main (argparse, one-line errors)
"""
from vlmkit.compare.cli import compare_main, study_main

__all__ = ["compare_main", "study_main"]
