#!/usr/bin/env python
"""Generate or convert datasets: the same as `vlmkit prepare-data ...` (see vlmkit/prepare_data.py)."""
from vlmkit.cli import entry
from vlmkit.prepare_data import main

if __name__ == "__main__":
    entry(main)
