"""Errors shared across advlab's parts.

:class:`RunError` marks a run that stopped for a reason the user can act on (ranks of a torchrun run that
disagree or lost each other, a training run whose loss diverged): its message says what happened and what to
do, so the command line prints it as one line instead of a traceback. Any other ``RuntimeError`` is a bug.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run stopped for a reason its message explains; ``advlab`` prints it as one line and exits with 1."""
