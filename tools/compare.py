#!/usr/bin/env python
"""Compare runs: `tools/compare.py RUN_DIR [RUN_DIR ...] --out DIR [--names ...]` → DIR/results.md, DIR/report.html and
comparative figures (docs/compare.md).

The same as `vlmkit compare ...` (vlmkit must be installed: `pip install -e .`)."""
from vlmkit.cli import entry
from vlmkit.compare import compare_main

if __name__ == "__main__":
    entry(compare_main)
