"""Chat with a trained model about images: ``vlmkit chat --run RUN_DIR`` (terminal) or ``... --web`` (browser).

``engine.py`` loads the model and streams replies, ``formats.py`` builds the model's training prompt from the turns,
``settings.py`` and ``images.py`` check what a user changes or hands in, ``terminal.py`` and ``web.py`` are the two
front ends, ``cli.py`` the command. See docs/chat.md.
"""
from vlmkit.chat.cli import chat_main

__all__ = ["chat_main"]
