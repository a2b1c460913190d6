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
from ..numbers import parse_number
from .intervals import CONFIDENCE, METHOD, fmt_interval, proportion, with_interval
from .records import RECORD_NORMS, summarize
from .robustness import attach_robustness
from .specs import AttackSpec, SpecError, attack_norm, suite_stage_names
from .suite import DEFAULT_SQUARE_QUERIES, SUITES, suite_stages
from .summary_checks import check_summary

SUMMARY_SCHEMA = "advlab.summary/1"


def suite_progress(spec: AttackSpec, stats: Mapping[str, Any], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per stage of a suite, in order: its budget, the samples it broke, and the top-1 accuracy left after it
    (AutoAttack's running robust accuracy); the last ``robust_after`` is the suite's ``adv_top1``."""
    queries = int(spec.params.get("square_queries", DEFAULT_SQUARE_QUERIES))
    suite = spec.name[len("suite_") :]
    stages = suite_stages(suite, square_queries=queries) if suite in SUITES else []  # adaptive: see its records
    described = {"clean": "misclassified without attack"} | {st.name: st.description for st in stages}
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
                "robust_after_ci95": proportion(standing, n),
            }
        )
    return out


def intervals_of(stats: Mapping[str, Any], records: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """95% Wilson intervals (:mod:`advlab.evaluate.intervals`) with their counts for every accuracy and
    success rate of one attack's statistics: accuracies over ``n`` samples, success rates over the
    ``n_eligible`` ones, and (from ``records``) the success rate on the clean-correct ones."""
    n, eligible = int(stats["n"]), int(stats.get("n_eligible") or 0)
    out = {key: with_interval(stats.get(key), n) for key in ("clean_top1", "clean_top5", "adv_top1", "adv_top5")}
    out |= {key: with_interval(stats.get(key), eligible) for key in ("success_rate", "success_rate_top5")}
    correct = {
        int(r["index"])
        for r in records
        if (r["target"] is None or r["target"] != r["label"]) and r["clean_top5"][0] == r["label"]
    }
    out["success_rate_on_clean_correct"] = with_interval(stats.get("success_rate_on_clean_correct"), len(correct))
    return out


def uint8_of(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How the successful examples fare as 8-bit images (``--save-adversarial``, :mod:`advlab.evaluate.saved`):
    of the successful records, how many still succeed after rounding while staying in the eps-ball (the
    rounding outside the ball is not re-checked, see :mod:`advlab.evaluate.saved`), how many the rounding pushed
    out of the ball, and how many the nearest uint8 point inside the ball (the rounding itself where it stays
    inside) still succeeds on; None without saved examples."""
    saved = {int(r["index"]): r for r in records if r.get("adversarial")}
    if not saved:
        return None
    hits = [r for r in saved.values() if r["success"]]
    return {
        "successful": len(hits),
        "uint8_success": sum(r["adversarial"]["uint8_success"] is True for r in hits),
        "uint8_out_of_ball": sum(not r["adversarial"]["uint8_in_ball"] for r in hits),
        "uint8_in_ball_success": sum(r["adversarial"]["uint8_in_ball_success"] is True for r in hits),
    }


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
        stats["ci95"] = intervals_of(stats, records.get(spec.id, []))
        u8 = uint8_of(records.get(spec.id, []))
        if u8 is not None:
            stats["uint8"] = u8
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
        "clean": {
            **core["clean"],
            "ci95": {k: with_interval(core["clean"][k], core["clean"]["n"]) for k in ("top1", "top5")},
        },
        "intervals": {"confidence": CONFIDENCE, "method": METHOD},
        "attacks": attacks,
        "time_s": math.fsum(a["time_s"] for a in attacks),
        "wall_s": wall_s,
        "sanity": None,
        **dict(extra or {}),
    }
    attach_robustness(summary, records, specs)
    summary["sanity"] = with_model_checks((extra or {}).get("sanity"), sanity_of(summary, records))
    return summary


def with_model_checks(model_checks: Mapping[str, Any] | None, from_summary: Mapping[str, Any] | None) -> Any:
    """The checks run on the model (``advlab eval --sanity``, the adaptive suite: ``{"checks", "warnings", "on"}``)
    followed by those the summary answers; either alone when the other is None."""
    if model_checks is None or from_summary is None:
        return model_checks if from_summary is None else from_summary
    checks = [*model_checks["checks"], *from_summary["checks"]]
    return {**model_checks, "checks": checks, "warnings": sum(c["status"] == "warn" for c in checks)}


def sanity_of(
    summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[str, Any] | None:
    """The gradient-masking checks a summary and its records answer
    (:func:`advlab.evaluate.summary_checks.check_summary`: iterative vs single-step, Square vs white-box and a
    suite vs the other attacks per sample, monotone in eps); None where none applies."""
    return check_summary(summary, records)


def published_for(model: Mapping[str, Any] | None, attack: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """RobustBench's published row (``model.published``, :func:`advlab.models.published_result`) when ``attack``
    ran in its threat model: the same eps and, where both are known, the same norm (the threat is the middle
    part of ``robustbench:DATASET/THREAT/NAME``); None otherwise, so no number is set beside another budget's."""
    row = (model or {}).get("published")
    params = attack.get("params") or {}
    eps = params.get("eps")
    if not row or not isinstance(eps, int | float) or isinstance(eps, bool):
        return None
    if abs(float(eps) - parse_number(row["eps"])) > 1e-9:
        return None
    parts = str((model or {}).get("name") or "").split("/")
    threat = parts[1].lower() if len(parts) == 3 else None
    try:
        norm = attack_norm(str(attack.get("name")), params)
    except SpecError:  # a name no longer registered (an older run): compare eps only
        norm = None
    return None if threat and norm and threat != norm else row


def published_text(row: Mapping[str, Any]) -> str:
    """``RobustBench published AutoAttack 43.21%``: the words set next to advlab's robust accuracy."""
    return f"RobustBench published AutoAttack {row['autoattack_acc']}%"


def summary_line(attack: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> str:
    """One line per attack for the end of a run; every rate with its 95% Wilson interval, and the sample count.
    With the run's ``model`` (summary.json's) carrying RobustBench's published row for this threat model, that
    published AutoAttack accuracy follows advlab's robust top-1 (:func:`published_for`; its source is printed
    on the CLI's RobustBench line and in the report)."""

    def pct(key: str) -> str:
        ci = (attack.get("ci95") or {}).get(key)
        if ci is not None:
            return fmt_interval(ci)
        v = attack[key]
        return "n/a" if v is None else f"{100 * v:.1f}%"

    name = attack["id"] if attack["id"] == attack["label"] else f"{attack['id']} = {attack['label']}"
    line = f"{name}: top-1 {pct('adv_top1')}"
    row = published_for(model, attack)
    if row is not None:
        line += f" ({published_text(row)})"
    line += f" top-5 {pct('adv_top5')}"
    line += f" (clean {pct('clean_top1')}), success {pct('success_rate')}"
    # Mean L2 over the successful examples: comparable across attacks (a suite returns the clean image, L2 0,
    # where it failed; a PGD its last try); the max Linf over all samples shows the budget held.
    linf, l2 = attack["norms"]["linf"]["max"], (attack.get("norms_successful") or {}).get("l2", {}).get("mean")
    if linf is not None:
        line += f", max Linf {linf:.4g}, mean L2 of successes {'n/a' if l2 is None else f'{l2:.4g}'}"
    sparse = summary_attack_norm(attack)  # an L1 or L0 attack: its largest perturbation in its norm, budget held
    own = (attack["norms"].get(sparse) or {}).get("max") if sparse in ("l1", "l0") else None
    if own is not None:
        line += f", max {str(sparse).upper()} {own:.4g}"
    curve = attack.get("curve")  # minimal-norm attacks: the median smallest distance (advlab.evaluate.robustness)
    if curve is not None:
        median = curve["median_eps"]
        line += f", median distance {'inf' if median is None else f'{median:.4g}'}"
    return line + f", {attack['time_s']:.1f} s over n={attack['n']} samples (95% Wilson intervals)"


def summary_attack_norm(attack: Mapping[str, Any]) -> str | None:
    """The norm (l0, l1, l2 or linf) a summary's attack works in; None for one without a norm or one this advlab
    does not know (not registered, or a callable whose signature cannot be read)."""
    try:
        norm = attack_norm(str(attack.get("name")), attack.get("params") or {})
    except (SpecError, TypeError, ValueError):
        return None
    return norm if norm in RECORD_NORMS else None


def stage_lines(attack: Mapping[str, Any]) -> list[str]:
    """A suite's robust accuracy after each stage (AutoAttack's printout), one indented line per stage;
    empty for an attack without ``stages``."""
    lines = []
    for st in attack.get("stages") or []:
        ci = st.get("robust_after_ci95")
        acc = fmt_interval(ci) if ci is not None else f"{100 * st['robust_after']:.1f}%"
        lines.append(f"  after {st['name']}: robust top-1 {acc} ({st['broken']} broken by this stage)")
    return lines


def robustness_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per norm with a minimal-norm attack and fixed-eps attacks beside it, the cross-check's verdict
    (:mod:`advlab.evaluate.robustness`): how many samples a fixed-eps attack broke within a budget below the
    smallest distance the minimal-norm attacks found, and the corrected median; empty where none ran."""
    lines = []
    for norm, section in (summary.get("robustness") or {}).items():
        check = section.get("cross_check")
        if not check or not check["attacks"]:
            continue
        against = ", ".join(check["attacks"])
        if check["n_checked"] == 0:
            lines.append(f"cross-check ({norm}): {against} broke no sample, nothing to check")
            continue
        if check["n_violations"] == 0:
            lines.append(
                f"cross-check ({norm}): {check['n_checked']} checks of samples broken by {against}: none below the "
                "smallest distance the minimal-norm attacks found"
            )
            continue
        median = check["corrected"]["median_eps"]
        lines.append(
            f"cross-check ({norm}): {check['n_samples_violating']} samples broken by {against} within a budget below "
            f"the smallest distance the minimal-norm attacks found ({check['n_violations']} of {check['n_checked']} "
            f"checks); corrected median distance {'inf' if median is None else f'{median:.4g}'} "
            f"(summary.json: robustness.{norm}.cross_check)"
        )
    return lines


def sanity_lines(summary: Mapping[str, Any]) -> list[str]:
    """The gradient-masking checks' verdicts, one line each (empty where none ran)."""
    sanity = summary.get("sanity") or {}
    return [f"check {c['name']}: {c['status']} - {c.get('message', '')}" for c in sanity.get("checks", [])]
