#!/usr/bin/env python
"""Train a model from a project YAML: `[torchrun --nproc_per_node N] tools/train.py --cfg-path <yaml> [--options k=v ...]`.

The same as `vlmkit train ...` (vlmkit must be installed: `pip install -e .`)."""
from vlmkit.cli import entry, train_main

if __name__ == "__main__":
    entry(train_main)
