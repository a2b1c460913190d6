"""Defences from text, for the command line and config files: ``parse_defense("bit_depth(bits=3)")``."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence

from torch import nn

from advlab.errors import UsageError

from .bpda import bpda_at
from .transforms import JPEG, BitDepth, GaussianNoise, MedianSmoothing, RandomResizePad, defended

# The defences by the name the command line uses.
DEFENSES: dict[str, type[nn.Module]] = {
    "bit_depth": BitDepth,
    "gaussian_noise": GaussianNoise,
    "jpeg": JPEG,
    "median": MedianSmoothing,
    "random_resize_pad": RandomResizePad,
}
_NOT_FROM_TEXT = ("generator",)  # constructor arguments that text cannot give


def _parameters(cls: type[nn.Module]) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in _NOT_FROM_TEXT]


def _choices(names: list[str]) -> str:
    return ", ".join(map(repr, names)) if names else "none"


def parse_defense(spec: str) -> nn.Module:
    """The defence module a string names: ``NAME`` or ``NAME(param=value, ...)`` (positional values also work, in
    the constructor's order), values being int, float or bool literals, e.g. ``"median(size=3)"``,
    ``"jpeg(quality=75, bpda=True)"``, ``"gaussian_noise(sigma=0.1)"``. Names: the keys of :data:`DEFENSES`.

    Anything else (a string that does not parse, an unknown defence or parameter, a bad value) raises one
    ValueError that names the culprit and the choices.
    """
    if not isinstance(spec, str):
        raise UsageError(f"a defence is given as a string such as 'bit_depth(bits=3)', got {type(spec).__name__}")
    usage = f"expected NAME or NAME(param=value, ...) with NAME one of {_choices(list(DEFENSES))}"
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise UsageError(f"cannot parse defence {spec!r}: {usage}") from None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call is not None else node
    if not isinstance(name_node, ast.Name):
        raise UsageError(f"cannot parse defence {spec!r}: {usage}")
    name = name_node.id
    if name not in DEFENSES:
        raise UsageError(f"unknown defence {name!r} in {spec!r}; expected one of {_choices(list(DEFENSES))}")
    cls = DEFENSES[name]
    params = _parameters(cls)
    args: list[object] = []
    kwargs: dict[str, object] = {}
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {str(k.arg): ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            raise UsageError(
                f"cannot parse defence {spec!r}: parameter values must be numbers or True/False"
            ) from None
        if any(k.arg is None for k in call.keywords):
            raise UsageError(f"cannot parse defence {spec!r}: {usage}")
    if len(args) > len(params):
        raise UsageError(
            f"defence {name!r} takes at most {len(params)} parameters ({_choices(params)}), got {len(args)} in {spec!r}"
        )
    for key in kwargs:
        if key not in params:
            raise UsageError(f"unknown parameter {key!r} of defence {name!r}; expected one of {_choices(params)}")
    values = dict(zip(params, args, strict=False))
    for key in kwargs:
        if key in values:
            raise UsageError(f"parameter {key!r} of defence {name!r} is given twice in {spec!r}")
    values.update(kwargs)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"defence {spec!r}: {e}") from None


def defend(model: nn.Module, defenses: Sequence[str] = (), bpda: Sequence[str] = ()) -> tuple[nn.Module, dict]:
    """``model`` behind the defences named in ``defenses`` (strings for :func:`parse_defense`, applied in order),
    with BPDA (:func:`~advlab.defenses.bpda_at`) around the submodules at the dotted paths ``bpda`` (of the
    defended model, e.g. ``"transforms.0"``); and the record of that step, ``{"defenses": [...], "bpda": [...]}``,
    for a run's configuration. Nothing to do: the model itself. Every string is checked before anything is built.
    """
    for name, values in (("defenses", defenses), ("bpda", bpda)):
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise UsageError(f"{name} must be a list of strings, got {values!r}")
    modules = [parse_defense(s) for s in defenses]
    out = defended(model, *modules) if modules else model
    if bpda:
        out = bpda_at(out, tuple(bpda))
    return out, {"defenses": [str(s) for s in defenses], "bpda": [str(p) for p in bpda]}
