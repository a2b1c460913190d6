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

from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(ValueError):
    """A user mistake found by advlab's own validation; ``advlab`` prints it as one line and exits with 2."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named (data, config, weights) does not exist: a usage mistake that Python
    callers can also catch as ``FileNotFoundError``."""


class MissingDependencyError(UsageError, ModuleNotFoundError):
    """An optional package that what the user asked for needs is not installed (the message says what to
    install); Python callers can also catch it as ``ModuleNotFoundError``."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class RunError(RuntimeError):
    """A run stopped for a reason its message explains; ``advlab`` prints it as one line and exits with 1."""


@contextmanager
def as_usage_error(*types: type[BaseException]) -> Iterator[None]:
    """Re-raise ``types`` raised inside the block as :class:`UsageError` (a missing file as
    :class:`MissingInputError`), message unchanged.

    Only for the boundary where values the user gave (a model name, a weights file, a device) are handed to a
    function whose raising of ``types`` *is* its validation of them; anything raised later, once the work has
    started, must stay what it is.
    """
    try:
        yield
    except UsageError:
        raise
    except types as e:
        kind = MissingInputError if isinstance(e, FileNotFoundError) else UsageError
        raise kind(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
