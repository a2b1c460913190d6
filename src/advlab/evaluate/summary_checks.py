"""The gradient-masking checks that a summary (and its records) already answers, without the model.

Part of the checklist of :mod:`advlab.evaluate.sanity` (Carlini et al. 2019, Athalye et al. 2018): per norm
and eps, the iterative attacks against FGSM, Square against the white-box attacks, a worst-case suite against
the other attacks of the run, and accuracy against eps. :func:`advlab.evaluate.evaluate` puts the result in
summary.json under ``sanity``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .sanity import PASS, WARN, Check, check_monotone, tolerated
from .specs import attack_norm

_SINGLE_STEP = {"fgsm"}
_ITERATIVE = {"bim", "pgd", "apgd", "apgd_t", "mifgsm"}
_BLACK_BOX = {"square"}


def _is_suite(name: str) -> bool:
    return name.startswith("suite_")


def _attack_key(a: Mapping[str, Any]) -> tuple[str, float | None]:
    params = a.get("params") or {}
    eps = params.get("eps")
    return str(attack_norm(a["name"], params)), None if eps is None else float(eps)


def _verdict(name: str, ok: bool, numbers: dict[str, Any], message: str, warning: str) -> Check:
    """A summary check: pass, or warn with ``warning`` appended to the message."""
    return Check(name, PASS if ok else WARN, numbers, message if ok else f"{message}: {warning}")


def check_summary(
    summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> dict[str, Any] | None:
    """The checks an evaluation summary answers without the model (untargeted attacks only), per (norm, eps):

    - ``iterative_vs_single_step``: no iterative attack or worst-case suite leaves more top-1 accuracy than
      FGSM; with ``records``, also no more than a handful of samples
      (:func:`~advlab.evaluate.sanity.tolerated`) that FGSM broke and
      the iterative attacks (each suite alone) did not;
    - ``square_vs_whitebox``: Square breaks no more than a handful of samples beyond the white-box attacks
      (with ``records`` counted per sample: broken by Square and by no white-box attack; else the difference
      of the accuracies);
    - ``suite_is_worst_case``: a worst-case suite leaves no more than a handful of samples standing that another
      attack of the run broke (per sample with ``records``), else the suite's number is not the run's worst case;
    - ``accuracy_monotone_in_eps`` per attack configuration.

    ``records`` maps attack ids to their per-sample records (as :func:`advlab.evaluate.evaluate` returns them).
    Returns ``{"checks": [...], "warnings": k}``, or None when the summary holds no pair of attacks to compare.
    """
    attacks = [
        a
        for a in summary.get("attacks", [])
        if not a.get("targeted") and a.get("adv_top1") is not None and _attack_key(a)[1] is not None
    ]
    n = int(summary.get("n_samples") or summary.get("clean", {}).get("n") or 0)
    broken: dict[str, set[int]] | None = None
    if records is not None and all(a.get("id") in records for a in attacks):
        broken = {a["id"]: {int(r["index"]) for r in records[a["id"]] if r["success"]} for a in attacks}

    def beyond(these: Sequence[Mapping[str, Any]], others: Sequence[Mapping[str, Any]]) -> int:
        """Samples some attack of ``these`` broke and no attack of ``others`` did (needs records)."""
        assert broken is not None
        return len(set().union(*(broken[a["id"]] for a in these)) - set().union(*(broken[a["id"]] for a in others)))

    checks: list[Check] = []
    by_budget: dict[tuple[str, float | None], list[Mapping[str, Any]]] = {}
    for a in attacks:
        by_budget.setdefault(_attack_key(a), []).append(a)
    for (norm, eps), group in sorted(by_budget.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
        single = [a for a in group if a["name"] in _SINGLE_STEP]
        iterative = [a for a in group if a["name"] in _ITERATIVE]
        suites = [a for a in group if _is_suite(a["name"])]
        black = [a for a in group if a["name"] in _BLACK_BOX]
        where = f"({norm}, eps {eps:.4g})"
        strong = iterative + suites
        if single and strong:
            acc_fgsm = min(a["adv_top1"] for a in single)
            worst = max(strong, key=lambda a: a["adv_top1"])
            numbers = {"eps": eps or 0.0, "fgsm_accuracy": acc_fgsm, "iterative_accuracy": worst["adv_top1"]}
            ok = worst["adv_top1"] <= acc_fgsm
            msg = f"{worst['label']} leaves {worst['adv_top1']:.1%} vs FGSM's {acc_fgsm:.1%} {where}"
            if broken is not None:
                # Each suite is a worst case by itself; the plain iterative attacks count together.
                counts = [beyond(single, [s]) for s in suites] + ([beyond(single, iterative)] if iterative else [])
                only = max(counts)
                numbers["broken_only_by_fgsm"] = only
                if only > tolerated(n):
                    ok = False
                    msg += f"; FGSM broke {only} samples the iterative attacks missed"
            checks.append(
                _verdict(
                    "iterative_vs_single_step", ok, numbers, msg, "the iterative attack is weaker than a single step"
                )
            )
        white = single + iterative
        if black and white and n:
            acc_white = min(a["adv_top1"] for a in white)
            acc_black = min(a["adv_top1"] for a in black)
            numbers = {"eps": eps or 0.0, "whitebox_accuracy": acc_white, "square_accuracy": acc_black}
            if broken is not None:
                only_black = beyond(black, white)
                numbers["broken_only_by_square"] = only_black
                ok = only_black <= tolerated(n)
                msg = f"Square broke {only_black} samples that no white-box attack did {where}"
            else:
                ok = (acc_white - acc_black) * n <= tolerated(n)
                msg = f"Square leaves {acc_black:.1%}, the best white-box attack {acc_white:.1%} {where}"
            checks.append(
                _verdict(
                    "square_vs_whitebox", ok, numbers, msg, "the black-box attack is stronger, so gradients are masked"
                )
            )
        for suite in suites:
            others = [a for a in group if a is not suite and not _is_suite(a["name"])]
            if not others or not n:
                continue
            best = min(others, key=lambda a: a["adv_top1"])
            numbers = {"eps": eps or 0.0, "suite_accuracy": suite["adv_top1"], "best_other_accuracy": best["adv_top1"]}
            if broken is not None:
                missed = beyond(others, [suite])
                numbers["missed_by_suite"] = missed
                ok = missed <= tolerated(n)
                msg = f"{suite['label']} left standing {missed} samples that other attacks of the run broke {where}"
            else:
                ok = (suite["adv_top1"] - best["adv_top1"]) * n <= tolerated(n)
                msg = f"{suite['label']} leaves {suite['adv_top1']:.1%}, {best['label']} {best['adv_top1']:.1%} {where}"
            why = (
                "the suite's number is not the worst case of this run (chain it with only_unbroken, or report the "
                "per-sample worst case)"
            )
            checks.append(_verdict("suite_is_worst_case", ok, numbers, msg, why))
    by_config: dict[str, list[Mapping[str, Any]]] = {}
    for a in attacks:
        rest = {k: v for k, v in (a.get("params") or {}).items() if k not in ("eps", "alpha")}
        by_config.setdefault(f"{a['name']} {sorted(rest.items())}", []).append(a)
    for group in by_config.values():
        if len({_attack_key(a)[1] for a in group}) < 2:
            continue
        check = check_monotone([_attack_key(a)[1] or 0.0 for a in group], [a["adv_top1"] for a in group])
        checks.append(Check(check.name, check.status, check.numbers, f"{group[0]['name']}: {check.message}"))
    if not checks:
        return None
    return {"checks": [c.to_dict() for c in checks], "warnings": sum(c.status == WARN for c in checks)}
