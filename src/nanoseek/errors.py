"""The one error base for bad input.

Every module's error class for what a user got wrong (a config field, a checkpoint, a data file, a
task, a flag) derives from UserError, and `nanoseek`'s entry point catches UserError once: one line
that says what is wrong and where, exit status 2, no traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input; the message names the file (and line), field or flag, and what is allowed.

    A ValueError, so callers that guard with `except ValueError` keep working."""


__all__ = ["UserError"]
