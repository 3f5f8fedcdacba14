"""How a failed or interrupted command reaches the user: one ``error:`` line, whichever rank failed.

- A :class:`~vlmkit.errors.VlmkitError` (bad input) prints ``error: <message>`` and exits with status 2; any other
  exception (a plugin's, or a bug) prints ``error: <Type>: <message> (raised at file:line in function; --debug shows the
  traceback)`` and exits with 1. ``--debug`` re-raises instead, with the traceback.
- Under torchrun the line carries the rank (``error: [rank 1] ...``) and is printed once per machine: the first rank
  to fail claims the report (an exclusive file in the temp folder, named after this torchrun launch); ranks that fail
  after it (their collectives lost a peer, or they hit the same error) exit quietly. A failing rank exits at once
  (``os._exit``) rather than waiting in process-group teardown for peers still inside a collective; torchrun then
  stops the others.
- Ctrl-C and SIGTERM end a run with status 130 and the message the runner attached (last good checkpoint, the
  ``--resume`` command).
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from vlmkit.errors import VlmkitError

INTERRUPT_STATUS = 130


class Interrupted(VlmkitError):
    """Ctrl-C or SIGTERM; the message says what survived. ``resumable``: a checkpoint exists to ``--resume`` from."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _claim_path() -> Path:
    launch = "-".join(os.environ.get(k, "") for k in ("MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))
    return Path(tempfile.gettempdir()) / f"vlmkit-failure-{os.getppid()}-{launch}"


def claim_report() -> bool:
    """True for the first rank of this launch (on this machine) to report a failure; always True without torchrun."""
    if _world_size() <= 1:
        return True
    try:
        fd = os.open(_claim_path(), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except OSError:
        return True  # no temp folder to coordinate through: rather two lines than none
    os.write(fd, str(os.environ.get("RANK", "0")).encode())
    os.close(fd)
    return True


def one_line(message: str) -> str:
    """An error message as one line. An error re-raised from a DataLoader worker carries the worker's traceback in
    its message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep its last line."""
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        kind, sep, text = last.partition(": ")
        return f"{text if sep and '.' in kind else last} (in a DataLoader worker)"
    return " ".join(message.split())


def report(message: str, status: int) -> int:
    """Print the one error line (if this rank is the first to fail) and end a distributed rank at once."""
    message = one_line(message)
    rank = f"[rank {os.environ.get('RANK', '0')}] " if _world_size() > 1 else ""
    if claim_report():
        # One write: under torchrun another rank's progress bar may be mid-line on the same terminal.
        sys.stderr.write(f"{chr(10) if rank else ''}error: {rank}{message}\n")
        sys.stderr.flush()
    if _world_size() > 1:
        sys.stdout.flush()
        os._exit(status)
    return status


def describe_exception(e: BaseException) -> str:
    """``Type: message (raised at file:line in function; --debug shows the traceback)``."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (raised at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else " ("
    text = one_line(str(e)) or "(no message)"
    return f"{type(e).__name__}: {text[:500]}{where}; --debug shows the traceback)"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's or torchrun's stop) is handled like Ctrl-C."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
