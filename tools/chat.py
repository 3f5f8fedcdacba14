#!/usr/bin/env python
"""Chat with a trained model: `tools/chat.py --run RUN_DIR` (terminal) or `--web` (browser); see docs/chat.md.

The same as `vlmkit chat ...` (vlmkit must be installed: `pip install -e .`)."""
from vlmkit.chat import chat_main
from vlmkit.cli import entry

if __name__ == "__main__":
    entry(chat_main)
