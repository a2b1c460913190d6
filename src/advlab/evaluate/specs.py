"""Attack specifications: an attack is a registered name plus parameters, checked before any work starts.

A spec is plain data (name, parameters, target rule, id) so that it can be written into a run's fingerprint,
read back from a TOML config, and compared between a run and its resumption. :func:`make_spec` validates the
parameters against the attack function's own signature: an unknown name or parameter, a missing required one,
a value of the wrong type or an eps written wrongly is one :class:`SpecError` naming what exists.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from torch import nn

from .. import attacks as _attacks


class SpecError(ValueError):
    """A user mistake in an attack specification, a run configuration or a run directory (one line)."""


# Arguments the engine supplies itself; a user may not set them in a spec.
ENGINE_ARGS: frozenset[str] = frozenset({"model", "x", "y", "return_info", "seed"})
# Engine-level keys of a spec (not passed to the attack function).
TARGET_MODES: tuple[str, ...] = ("random", "least-likely")
# Parameters that hold a budget or step in pixel units and may be written as a fraction ("8/255").
FRACTION_PARAMS: frozenset[str] = frozenset({"eps", "alpha", "c", "kappa", "lr"})

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_attack(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` (signature ``fn(model, x, y, ..., return_info=False)``) available to specs as ``name``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"attack names are lower-case identifiers like 'pgd' or 'cw_l2', got {name!r}")
    params = list(inspect.signature(fn).parameters)
    if params[:3] != ["model", "x", "y"]:
        raise ValueError(f"an attack function must start with (model, x, y, ...), {name!r} starts with {params[:3]}")
    _REGISTRY[name] = fn


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
        seed: Any = None,
        return_info: bool = False,
    ) -> Any:
        from . import suite as _suite

        result = _suite.run_suite(
            model, x, y, eps, norm, seed=0 if seed is None else seed, suite=suite, square_queries=square_queries
        )
        return _attacks.AttackResult(result.x_adv, ~result.robust, None, {"broken_by": result.broken_by})

    attack.__name__ = f"suite_{suite}"
    attack.__doc__ = f"The {suite!r} worst-case suite (advlab.evaluate.suite) as one attack."
    return attack


def suite_stage_names(name: str) -> tuple[str, ...] | None:
    """("clean", stage names...) of a suite attack (``suite_strong``), indexed by ``broken_by``; else None."""
    if not name.startswith("suite_"):
        return None
    from . import suite as _suite

    return ("clean", *(st.name for st in _suite.suite_stages(name[len("suite_") :])))


def _discover_suites() -> None:
    try:
        from . import suite as _suite
    except ImportError:  # the suite module is optional
        return
    for suite in getattr(_suite, "SUITES", {}):
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


# ------------------------------------------------------------------------------------------ number parsing


def parse_number(text: object, name: str = "eps", *, allow_zero: bool = True) -> float:
    """Read a non-negative finite number written as ``0.03``, ``8/255`` or ``1e-2`` (or given as int/float).

    Raises :class:`SpecError` for anything else: ``8/0``, ``-1``, ``abc``, ``nan``, ``inf``, booleans.
    """
    if isinstance(text, bool):
        raise SpecError(f"{name} must be a number like 0.03 or a fraction like 8/255, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    elif isinstance(text, str):
        s = text.strip()
        try:
            if "/" in s:
                num, _, den = s.partition("/")
                if float(den) == 0:
                    raise SpecError(f"{name} {text!r} divides by zero; write it like 8/255 or 0.03")
                value = float(Fraction(num.strip()) / Fraction(den.strip()))
            else:
                value = float(s)
        except SpecError:
            raise
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"{name} {text!r} is not a number; write it like 0.03 or as a fraction 8/255") from None
    else:
        raise SpecError(f"{name} must be a number like 0.03 or a fraction like 8/255, got {type(text).__name__}")
    if not math.isfinite(value):
        raise SpecError(f"{name} must be finite, got {text!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        unit = " (pixel units, images in [0, 1])" if name.lstrip("-") in ("eps", "alpha") else ""
        raise SpecError(f"{name} must be {bound}{unit}, got {text!r}")
    return value


def format_number(value: float) -> str:
    """A short label for a pixel budget: ``8/255`` when it is one, else up to 4 significant digits."""
    frac = Fraction(value).limit_denominator(255)
    if frac.denominator == 255 and abs(float(frac) - value) < 1e-12 and frac.numerator != 0:
        return f"{frac.numerator}/255"
    return f"{value:.4g}"


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
    """Parse/validate one parameter value against the type of its default in the attack's signature."""
    if key in FRACTION_PARAMS:
        return parse_number(value, key, allow_zero=key in {"eps", "kappa"})
    if default is inspect.Parameter.empty or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(f"{attack}: {key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{attack}: {key} must be an integer, got {value!r}")
        if value < 1 and key in {
            "steps",
            "restarts",
            "binary_search_steps",
            "queries",
            "square_queries",
            "n_target_classes",
        }:
            raise SpecError(f"{attack}: {key} must be >= 1, got {value}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{attack}: {key} must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise SpecError(f"{attack}: {key} must be a string, got {value!r}")
    return value


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
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SpecError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for attack {name!r}; "
            f"it takes: {', '.join(allowed)}"
        )
    for key in list(params):
        params[key] = _check_value(name, key, params[key], allowed[key].default)
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


def validate_specs(specs: Iterable[AttackSpec]) -> list[AttackSpec]:
    """Check a run's specs together: unique ids, and ``only_unbroken`` naming earlier attacks only."""
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
        for dep in spec.only_unbroken:
            if dep not in seen:
                raise SpecError(f"attack {spec.id!r}: only_unbroken names {dep!r}, which is not an earlier attack")
            if (seen[dep].targeted, seen[dep].target) != (spec.targeted, spec.target):
                raise SpecError(f"attack {spec.id!r}: only_unbroken names {dep!r}, which has other targets")
        seen[spec.id] = spec
    return specs


def run_attack(spec: AttackSpec, model: nn.Module, x: Any, y: Any, seed: Any) -> Any:
    """Call the spec's attack function; ``seed`` (per-sample int64 tensor) only where the function takes one."""
    fn = attack_function(spec.name)
    kwargs = dict(spec.params)
    if "seed" in inspect.signature(fn).parameters:
        kwargs["seed"] = seed
    return fn(model, x, y, **kwargs)
