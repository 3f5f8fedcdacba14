#!/usr/bin/env python
"""Train every project YAML of a folder and compare the runs: `tools/study.py DIR_OF_YAMLS --out OUT` → OUT/<yaml stem>/
per run (finished ones skipped) and OUT/compare/ (docs/compare.md).

The same as `vlmkit study ...` (vlmkit must be installed: `pip install -e .`)."""
from vlmkit.cli import entry
from vlmkit.compare import study_main

if __name__ == "__main__":
    entry(study_main)
