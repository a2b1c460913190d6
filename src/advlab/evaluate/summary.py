"""summary.json: a run's configuration and the statistics of its records, plus the one-line report per attack.

:func:`build_summary` is a pure function of the records and the configuration (through
:func:`~advlab.evaluate.records.summarize`), so a run resumed, sharded or merged from ranks gives the same
summary; :func:`summary_line` is what ``advlab eval`` prints at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import __version__
from .records import summarize
from .robustness import attach_robustness
from .specs import AttackSpec, suite_stage_names
from .suite import DEFAULT_SQUARE_QUERIES, suite_stages
from .summary_checks import check_summary

SUMMARY_SCHEMA = "advlab.summary/1"


def suite_progress(spec: AttackSpec, stats: Mapping[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per stage of a suite, in order: its budget, the samples it broke, and the top-1 accuracy left after it
    (AutoAttack's running robust accuracy); the last ``robust_after`` is the suite's ``adv_top1``."""
    queries = int(spec.params.get("square_queries", DEFAULT_SQUARE_QUERIES))
    described = {"clean": "misclassified without attack"} | {
        st.name: st.description for st in suite_stages(spec.name[len("suite_") :], square_queries=queries)
    }
    counts = {int(k): int(v) for k, v in stats["broken_by_counts"].items()}
    n = int(stats["n"])
    standing = n - int(stats.get("n_from_other_attacks") or 0)  # broken by the attacks it was chained on
    out = []
    for k, name in enumerate(names):
        standing -= counts.get(k, 0)
        out.append(
            {
                "name": name,
                "description": described.get(name, ""),
                "broken": counts.get(k, 0),
                "robust_after": standing / n,
            }
        )
    return out


def build_summary(
    records: Mapping[str, list[dict[str, Any]]],
    specs: Sequence[AttackSpec],
    config: Mapping[str, Any],
    *,
    fingerprint: str | None = None,
    complete: Mapping[str, bool] | None = None,
    wall_s: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the configuration, then :func:`~advlab.evaluate.records.summarize` of the records.

    ``complete`` tells per attack id whether every batch of the run is in ``records`` (default: as many
    records as samples).
    """
    core = summarize({s.id: records.get(s.id, []) for s in specs})
    n = config["data"]["n_samples"]
    attacks = []
    for spec in specs:
        stats = core["attacks"][spec.id]
        names = suite_stage_names(spec.name)
        if names is not None and "broken_by_counts" in stats:
            stats["broken_by"] = {
                ("robust" if int(k) < 0 else names[int(k)]): v for k, v in stats["broken_by_counts"].items()
            }
            stats["stages"] = suite_progress(spec, stats, names)
        attacks.append(
            {
                **spec.to_dict(),
                "label": spec.describe(),
                **stats,
                "targeted": spec.targeted,  # the spec says it even before any record exists (a partial run)
                "complete": (complete or {}).get(spec.id, stats["n"] == n),
            }
        )
    summary = {
        "schema": SUMMARY_SCHEMA,
        "advlab_version": __version__,
        "fingerprint": fingerprint,
        "complete": all(a["complete"] for a in attacks),
        "n_samples": n,
        "model": config["model"],
        "data": config["data"],
        "seed": config["seed"],
        "batch_size": config["batch_size"],
        "n_unreadable": n - core["clean"]["n"] if all(a["complete"] for a in attacks) else None,
        "clean": core["clean"],
        "attacks": attacks,
        "time_s": math.fsum(a["time_s"] for a in attacks),
        "wall_s": wall_s,
        "sanity": None,
        **dict(extra or {}),
    }
    attach_robustness(summary, records, specs)
    summary["sanity"] = sanity_of(summary, records)
    return summary


def sanity_of(
    summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[str, Any] | None:
    """The gradient-masking checks a summary and its records answer
    (:func:`advlab.evaluate.summary_checks.check_summary`: iterative vs single-step, Square vs white-box and a
    suite vs the other attacks per sample, monotone in eps); None where none applies."""
    return check_summary(summary, records)


def summary_line(attack: Mapping[str, Any]) -> str:
    """One line per attack for the end of a run."""

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    name = attack["id"] if attack["id"] == attack["label"] else f"{attack['id']} = {attack['label']}"
    line = f"{name}: top-1 {pct(attack['adv_top1'])} top-5 {pct(attack['adv_top5'])}"
    line += f" (clean {pct(attack['clean_top1'])}), success {pct(attack['success_rate'])}"
    # Mean L2 over the successful examples: comparable across attacks (a suite returns the clean image, L2 0,
    # where it failed; a PGD its last try); the max Linf over all samples shows the budget held.
    linf, l2 = attack["norms"]["linf"]["max"], (attack.get("norms_successful") or {}).get("l2", {}).get("mean")
    if linf is not None:
        line += f", max Linf {linf:.4g}, mean L2 of successes {'n/a' if l2 is None else f'{l2:.4g}'}"
    curve = attack.get("curve")  # minimal-norm attacks: the median smallest distance (advlab.evaluate.robustness)
    if curve is not None:
        median = curve["median_eps"]
        line += f", median distance {'inf' if median is None else f'{median:.4g}'}"
    return line + f", {attack['time_s']:.1f} s over {attack['n']} samples"
