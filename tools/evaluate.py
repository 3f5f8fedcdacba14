#!/usr/bin/env python
"""Evaluate a model: `[torchrun ...] tools/evaluate.py --cfg-path <yaml> [--checkpoint FILE] [--split test]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without install

from vlmkit.cli import entry, evaluate_main  # noqa: E402

if __name__ == "__main__":
    entry(evaluate_main)
