"""User-facing errors.

Everything a user can cause (a bad config key, a missing file, a checkpoint of another model) raises a subclass of
:class:`VlmkitError`. The command-line tools print such an error as one line on stderr and exit with status 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class VlmkitError(Exception):
    """An error caused by the user's input; its message says what, where and how to fix it."""


class ConfigError(VlmkitError):
    """A config key is unknown, mistyped, or has a value of the wrong type."""


class DataError(VlmkitError):
    """A data file is missing, unreadable or malformed, or a split is empty."""


class CheckpointError(VlmkitError):
    """A weight or checkpoint file is missing or does not match the model."""


class UnknownNameError(VlmkitError, KeyError):
    """A registry lookup failed. Also a KeyError, so ``name in registry``-style code keeps working."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


def missing_file(path: object, what: str, how: str) -> DataError:
    """Build the one-line error for a file that is not there: ``<what> not found: <path> (<how to obtain it>)``."""
    return DataError(f"{what} not found: {path} ({how})")
