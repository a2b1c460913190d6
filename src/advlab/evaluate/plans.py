"""Run plans built from specs: a worst-case suite chained onto the attacks listed before it.

``advlab eval --config attacks.toml --suite strong --eps 8/255`` and the Python API share this rule: the suite
runs after, and on top of, the listed *untargeted* attacks of its own budget (same eps, same norm), through
``only_unbroken``. It attacks only the samples none of them broke, and each sample's record is the worst case
over all of them, so the suite's row is the per-sample worst case of the whole ensemble (AutoAttack's way of
reporting robust accuracy, Croce & Hein 2020).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .specs import AttackSpec, SpecError, attack_norm, make_spec, registry


def available_suites() -> list[str]:
    """Names of the suites a plan may add (``strong``, ``fast``)."""
    return sorted(k[len("suite_") :] for k in registry() if k.startswith("suite_"))


def suite_specs(suite: str, eps: Iterable[Any], params: Mapping[str, Any] | None = None) -> list[AttackSpec]:
    """One spec of suite ``suite`` per budget in ``eps`` (``params``: norm, square_queries)."""
    names = available_suites()
    if suite not in names:
        raise SpecError(f"unknown suite {suite!r}; available: {', '.join(names) or 'none installed'}")
    budgets = list(eps)
    if not budgets:
        raise SpecError(f"suite {suite!r} needs at least one eps (e.g. --eps 8/255)")
    return [make_spec(f"suite_{suite}", {**dict(params or {}), "eps": e}) for e in budgets]


def chain_suite(listed: Sequence[AttackSpec], suite: AttackSpec) -> AttackSpec:
    """``suite`` made the per-sample worst case of the untargeted attacks in ``listed`` with its eps and norm."""
    norm, eps = attack_norm(suite.name, suite.params), suite.params["eps"]
    same = [
        s.id for s in listed if not s.targeted and s.params.get("eps") == eps and attack_norm(s.name, s.params) == norm
    ]
    return dataclasses.replace(suite, only_unbroken=tuple(same))


def with_suites(listed: Sequence[AttackSpec], suites: Iterable[AttackSpec]) -> list[AttackSpec]:
    """The run's attacks: ``listed``, then each suite chained onto them (:func:`chain_suite`)."""
    listed = list(listed)
    return listed + [chain_suite(listed, s) for s in suites]
