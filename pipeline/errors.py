"""Errors a user can fix. The CLI prints them as one line on stderr and exits non-zero.

    raise InputError(f"{path}: not a video FFmpeg can read")

Anything that is not a BlurvidError is a bug and keeps its traceback.
"""


class BlurvidError(Exception):
    """A problem with what the user asked for, worded for the user."""


class InputError(BlurvidError):
    """The input file is missing, unreadable, empty or corrupt."""


class OutputError(BlurvidError):
    """The output cannot be written where the user asked."""


class ModelError(BlurvidError):
    """The model file is missing, unknown or corrupt."""
