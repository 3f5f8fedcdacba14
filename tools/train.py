#!/usr/bin/env python
"""Train a model from a project YAML: `[torchrun --nproc_per_node N] tools/train.py --cfg-path <yaml> [--options k=v ...]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout without install

from vlmkit.cli import entry, train_main  # noqa: E402

if __name__ == "__main__":
    entry(train_main)
