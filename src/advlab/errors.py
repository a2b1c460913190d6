"""Errors shared across advlab's parts, and which of them the command line reports as one line.

:class:`UsageError` marks a mistake in what the user asked for (an unknown attack, model or parameter, eps
written wrongly, a data folder that does not exist, a run directory holding another run): advlab's own
validation raises it before any work starts, its message names what was wrong and what is expected, and the
command line prints it as one line with exit status 2. It subclasses ``ValueError`` so that Python callers
that catch ``ValueError`` keep working.

:class:`RunError` marks a run that stopped for a reason the user can act on (ranks of a torchrun run that
disagree or lost each other, a training run whose loss diverged): one line, exit status 1.

Any other exception (a ``ValueError`` from inside a model's forward, a ``TypeError`` in an attack, a
``RuntimeError`` from torch) is a bug, and the command line lets its traceback show.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user mistake found by advlab's own validation; ``advlab`` prints it as one line and exits with 2."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named (data, config, weights) does not exist: a usage mistake that Python
    callers can also catch as ``FileNotFoundError``."""


class UsageTypeError(UsageError, TypeError):
    """A setting of the wrong type (a string where a number belongs): a usage mistake that Python callers can
    also catch as ``TypeError``."""


class RunExistsError(UsageError, FileExistsError):
    """The output folder already holds a run that this command would overwrite: a usage mistake that Python
    callers can also catch as ``FileExistsError``."""


class MissingDependencyError(UsageError, ModuleNotFoundError):
    """An optional package that what the user asked for needs is not installed (the message says what to
    install); Python callers can also catch it as ``ModuleNotFoundError``."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class RunError(RuntimeError):
    """A run stopped for a reason its message explains; ``advlab`` prints it as one line and exits with 1."""
