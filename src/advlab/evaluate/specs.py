"""Attack specifications: an attack is a registered name plus parameters, checked before any work starts.

A spec is plain data (name, parameters, target rule, id) so that it can be written into a run's fingerprint,
read back from a TOML config, and compared between a run and its resumption. :func:`make_spec` validates the
parameters against the attack function's own signature: an unknown name or parameter, a missing required one,
a value of the wrong type or an eps written wrongly is one :class:`SpecError` naming what exists. (One file past
400 lines: the registry, the parameter checks and the algorithm versions are the one table a new attack edits.)
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import attacks as _attacks
from ..attacks.pgd import L0_STARTS
from ..errors import UsageError
from ..numbers import format_number, parse_number
from . import suite as _suite


class SpecError(UsageError):
    """A user mistake in an attack specification, a run configuration or a run directory (one line, exit 2)."""


# Arguments the engine supplies itself; a user may not set them in a spec.
ENGINE_ARGS: frozenset[str] = frozenset({"model", "x", "y", "return_info", "seed"})
# Engine-level keys of a spec (not passed to the attack function).
TARGET_MODES: tuple[str, ...] = ("random", "least-likely")
# Parameters that hold a budget or step in pixel units and may be written as a fraction ("8/255").
FRACTION_PARAMS: frozenset[str] = frozenset({"eps", "alpha", "c", "kappa", "lr"})

# Values a string parameter may take, per parameter name, and where one attack differs, per (attack, name).
# Checked by make_spec so that a wrong value on the command line is a one-line usage error before any work,
# not a ValueError from inside an attack. Keep in step with the attacks' own checks.
STRING_CHOICES: dict[str, tuple[str, ...]] = {"norm": ("linf", "l2"), "loss": ("ce", "margin")}
ATTACK_STRING_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("apgd", "loss"): ("ce", "dlr"),
    ("apgd_t", "loss"): ("ce", "dlr"),
    ("apgd_l1", "loss"): ("ce", "dlr"),
    ("fmn", "norm"): ("l0", "l1", "l2", "linf"),
    ("fab", "norm"): ("l1", "l2", "linf"),
    ("fab_t", "norm"): ("l1", "l2", "linf"),
    ("minimal", "norm"): ("l0", "l1", "l2", "linf"),
    ("pgd", "norm"): ("linf", "l2", "l1", "l0"),
    ("pgd", "l0_start"): L0_STARTS,
}
# Integer parameters and their least allowed value.
INT_MINIMUM: dict[str, int] = {
    "steps": 1,
    "restarts": 1,
    "binary_search_steps": 1,
    "queries": 1,
    "square_queries": 1,
    "n_target_classes": 1,
    "candidates": 2,
    "refine_steps": 0,
    "eot_samples": 1,
}
# Real parameters (other than the pixel budgets of FRACTION_PARAMS) and their range (low, high, low included).
REAL_RANGE: dict[str, tuple[float, float, bool]] = {
    "rho": (0.0, 1.0, False),
    "p_init": (0.0, 1.0, False),
    "decay": (0.0, math.inf, True),
    "overshoot": (0.0, math.inf, True),
    "sigma": (0.0, math.inf, False),
    "tau_init": (0.0, 1.0, False),
    "tau_factor": (0.0, math.inf, True),
}

# The version of each attack's algorithm, part of every run's fingerprint (advlab.evaluate.rundir): a run
# directory is resumed only by code whose attacks compute the same records. BUMP an attack's number in the
# same change that alters the records it gives for the same settings and seed (a new step rule, other
# defaults, another random stream, a fixed bug); leave it when only speed, comments or layout change. An
# attack missing here (one registered with register_attack) is version 1 unless registered with another.
ALGORITHM_VERSIONS: dict[str, int] = {
    "fgsm": 1,
    "bim": 1,
    "pgd": 1,
    "mifgsm": 1,
    "deepfool": 1,
    "cw_l2": 2,  # 2: the gradient through tanh and the distance term written out (rounding differs)
    "apgd": 3,  # 2: with eot_samples K > 1 a break must be resolved by the K draws (attacks.eot.decisive);
    # 3: and confirmed on K fresh draws before it counts (attacks.eot.Expected.confirm)
    "apgd_t": 3,  # 2, 3: likewise
    "apgd_l1": 2,  # 2: the L1 projection's multiplier summed from the largest breakpoints (rounding differs)
    "square": 2,  # 2: a sample adversarial at x comes back as x, successful, with 0 queries (was searched)
    "fmn": 5,  # 2: L0 defaults alpha_init 100, gamma_init 0.5 (were 1, 0.05). 3: L1 projection summed from the
    # largest breakpoints (rounding differs); L0 ties at the k-th gain kept in index order, per row; L2 onto the
    # sphere until adversarial. 4: before the first adversarial point eps is at least (1 + gamma) ||delta|| after
    # a linear estimate below that (L1, L2, Linf; L0 runs are unchanged but carry the new version too). 5: once
    # adversarial, eps shrinks fast enough to reach the boundary linearised along delta by the last step
    "ddn": 1,
    "fab": 5,  # 2: one backward of z_j - z_y per class j != y (was z_j for every j, then subtracted). 3: aimed
    # at f = 0 and counted at a changed top-1 (the paper's), returned points settled past the rounding slack.
    # 4: the projection from a row's first breakpoints: in Linf and L2 the slope summed over the row in memory
    # order and the coordinates with no room out of it (rounding differs), in L1 another minimiser among equal
    # |w_i| possible; a plane out of reach settled directly. 5: an iterate on an exact tie of two logits (f = 0)
    # aims past it (fab.tie_push), where it had a zero step for the rest of the run
    "fab_t": 5,  # 2: target linearised against the true label, any misclassification counts (AutoAttack's FAB-T)
    # 3: fab 3. 4: fab 4. 5: fab 5
    "minimal": 10,  # 2: FAB-T in place of FAB; a second FMN run in L0. 3: FAB-T as AutoAttack's (fab_t 2). 4: fmn 3
    # 5: fab_t 3. 6: fab_t 4. 7: fmn 4. 8: fmn 5. 9: sigma-zero joins the L0 members. 10: fab_t 5
    "sigma_zero": 1,
    "suite_strong": 1,
    "suite_fast": 1,
}

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_attack(name: str, fn: Callable[..., Any], *, version: int = 1) -> None:
    """Make ``fn`` (signature ``fn(model, x, y, ..., return_info=False)``) available to specs as ``name``.

    ``version`` is the algorithm version recorded in run fingerprints (see :data:`ALGORITHM_VERSIONS`):
    register the function again with a higher one when its records change.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"attack names are lower-case identifiers like 'pgd' or 'cw_l2', got {name!r}")
    params = list(inspect.signature(fn).parameters)
    if params[:3] != ["model", "x", "y"]:
        raise ValueError(f"an attack function must start with (model, x, y, ...), {name!r} starts with {params[:3]}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"an attack's algorithm version is an integer >= 1, got {version!r}")
    _REGISTRY[name] = fn
    ALGORITHM_VERSIONS[name] = version


# Attacks whose records also depend on other attacks' algorithms: a suite runs its stages' attacks.
USES: dict[str, tuple[str, ...]] = {
    "suite_strong": ("apgd", "apgd_t", "square"),
    "suite_fast": ("apgd", "apgd_t"),
    "suite_adaptive": ("apgd", "apgd_t", "square"),
}
# The stages of suites registered outside this module (advlab.evaluate.adaptive), for their ``broken_by``.
OTHER_SUITE_STAGES: dict[str, tuple[str, ...]] = {"suite_adaptive": ("apgd-ce", "apgd-t", "square")}


def algorithm_version(name: str) -> int:
    """The algorithm version of attack ``name`` (:data:`ALGORITHM_VERSIONS`; 1 when not listed)."""
    return ALGORITHM_VERSIONS.get(name, 1)


def algorithm_versions(names: Iterable[str]) -> dict[str, int]:
    """The algorithm versions that decide the records of attacks ``names``: theirs and those of the attacks
    they run (:data:`USES`), for a run's fingerprint."""
    used = set(names)
    used |= {inner for name in list(used) for inner in USES.get(name, ())}
    return {name: algorithm_version(name) for name in sorted(used)}


def _discover() -> None:
    """Register every attack :mod:`advlab.attacks` lists in ``ATTACKS`` (new attacks appear by themselves)."""
    for name in _attacks.ATTACKS:
        fn = getattr(_attacks, name, None)
        if name in _REGISTRY or not inspect.isfunction(fn):
            continue
        if list(inspect.signature(fn).parameters)[:3] == ["model", "x", "y"]:
            _REGISTRY[name] = fn


def _suite_attack(suite: str) -> Callable[..., Any]:
    """The worst-case suite of :mod:`advlab.evaluate.suite` as an attack function the engine can run.

    Returns an ``AttackResult`` whose ``extras["broken_by"]`` holds, per sample, the index into
    :data:`SUITE_STAGES` ``[suite]`` of what broke it (0 = already misclassified clean, -1 = robust).
    """

    def attack(
        model: nn.Module,
        x: Any,
        y: Any,
        eps: float,
        *,
        norm: str = "linf",
        square_queries: int = 1000,
        eot_samples: int = 1,
        seed: Any = None,
        return_info: bool = False,
        judge: Any = None,
    ) -> Any:
        result = _suite.run_suite(
            model, x, y, eps, norm, seed=0 if seed is None else seed, suite=suite, square_queries=square_queries,
            eot_samples=eot_samples, judge=judge,
        )  # fmt: skip
        return _attacks.AttackResult(result.x_adv, ~result.robust, None, {"broken_by": result.broken_by})

    attack.__name__ = f"suite_{suite}"
    attack.__doc__ = f"The {suite!r} worst-case suite (advlab.evaluate.suite) as one attack."
    return attack


def suite_stage_names(name: str) -> tuple[str, ...] | None:
    """("clean", stage names...) of a suite attack (``suite_strong``), indexed by ``broken_by``; else None."""
    if name in OTHER_SUITE_STAGES:
        return ("clean", *OTHER_SUITE_STAGES[name])
    if not name.startswith("suite_") or name[len("suite_") :] not in _suite.SUITES:
        return None
    return ("clean", *(st.name for st in _suite.suite_stages(name[len("suite_") :])))


def _discover_suites() -> None:
    for suite in _suite.SUITES:
        key = f"suite_{suite}"
        if key not in _REGISTRY:
            _REGISTRY[key] = _suite_attack(suite)


def registry() -> dict[str, Callable[..., Any]]:
    """Name -> attack function, for every attack a spec may name (``suite_strong``: the worst-case suite)."""
    _discover()
    _discover_suites()
    return dict(_REGISTRY)


def attack_function(name: str) -> Callable[..., Any]:
    reg = registry()
    if name not in reg:
        raise SpecError(f"unknown attack {name!r}; available attacks: {', '.join(sorted(reg))}")
    return reg[name]


# ------------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a run.

    Attributes:
        name: registry name (``fgsm``, ``bim``, ``pgd``, ``cw_l2``, ...).
        params: keyword arguments for the attack function (validated; eps etc. already parsed to floats).
        id: unique name of this attack within the run (records folder, summary key, table row).
        target: for targeted attacks, how targets are chosen: ``"random"`` (uniform among the other classes,
            seeded per sample index), ``"least-likely"`` (the clean prediction's lowest class) or a class index.
        only_unbroken: ids of earlier attacks of the run; this attack then runs only on the samples none of
            them broke (untargeted) and each sample's record is its worst case over all of them (the per-sample
            worst case of an ensemble, as AutoAttack reports).
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    target: str | int | None = None
    only_unbroken: tuple[str, ...] = ()

    @property
    def targeted(self) -> bool:
        return bool(self.params.get("targeted", False))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (written into run.json and summary.json)."""
        return {
            "id": self.id,
            "name": self.name,
            "params": dict(sorted(self.params.items())),
            "targeted": self.targeted,
            "target": self.target,
            "only_unbroken": list(self.only_unbroken),
        }

    def describe(self) -> str:
        """``pgd(eps=8/255, steps=10)``: the name and its non-default parameters, for tables and logs."""
        parts = []
        for key, value in sorted(self.params.items()):
            if key == "targeted":
                continue
            shown = format_number(value) if key in FRACTION_PARAMS and isinstance(value, float) else value
            parts.append(f"{key}={shown}")
        if self.targeted:
            parts.append(f"target={self.target}")
        return f"{self.name}({', '.join(parts)})"


def _check_value(attack: str, key: str, value: Any, default: Any) -> Any:
    """Parse/validate one parameter value: its type against its default in the attack's signature, its value
    against :data:`STRING_CHOICES`, :data:`INT_MINIMUM` and :data:`REAL_RANGE`."""
    if key in FRACTION_PARAMS:
        try:
            return parse_number(value, key, allow_zero=key in {"eps", "kappa"})
        except UsageError as e:
            raise SpecError(str(e)) from None
    choices = ATTACK_STRING_CHOICES.get((attack, key), STRING_CHOICES.get(key))
    if choices is not None and (isinstance(default, str) or (default is None and value is not None)):
        if not isinstance(value, str):
            raise SpecError(f"{attack}: {key} must be a string, got {value!r}")
        if value not in choices:
            raise SpecError(f"{attack}: unknown {key} {value!r}; expected one of {', '.join(map(repr, choices))}")
        return value
    if default is inspect.Parameter.empty or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(f"{attack}: {key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{attack}: {key} must be an integer, got {value!r}")
        if key in INT_MINIMUM and value < INT_MINIMUM[key]:
            raise SpecError(f"{attack}: {key} must be >= {INT_MINIMUM[key]}, got {value}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SpecError(f"{attack}: {key} must be a finite number, got {value!r}")
        value = float(value) + 0.0  # -0.0 as 0.0: one setting, one fingerprint
        if key in REAL_RANGE:
            low, high, closed = REAL_RANGE[key]
            if not (low <= value if closed else low < value) or value > high:
                where = f"{'[' if closed else '('}{low:g}, {high:g}{']' if high < math.inf else ')'}"
                raise SpecError(f"{attack}: {key} must be in {where}, got {value:g}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise SpecError(f"{attack}: {key} must be a string, got {value!r}")
    return value


# Attacks that work in one norm and take no ``norm`` parameter.
ONE_NORM: dict[str, str] = {"bim": "linf", "apgd_l1": "l1", "ddn": "l2", "cw_l2": "l2", "sigma_zero": "l0"}


def attack_norm(name: str, params: Mapping[str, Any]) -> str | None:
    """The norm attack ``name`` works in with ``params``: its ``norm`` parameter, else the attack's one norm
    (:data:`ONE_NORM`), else its function's default ``norm``; None for an attack registered without either."""
    if "norm" in params:
        return str(params["norm"]).lower()
    if name in ONE_NORM:
        return ONE_NORM[name]
    default = inspect.signature(attack_function(name)).parameters.get("norm")
    return None if default is None or not isinstance(default.default, str) else default.default


def ball_of(name: str, params: Mapping[str, Any]) -> tuple[str, float] | None:
    """The (norm, eps) ball of attack ``name`` with ``params``; None for an attack without an eps (the
    minimal-norm attacks, cw_l2)."""
    eps = params.get("eps")
    norm = attack_norm(name, params)
    if eps is None or isinstance(eps, list | tuple) or norm is None:
        return None
    return norm, float(eps)


def _check_budget(name: str, params: Mapping[str, Any]) -> None:
    """An Linf eps above 1 allows every image in [0, 1]: a budget meant for [0, 255] pixels (8 for 8/255),
    refused as ``advlab train --eps`` refuses it (L2 and L1 radii above 1 are meaningful and stay allowed).
    An L0 eps counts changed coordinates and must be a whole number."""
    eps = params.get("eps")
    if not isinstance(eps, int | float) or isinstance(eps, bool):
        return
    norm = attack_norm(name, params)
    if eps > 1 and norm == "linf":
        raise SpecError(
            f"{name}: Linf eps must be in [0, 1] (pixel units, images in [0, 1]), got {eps:g}; "
            f"8/255 = 0.0314 is written 8/255, not 8"
        )
    if norm == "l0" and eps != round(eps):
        raise SpecError(f"{name}: an L0 eps counts changed coordinates and must be a whole number, got {eps:g}")


def make_spec(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    id: str | None = None,
    target: str | int | None = None,
    only_unbroken: Iterable[str] = (),
) -> AttackSpec:
    """Build an :class:`AttackSpec`, checking ``params`` against the attack function's signature.

    Numbers for eps/alpha/c/kappa/lr may be given as strings (``"8/255"``). ``target`` applies to targeted
    attacks only (default ``"random"``).
    """
    if not isinstance(name, str):
        raise SpecError(f"attack name must be a string, got {name!r}")
    fn = attack_function(name)
    params = dict(params or {})
    signature = inspect.signature(fn).parameters
    allowed = {k: p for k, p in signature.items() if k not in ENGINE_ARGS}
    if name in ONE_NORM and "norm" in params and "norm" not in allowed:
        # Naming a one-norm attack's own norm (``--minimal --attack ddn --norm l2``) says nothing more: dropped,
        # so the spec is the one without it; any other norm is refused by name.
        given = params.pop("norm")
        if given != ONE_NORM[name]:
            raise SpecError(f"{name} attacks in {ONE_NORM[name]} only, got norm={given!r}")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SpecError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for attack {name!r}; "
            f"it takes: {', '.join(allowed)}"
        )
    for key in list(params):
        params[key] = _check_value(name, key, params[key], allowed[key].default)
    _check_budget(name, params)
    missing = [k for k, p in allowed.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise SpecError(f"attack {name!r} needs {', '.join(missing)} (e.g. eps=8/255)")
    targeted = bool(params.get("targeted", False))
    if target is not None and not targeted:
        raise SpecError(f"attack {name!r}: a target ({target!r}) is only meaningful with targeted=true")
    if targeted:
        target = "random" if target is None else target
        if isinstance(target, bool) or not (
            (isinstance(target, int) and target >= 0) or (isinstance(target, str) and target in TARGET_MODES)
        ):
            raise SpecError(f"target must be 'random', 'least-likely' or a class index >= 0, got {target!r}")
    spec_id = id if id is not None else AttackSpec(name, params, "", target).describe()
    if not isinstance(spec_id, str) or not spec_id.strip():
        raise SpecError(f"attack id must be a non-empty string, got {spec_id!r}")
    return AttackSpec(name, params, spec_id, target, tuple(only_unbroken))


# The minimal-norm attacks: per sample the smallest perturbation, recorded as ``distance`` (evaluate.robustness).
MINIMAL_ATTACKS: frozenset[str] = frozenset({"fmn", "ddn", "fab", "fab_t", "sigma_zero", "minimal"})


def validate_specs(specs: Iterable[AttackSpec]) -> list[AttackSpec]:
    """Check a run's specs together: unique ids, and ``only_unbroken`` naming earlier attacks only, of the same
    targets and, for an attack with a budget, of the same norm and an eps no larger (:func:`_check_chain_ball`)."""
    specs = list(specs)
    if not specs:
        raise SpecError("no attacks given; name at least one (e.g. --attack pgd --eps 8/255)")
    seen: dict[str, AttackSpec] = {}
    for spec in specs:
        if not isinstance(spec, AttackSpec):
            raise TypeError(f"attacks must be AttackSpec objects (see advlab.evaluate.make_spec), got {spec!r}")
        if spec.id in seen:
            raise SpecError(
                f"two attacks share the id {spec.id!r} (the same attack and settings twice, e.g. --eps 0.1 0.1?); "
                "drop one, or give each a distinct id (id = in a config file)"
            )
        if spec.only_unbroken and spec.name in MINIMAL_ATTACKS:
            raise SpecError(
                f"attack {spec.id!r}: a minimal-norm attack measures every sample's own smallest perturbation and "
                "takes no only_unbroken (a sample another attack broke would get that attack's size, not its "
                "own); list both attacks, and the run cross-checks them"
            )
        for dep in spec.only_unbroken:
            if dep not in seen:
                raise SpecError(f"attack {spec.id!r}: only_unbroken names {dep!r}, which is not an earlier attack")
            if (seen[dep].targeted, seen[dep].target) != (spec.targeted, spec.target):
                raise SpecError(f"attack {spec.id!r}: only_unbroken names {dep!r}, which has other targets")
            _check_chain_ball(spec, seen[dep])
        seen[spec.id] = spec
    return specs


def _check_chain_ball(spec: AttackSpec, dep: AttackSpec) -> None:
    """A chained attack's row holds its dependencies' points where they broke a sample, so they must lie in its
    own ball: a dependency with a budget, in the same norm, with an eps no larger (a break at a larger eps, or
    by a minimal-norm attack, is not a break within this one's)."""
    own = ball_of(spec.name, spec.params)
    if own is None:
        return
    theirs = ball_of(dep.name, dep.params)
    where = f"attack {spec.id!r}: only_unbroken names {dep.id!r}"
    if theirs is None:
        raise SpecError(
            f"{where}, whose points have no budget (a minimal-norm attack, or one without an eps): a sample it broke "
            f"is not broken within {own[0]} eps {own[1]:g}; list both (the run cross-checks minimal-norm attacks)"
        )
    if theirs[0] != own[0]:
        raise SpecError(f"{where}, an attack in {theirs[0]}; chain attacks of the same norm ({own[0]})")
    if theirs[1] > own[1]:
        raise SpecError(
            f"{where}, whose eps {theirs[1]:g} is larger than this attack's {own[1]:g}: its breaks would count at "
            "the smaller eps; chain onto attacks of the same or a smaller eps"
        )


def run_attack(spec: AttackSpec, model: nn.Module, x: Any, y: Any, seed: Any, judge: Any = None) -> Any:
    """Call the spec's attack function; ``seed`` (per-sample int64 tensor) only where the function takes one, and
    ``judge`` (the run's prediction rule, ``judge(points, rows)``) only where it takes one (the suites)."""
    fn = attack_function(spec.name)
    kwargs = dict(spec.params)
    parameters = inspect.signature(fn).parameters
    if "seed" in parameters:
        kwargs["seed"] = seed
    if judge is not None and "judge" in parameters:
        kwargs["judge"] = judge
    return fn(model, x, y, **kwargs)
