"""Per-sample minimal distances and the robust-accuracy curves a run's records give, with the cross-check of
the minimal-norm attacks against the fixed-eps attacks of the same norm.

A minimal-norm attack (FMN, DDN, FAB, the ``minimal`` ensemble) answers, per sample, the smallest
perturbation d_i that breaks it; its records carry ``distance`` = d_i in the attack's norm (0 for a sample
the model already gets wrong, inf where nothing was found within the budget), measured in float64 from the
returned point and counted only where the engine's fresh forward pass confirms success. Robust accuracy at
eps is then exactly #{i: d_i > eps} / n for every eps at once (the curve AttackBench, Cina et al. 2025, and
the "robustness curves" of Göpfert et al. 2020 plot). Its median eps* is the median of d_i, and its area
over [0, E] is (1/n) sum_i min(d_i, E), reported divided by E (E = ``eps_max``: the largest finite distance
or eps of that norm in the run, so all curves of one norm share it).

A sweep of one fixed-eps attack (the same attack at several eps) gives the same curve at its eps values from
its rows' top-1 accuracies, and a per-sample ``curve`` (with median and AUC) from upper bounds on each
sample's distance: the smallest perturbation with which a row broke it. That curve is at or below every row
(a sample a row broke at a small eps counts as broken at the larger ones, where a random start or search
may have missed it), and its median and AUC are upper bounds on the model's.

The cross-check: a sample that a fixed-eps attack of the norm broke at eps (with a perturbation of size
b <= eps, read from the record where the record measures that norm) must have a minimal distance <= b;
where it does not, the minimal-norm ensemble was weak there. Such violations are counted and listed, and the
``corrected`` curve uses min(d_i, b) per sample.

All functions are pure functions of the records and specs, sorted by sample index, so a resumed or sharded
run gives the same numbers.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ..attacks.norms import get_norm
from .specs import MINIMAL_ATTACKS, AttackSpec, attack_norm

# Relative slack of the cross-check (float32 round-off of a perturbation measured in float64).
CROSS_CHECK_RTOL = 1e-5
# At most this many violations are listed in summary.json (all are counted).
MAX_LISTED = 1000
# The norms whose per-sample size every record carries and that bound a broken sample's distance.
MEASURED = ("l1", "l2", "linf")


def is_minimal(spec: AttackSpec) -> bool:
    """Whether ``spec`` is a minimal-norm attack (its records carry per-sample distances)."""
    return spec.name in MINIMAL_ATTACKS


def spec_norm(spec: AttackSpec) -> str | None:
    """The norm a spec attacks in (:func:`~advlab.evaluate.specs.attack_norm`)."""
    return attack_norm(spec.name, spec.params)


def add_distances(spec: AttackSpec, records: Sequence[dict[str, Any]], x: Tensor, x_adv: Tensor) -> None:
    """Set ``distance`` in each record of a minimal-norm attack: 0 where the clean input already fails
    (untargeted: top-1 != label; targeted: top-1 == target), ||x_adv - x|| in the spec's norm (float64) where
    the record's fresh forward pass says success, else None (none found within the budget: inf, written as
    JSON null since records are strict JSON)."""
    norm = spec_norm(spec)
    assert norm is not None, spec
    sizes = get_norm(norm).size(x_adv.detach().double() - x.detach().double()).tolist()
    for rec, size in zip(records, sizes, strict=True):
        goal = rec["label"] if rec["target"] is None else rec["target"]
        clean_fails = (rec["clean_top5"][0] != goal) if rec["target"] is None else (rec["clean_top5"][0] == goal)
        rec["distance"] = 0.0 if clean_fails else (float(size) if rec["success"] else None)


def record_distance(record: Mapping[str, Any]) -> float:
    """A minimal-norm attack's record's distance (null: none found within the budget, inf). Minimal-norm attacks
    are never chained (:func:`~advlab.evaluate.specs.validate_specs`), so every record of one carries it."""
    return math.inf if record["distance"] is None else float(record["distance"])


# ------------------------------------------------------------------------------------------------ curves


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def distance_curve(distances: Sequence[float], eps_max: float | None = None) -> dict[str, Any]:
    """The exact robust-accuracy curve of per-sample minimal distances (0 = misclassified, inf = unbroken).

    ``eps`` holds 0 and every distinct finite positive distance, ascending; ``robust_accuracy[k]`` is the
    fraction of samples with distance > ``eps[k]`` (a sample breaks at eps when its distance is <= eps), so
    the curve is the right-continuous step function through these points. ``median_eps``: the median
    distance (None when it is inf); ``auc``: the area under the curve over [0, eps_max] divided by eps_max.
    """
    ds = sorted(float(d) for d in distances)
    n = len(ds)
    steps = sorted({d for d in ds if 0 < d < math.inf})
    eps = [0.0, *steps]
    robust, k = [], 0
    for e in eps:
        while k < n and ds[k] <= e:
            k += 1
        robust.append((n - k) / n if n else None)
    auc = None
    if n and eps_max is not None and eps_max > 0:
        auc = math.fsum(min(d, eps_max) for d in ds) / (n * eps_max)
    return {
        "n": n,
        "n_unbroken": sum(not math.isfinite(d) for d in ds),
        "eps": eps,
        "robust_accuracy": robust,
        "median_eps": _finite(statistics.median(ds)) if n else None,
        "auc": auc,
        "eps_max": eps_max,
    }


def _by_index(records: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(r["index"]): r for r in sorted(records, key=lambda r: int(r["index"]))}


def _sweep_key(spec: AttackSpec, norm: str) -> str:
    rest = {k: v for k, v in spec.params.items() if k != "eps"}
    return json.dumps([spec.name, norm, rest], sort_keys=True, default=str)


def robustness_summary(
    records: Mapping[str, Sequence[Mapping[str, Any]]], specs: Sequence[AttackSpec]
) -> dict[str, Any] | None:
    """summary.json's ``robustness``: per norm, the curve of every untargeted minimal-norm attack and of their
    per-sample minimum (``ensemble``), the curves of fixed-eps sweeps, and the cross-check; None when the
    run has neither a minimal-norm attack nor a sweep of two or more eps."""
    minimal: dict[str, list[AttackSpec]] = {}
    fixed: dict[str, list[AttackSpec]] = {}
    for spec in specs:
        norm = spec_norm(spec)
        if spec.targeted or norm is None or not records.get(spec.id):
            continue
        if is_minimal(spec):
            minimal.setdefault(norm, []).append(spec)
        elif "eps" in spec.params:
            fixed.setdefault(norm, []).append(spec)
    out: dict[str, Any] = {}
    for norm in sorted(set(minimal) | set(fixed)):
        section = _norm_section(norm, records, minimal.get(norm, []), fixed.get(norm, []))
        if section is not None:
            out[norm] = section
    return out or None


def _norm_section(
    norm: str,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    minimal: Sequence[AttackSpec],
    fixed: Sequence[AttackSpec],
) -> dict[str, Any] | None:
    sweeps: dict[str, list[AttackSpec]] = {}
    for spec in fixed:
        sweeps.setdefault(_sweep_key(spec, norm), []).append(spec)
    sweep_curves = []
    for group in sweeps.values():
        if len(group) < 2 and not minimal:
            continue
        rows = sorted(group, key=lambda s: float(s.params["eps"]))
        accs = []
        for s in rows:
            rs = list(_by_index(records[s.id]).values())
            accs.append(sum(r["adv_top5"][0] == r["label"] for r in rs) / len(rs))
        sweep_curves.append(
            {
                "attack": rows[0].name,
                "ids": [s.id for s in rows],
                "eps": [float(s.params["eps"]) for s in rows],
                "robust_accuracy": accs,
            }
        )
    if not minimal and not sweep_curves:
        return None
    dists = {s.id: {i: record_distance(r) for i, r in _by_index(records[s.id]).items()} for s in minimal}
    finite = [d for ds in dists.values() for d in ds.values() if math.isfinite(d)]
    eps_max = max([*finite, *(float(s.params["eps"]) for s in fixed)], default=0.0) or None
    fixed_eps = {s.id: float(s.params["eps"]) for s in fixed}
    for sweep in sweep_curves:
        bounds = _sweep_bounds(norm, records, sweep["ids"], sweep["eps"], fixed_eps)
        sweep["curve"] = distance_curve(list(bounds.values()), eps_max)
    section: dict[str, Any] = {"eps_max": eps_max, "attacks": {}, "sweeps": sweep_curves}
    for s in minimal:
        section["attacks"][s.id] = distance_curve(list(dists[s.id].values()), eps_max)
    if not minimal:
        return section
    best = {i: min(ds[i] for ds in dists.values() if i in ds) for i in sorted(set().union(*dists.values()))}
    section["ensemble"] = distance_curve(list(best.values()), eps_max)
    section["cross_check"] = _cross_check(norm, records, fixed, best, eps_max)
    return section


def _broken_within(norm: str, eps: float, record: Mapping[str, Any]) -> float:
    """The size b <= eps of the perturbation with which a fixed-eps attack broke a sample: its record's own
    measure in L1, L2 and Linf; eps in L0 (a record's ``l0`` ignores moves below ``L0_TOL``, so it can be
    smaller than the point's count of changed coordinates and is no bound)."""
    return min(eps, float(record[norm])) if norm in MEASURED else eps


def _sweep_bounds(
    norm: str,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    ids: Sequence[str],
    eps: Sequence[float],
    fixed_eps: Mapping[str, float],
) -> dict[int, float]:
    """Per sample, an upper bound on its minimal distance from a sweep: 0 where the clean image already fails,
    else the smallest b with which a row broke it (inf where none did). A sample broken at eps stays broken
    at every larger eps, so (in a complete run, where every row holds the same samples) the curve of these
    bounds is at or below each row's accuracy at that row's eps.

    A record copied from an earlier attack (``from``: ``only_unbroken`` chains) holds that attack's point,
    which may be larger than this row's eps (a chain onto a larger eps; the row then counts a sample as broken
    at its eps that only a larger perturbation broke, and the curve does not): its bound is the point's
    measured size (l1, l2, linf), else (L0) the eps of the attack it came from where that is of this norm
    (``fixed_eps``); otherwise it gives none.
    """
    bounds: dict[int, float] = {}
    for spec_id, e in zip(ids, eps, strict=True):
        for i, r in _by_index(records[spec_id]).items():
            b = bounds.get(i, math.inf)
            if r["clean_top5"][0] != r["label"]:
                b = 0.0
            elif r["adv_top5"][0] != r["label"]:
                origin = r.get("from")
                if origin is None:
                    b = min(b, _broken_within(norm, e, r))
                elif norm in MEASURED:
                    b = min(b, float(r[norm]))
                elif origin in fixed_eps:
                    b = min(b, fixed_eps[origin])
            bounds[i] = b
    return bounds


def _cross_check(
    norm: str,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    fixed: Sequence[AttackSpec],
    best: Mapping[int, float],
    eps_max: float | None,
) -> dict[str, Any]:
    """Every sample a fixed-eps attack broke with a perturbation of size b must have a minimal distance <= b."""
    corrected = dict(best)
    violations: list[dict[str, Any]] = []
    checked = 0
    for spec in fixed:
        eps = float(spec.params["eps"])
        for i, r in _by_index(records[spec.id]).items():
            if i not in best or r.get("from") is not None or r["adv_top5"][0] == r["label"]:
                continue
            checked += 1
            bound = _broken_within(norm, eps, r)
            if best[i] > bound * (1 + CROSS_CHECK_RTOL) + 1e-12:
                violations.append(
                    {"index": i, "attack": spec.id, "eps": eps, "bound": bound, "distance": _finite(best[i])}
                )
                corrected[i] = min(corrected[i], bound)
    violations.sort(key=lambda v: (v["index"], v["attack"]))
    return {
        "attacks": [s.id for s in fixed],
        "n_checked": checked,
        "n_violations": len(violations),
        "n_samples_violating": len({v["index"] for v in violations}),
        "violations": violations[:MAX_LISTED],
        "corrected": distance_curve(list(corrected.values()), eps_max),
    }


def attach_robustness(
    summary: dict[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]], specs: Sequence[AttackSpec]
) -> None:
    """Add ``robustness`` (:func:`robustness_summary`) to a summary, and to each minimal-norm attack's entry
    its ``curve``; a run with neither minimal-norm attacks nor sweeps is left unchanged."""
    section = robustness_summary(records, specs)
    if section is None:
        return
    summary["robustness"] = section
    for entry in summary["attacks"]:
        for norm_section in section.values():
            if entry["id"] in norm_section["attacks"]:
                entry["curve"] = norm_section["attacks"][entry["id"]]
