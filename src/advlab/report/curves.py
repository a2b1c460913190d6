"""The robustness-curve section of a run's report: robust accuracy against eps per norm, for each
minimal-norm attack, their per-sample ensemble, the cross-check's corrected curve and fixed-eps sweeps, from
summary.json's ``robustness`` (:mod:`advlab.evaluate.robustness`), as a figure (PNG) and tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .document import Figure, Section, Table
from .plots import Series, curve_png


def step_points(eps: Sequence[float], acc: Sequence[float | None], eps_max: float) -> tuple[list[float], list[float]]:
    """The right-continuous step function through (eps[k], acc[k]) as a polyline up to ``eps_max``: the
    accuracy holds at acc[k] on [eps[k], eps[k + 1]) and drops at eps[k + 1]."""
    xs: list[float] = []
    ys: list[float] = []
    for k, (e, a) in enumerate(zip(eps, acc, strict=True)):
        if a is None:
            continue
        end = eps[k + 1] if k + 1 < len(eps) else max(eps_max, e)
        xs += [e, end]
        ys += [a, a]
    return xs, ys


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def robustness_section(summary: Mapping[str, Any]) -> Section | None:
    """Per norm in ``summary["robustness"]``: the curves in one figure, a table of median eps* and AUC per
    curve, and the cross-check's counts with the first violations; None when the run has no curves."""
    robustness = summary.get("robustness")
    if not robustness:
        return None
    section = Section("Robustness curves", id="robustness")
    section.paragraphs.append(
        "Robust top-1 accuracy at every eps. A minimal-norm attack's curve is exact from its per-sample "
        "distances (a sample counts as broken at eps when its smallest adversarial perturbation found is <= eps); "
        "'ensemble' is the per-sample minimum over the minimal-norm attacks, 'corrected' also takes the samples "
        "that fixed-eps attacks of the same norm broke; a sweep of a fixed-eps attack gives points at its eps, and "
        "a per-sample curve that counts a sample as broken from the smallest perturbation with which the sweep "
        "broke it (its median and AUC are upper bounds). AUC is the area under the curve over [0, eps max] "
        "divided by eps max."
    )
    for norm, sec in robustness.items():
        _add_norm(section, norm, sec)
    return section


def _add_norm(section: Section, norm: str, sec: Mapping[str, Any]) -> None:
    eps_max = float(sec.get("eps_max") or 0.0)
    curves: list[tuple[str, Mapping[str, Any]]] = list(sec["attacks"].items())
    if "ensemble" in sec and len(sec["attacks"]) > 1:
        curves.append(("ensemble", sec["ensemble"]))
    check = sec.get("cross_check")
    if check and check["n_violations"]:
        curves.append(("corrected (cross-check)", check["corrected"]))
    series = []
    for label, c in curves:
        xs, ys = step_points(c["eps"], c["robust_accuracy"], eps_max)
        series.append(Series(label, xs, ys, "-"))
    for sw in sec["sweeps"]:
        series.append(Series(f"{sw['attack']} (fixed eps)", sw["eps"], sw["robust_accuracy"], "o"))
        if "curve" in sw:  # summaries written before the sweeps had one have points only
            curves.append((f"{sw['attack']} (sweep, per sample)", sw["curve"]))
            xs, ys = step_points(sw["curve"]["eps"], sw["curve"]["robust_accuracy"], eps_max)
            series.append(Series(curves[-1][0], xs, ys, "--"))
    if series:
        unit = "changed coordinates" if norm == "l0" else "pixel units"
        png = curve_png(
            series, title=f"Robust accuracy against eps ({norm})", xlabel=f"eps ({norm}, {unit})",
            ylabel="robust top-1 accuracy (%)", log_x=False,
        )  # fmt: skip
        section.figures.append(
            Figure(f"robustness_{norm}.png", png, f"Robust accuracy against eps in {norm}.", f"curves in {norm}")
        )
    rows = [
        [label, norm, str(c["n"]), _num(c["median_eps"]), _num(c["auc"]), str(c["n_unbroken"])] for label, c in curves
    ]
    if rows:
        section.tables.append(
            Table(
                f"Median eps* and AUC ({norm})",
                ["curve", "norm", "samples", "median eps*", "AUC", "unbroken"],
                rows,
                note=f"eps max = {_num(sec.get('eps_max'))}",
                id=f"robustness-{norm}",
            )
        )
    if check:
        shown = check["violations"][:20]
        section.tables.append(
            Table(
                f"Cross-check against fixed-eps attacks ({norm}): {check['n_violations']} violations "
                f"({check.get('n_samples_violating', '?')} samples) in {check['n_checked']} checks (a sample a "
                "fixed-eps attack broke, per attack)",
                ["sample", "fixed-eps attack", "eps", "its perturbation", "minimal distance found"],
                [[str(v["index"]), v["attack"], _num(v["eps"]), _num(v["bound"]), _num(v["distance"])] for v in shown],
                note="every sample a fixed-eps attack broke at eps must have a minimal distance <= the size of the "
                "perturbation it broke it with (its record's L1, L2 or Linf size, at most eps; in L0, eps); a "
                "violation means the minimal-norm attacks were weak on that sample"
                + (f" (first 20 of {check['n_violations']} shown)" if check["n_violations"] > 20 else ""),
                id=f"cross-check-{norm}",
            )
        )
