#!/usr/bin/env python
"""Evaluate a model: `[torchrun ...] tools/evaluate.py --cfg-path <yaml> [--checkpoint F] [--split S] [--shots N ...]`.

The same as `vlmkit evaluate ...` (vlmkit must be installed: `pip install -e .`)."""
from vlmkit.cli import entry, evaluate_main

if __name__ == "__main__":
    entry(evaluate_main)
