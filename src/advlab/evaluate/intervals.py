"""95% intervals for the accuracies and success rates of a run, and the exact McNemar test for two attacks.

**Which interval, and why Wilson.** A robust accuracy is a binomial proportion k/n over the attacked samples,
often near 0 (a strong attack on an undefended model) or near 1 (a weak one), and n is small (a few hundred).
The Wald interval p ± z·sqrt(p(1-p)/n) collapses to width 0 at k = 0 or k = n and undercovers badly near the
edges. Clopper-Pearson (inverting two one-sided binomial tests) never undercovers but is conservative: its
actual coverage is well above 95% for small n, so its intervals are wider than the data justify. The Wilson
score interval (Wilson 1927, "Probable inference, the law of succession, and statistical inference", JASA 22;
inverting the score test) has coverage close to the nominal level for every n and p, including the edges,
and is the interval Brown, Cai & DasGupta (2001, "Interval estimation for a binomial proportion", Statistical
Science 16) recommend for n < 40 and for general use. With z the (1 + 0.95)/2 normal quantile (their eq. 4)::

    centre = (k + z²/2) / (n + z²),   half-width = z·sqrt(n) / (n + z²) · sqrt(p(1-p) + z²/(4n)),  p = k/n

It equals scipy's ``binomtest(k, n).proportion_ci(method="wilson")`` and statsmodels'
``proportion_confint(k, n, method="wilson")`` (checked in tests to 1e-9).

**Two attacks on the same samples** are paired: what decides "A is stronger than B" is only the discordant
samples (broken by A only, by B only). Under "equally strong" each discordant sample is A's with probability
1/2, so the exact McNemar test (McNemar 1947, Psychometrika 12) is the two-sided binomial test of
min(b, c) among b + c at p = 1/2, computed here in exact integer arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any

CONFIDENCE = 0.95
METHOD = "wilson"


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``k / n`` (see the module docstring); (0, 1) for n = 0
    would claim nothing, so n must be at least 1."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    z2 = z * z
    denom = n + z2
    centre = (k + z2 / 2) / denom
    half = z * math.sqrt(n) / denom * math.sqrt(p * (1 - p) + z2 / (4 * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); rounding would leave it a hair off.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def proportion(k: int, n: int) -> dict[str, Any] | None:
    """``{"k", "n", "rate", "low", "high"}``: a count with its 95% Wilson interval, as summary.json holds it
    (None where n is 0: no samples, no number)."""
    if n == 0:
        return None
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n, "low": low, "high": high}


def count_of(rate: float | None, n: int) -> int | None:
    """The count behind a rate ``k / n`` (exact: k and n are far below 2**53)."""
    return None if rate is None or n == 0 else round(rate * n)


def with_interval(rate: float | None, n: int) -> dict[str, Any] | None:
    """:func:`proportion` of the count behind ``rate`` over ``n`` samples."""
    k = count_of(rate, n)
    return None if k is None else proportion(k, n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` samples broken by A only and ``c`` by B only:
    P(X <= min(b, c)) doubled (capped at 1) for X ~ Binomial(b + c, 1/2); 1.0 when there is no discordant pair.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got {b}, {c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


@dataclass(frozen=True)
class Paired:
    """Per-sample comparison of two attacks on the same samples (``broken`` = the record's ``success``)."""

    both: int
    a_only: int
    b_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.a_only + self.b_only + self.neither

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.a_only, self.b_only)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "both": self.both,
            "a_only": self.a_only,
            "b_only": self.b_only,
            "neither": self.neither,
            "mcnemar_exact_p": self.p_value,
        }


def fmt_interval(p: dict[str, Any] | None, digits: int = 1) -> str:
    """``12.5% [8.1, 18.7]`` for a :func:`proportion` (``n/a`` for None)."""
    if p is None:
        return "n/a"
    return f"{100 * p['rate']:.{digits}f}% [{100 * p['low']:.{digits}f}, {100 * p['high']:.{digits}f}]"
