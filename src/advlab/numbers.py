"""Numbers as users write them: pixel budgets like ``8/255`` read and shown the same way everywhere.

At the bottom of advlab (it imports nothing of advlab but :mod:`advlab.errors`): the evaluation specs, the
training configuration and the reports all read eps, alpha, c, ... with :func:`parse_number` and label them
with :func:`format_number`, so ``--eps 8/255`` means and shows the same in ``advlab eval``, ``advlab train``
and a report.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .errors import UsageError


def parse_number(text: object, name: str = "eps", *, allow_zero: bool = True) -> float:
    """Read a non-negative finite number written as ``0.03``, ``8/255`` or ``1e-2`` (or given as int/float).

    Raises :class:`~advlab.errors.UsageError` naming ``name`` for anything else: ``8/0``, ``-1``, ``abc``,
    ``nan``, ``inf``, booleans.
    """
    if isinstance(text, bool):
        raise UsageError(f"{name} must be a number like 0.03 or a fraction like 8/255, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    elif isinstance(text, str):
        s = text.strip()
        try:
            if "/" in s:
                num, _, den = s.partition("/")
                if float(den) == 0:
                    raise UsageError(f"{name} {text!r} divides by zero; write it like 8/255 or 0.03")
                value = float(Fraction(num.strip()) / Fraction(den.strip()))
            else:
                value = float(s)
        except UsageError:
            raise
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{name} {text!r} is not a number; write it like 0.03 or as a fraction 8/255") from None
    else:
        raise UsageError(f"{name} must be a number like 0.03 or a fraction like 8/255, got {type(text).__name__}")
    if not math.isfinite(value):
        raise UsageError(f"{name} must be finite, got {text!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        unit = " (pixel units, images in [0, 1])" if name.lstrip("-") in ("eps", "alpha") else ""
        raise UsageError(f"{name} must be {bound}{unit}, got {text!r}")
    return value


def format_number(value: float) -> str:
    """A short label for a pixel budget: ``8/255`` when it is one, a whole number in full (an L0 count, 12345),
    else up to 4 significant digits."""
    frac = Fraction(value).limit_denominator(255)
    if frac.denominator == 255 and abs(float(frac) - value) < 1e-12 and frac.numerator != 0:
        return f"{frac.numerator}/255"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
