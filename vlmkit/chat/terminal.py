"""The terminal chat: one line of stdin at a time; replies stream to stdout, notices start with ``* ``.

A mistake in a line (an unknown command, a bad value, an unreadable image, a question that cannot fit) prints one
``error: ...`` line on stderr and the chat goes on; end of input or ``/quit`` ends it with status 0.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from vlmkit.chat.engine import ChatEngine, ChatSession
from vlmkit.chat.formats import OPTION_SEPARATOR
from vlmkit.chat.settings import LIMITS
from vlmkit.errors import VlmkitError

HELP = f"""commands:
  QUESTION                       ask about the image in effect
  QUESTION {OPTION_SEPARATOR} A {OPTION_SEPARATOR} B               LaVIN: ask with options A, B (at most 5)
  /image PATH                    attach an image for the next questions
  /set NAME VALUE                change a generation setting: {", ".join(LIMITS)}
  /settings                      show the settings
  /prompt                        show the model input of the latest question
  /reset                         forget the conversation and its images (settings stay)
  /help                          this text
  /quit                          leave (so does end of input)"""


class TerminalChat:
    """Reads commands and questions, writes replies and notices."""

    def __init__(self, engine: ChatEngine, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.session = ChatSession(engine)
        self.out, self.err = out, err
        self.commands: dict[str, Callable[[str], bool]] = {
            "/image": self.image, "/set": self.set, "/settings": self.show_settings, "/prompt": self.prompt,
            "/reset": self.reset, "/help": self.help, "/quit": lambda _: False, "/exit": lambda _: False}

    def notice(self, text: str) -> None:
        print(f"* {text}", file=self.out, flush=True)

    def run(self, lines: TextIO) -> int:
        engine = self.session.engine
        self.notice(f"model: {engine.source}")
        self.notice(f"prompt: {engine.format.describe()}")
        self.notice(f"settings: {self.session.settings.describe()} (/help for commands)")
        interactive = lines.isatty()
        while True:
            if interactive:
                print("you> ", end="", file=self.out, flush=True)
            line = lines.readline()
            if not line:
                return 0
            try:
                if not self.handle(line.strip()):
                    return 0
            except VlmkitError as e:
                print(f"error: {e}", file=self.err, flush=True)

    def handle(self, line: str) -> bool:
        """One input line; False ends the chat."""
        if not line:
            return True
        if line.startswith("/"):
            name, _, rest = line.partition(" ")
            command = self.commands.get(name.lower())
            if command is None:
                raise VlmkitError(f"unknown command '{name}'; commands: {', '.join(self.commands)} (a question "
                                  "cannot start with '/')")
            return command(rest.strip())
        return self.ask(line)

    def ask(self, line: str) -> bool:
        reply = self.session.ask(line)
        if reply.dropped:
            kept = len(self.session.turns) - reply.dropped
            self.notice(f"history cut: the {reply.dropped} oldest turn(s) left out to fit "
                        f"{self.session.engine.format.max_tokens} tokens ({kept} earlier turn(s) kept)")
        print("assistant: ", end="", file=self.out, flush=True)
        for piece in reply.stream():
            print(piece, end="", file=self.out, flush=True)
        print(file=self.out, flush=True)
        return True

    def image(self, path: str) -> bool:
        if not path:
            raise VlmkitError("/image needs a path: /image PATH")
        width, height = self.session.attach_image(path)
        self.notice(f"image {len(self.session.images)} attached: {path} ({width}x{height}); it is in effect for the "
                    "next questions")
        return True

    def set(self, rest: str) -> bool:
        parts = rest.split()
        if len(parts) != 2:
            raise VlmkitError(f"/set takes a name and a value, e.g. /set temperature 0.7; names: {', '.join(LIMITS)}")
        self.session.set(*parts)
        self.notice(f"settings: {self.session.settings.describe()}")
        return True

    def show_settings(self, _: str) -> bool:
        for name, limit in LIMITS.items():
            self.notice(f"{name} = {getattr(self.session.settings, name):g}  ({limit.describe()}: {limit.meaning})")
        return True

    def prompt(self, _: str) -> bool:
        text = self.session.last_prompt
        self.notice("no question asked yet" if text is None else f"last model input:\n{text}")
        return True

    def reset(self, _: str) -> bool:
        self.session.reset()
        self.notice("conversation and images forgotten")
        return True

    def help(self, _: str) -> bool:
        print(HELP, file=self.out, flush=True)
        return True
