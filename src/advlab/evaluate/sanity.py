"""Automatic checks that a robustness number is not an artefact of a weak attack or of masked gradients.

The checks follow Carlini et al. 2019 ("On Evaluating Adversarial Robustness", sec. 5 and appendix checklist)
and Athalye, Carlini & Wagner 2018 ("Obfuscated Gradients Give a False Sense of Security", sec. 3.1):

- ``deterministic_logits``: two forward passes on the same input give the same logits (else the model is
  randomised and gradients must be averaged: EOT, Athalye et al. 2018, sec. 4.3).
- ``zero_gradients``: the share of samples whose input gradient (of the logit margin, which does not saturate
  like the cross-entropy) is exactly zero or not finite. Any such sample blinds every gradient attack.
- ``iterative_vs_single_step``: iterative attacks are at least as strong as FGSM at the same eps.
- ``accuracy_monotone_in_eps``: robust accuracy never rises as eps grows.
- ``large_eps``: at a large eps (0.5 in Linf: any image can be turned grey) accuracy is ~0.
- ``unbounded_attack``: an attack without a norm bound (Carlini-Wagner L2 with a large constant) succeeds on
  ~100% of the samples.
- ``square_vs_whitebox``: the gradient-free Square attack breaks no (more than a handful of) samples that the
  white-box attacks left standing.
- ``loss_rises``: over the iterations of APGD the loss increases for (almost) every sample.
- ``suite_is_worst_case`` (summaries only): a worst-case suite leaves standing no more than a handful of the
  samples another attack of the same run broke.

Each check returns a :class:`Check` with status "pass" or "warn", the numbers behind it and a one-line message.
``sanity_checks`` runs them on a model and a batch; :func:`advlab.evaluate.summary_checks.check_summary` runs
those that an evaluation summary (summary.json of :func:`advlab.evaluate.evaluate`) already answers, without
the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks import AttackResult, apgd, cw_l2, fgsm
from advlab.attacks.checks import (
    check_choice,
    check_images,
    check_labels,
    check_logits,
    check_model,
    check_positive,
    frozen,
)
from advlab.attacks.gradient import input_gradient
from advlab.attacks.norms import NORM_NAMES as NORMS
from advlab.attacks.objectives import margin

from .suite import Stage, SuiteResult, apgd_ce_stage, apgd_t_stage, run_suite, square_stage

PASS, WARN = "pass", "warn"


@dataclass(frozen=True)
class Check:
    """One sanity check: its name, "pass" or "warn", the numbers behind the verdict, and a one-line message."""

    name: str
    status: str
    numbers: dict[str, float] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerated(n: int) -> float:
    """Samples a gradient-free attack may break beyond the white-box ones before we warn: AutoAttack's 0.2% of
    the samples, and at least one (a single sample out of a few hundred is within the attacks' randomness)."""
    return max(1.0, 0.002 * n)


# --------------------------------------------------------------------------------------- the checks


def check_deterministic(logits_a: Tensor, logits_b: Tensor) -> Check:
    diff = float((logits_a - logits_b).abs().max())
    scale = max(float(logits_a.abs().max()), 1.0)
    changed = int((logits_a.argmax(1) != logits_b.argmax(1)).sum())
    ok = diff <= 1e-5 * scale and changed == 0
    msg = (
        "two forward passes on the same input give the same logits"
        if ok
        else f"logits differ by up to {diff:.3g} between two identical calls ({changed} predictions changed): the "
        "model is randomised; attack the expectation (EOT: average gradients over several calls)"
    )
    return Check(
        "deterministic_logits", PASS if ok else WARN, {"max_abs_diff": diff, "predictions_changed": changed}, msg
    )


def check_zero_gradients(grad: Tensor) -> Check:
    flat = grad.flatten(1)
    nonfinite = ~torch.isfinite(flat).all(dim=1)
    zero = (flat == 0).all(dim=1) & ~nonfinite
    n = grad.shape[0]
    share_zero, share_nonfinite = float(zero.sum()) / n, float(nonfinite.sum()) / n
    ok = share_zero == 0 and share_nonfinite == 0
    msg = (
        "every sample has a finite, non-zero input gradient"
        if ok
        else f"{share_zero:.1%} of the samples have an all-zero and {share_nonfinite:.1%} a non-finite input gradient: "
        "gradient attacks cannot move them (masked gradients; try BPDA or a gradient-free attack)"
    )
    return Check(
        "zero_gradients", PASS if ok else WARN, {"share_zero": share_zero, "share_nonfinite": share_nonfinite}, msg
    )


def check_iterative_vs_single_step(robust_fgsm: Tensor, robust_iterative: Tensor) -> Check:
    n = robust_fgsm.shape[0]
    acc_fgsm, acc_iter = float(robust_fgsm.sum()) / n, float(robust_iterative.sum()) / n
    only_fgsm = int((~robust_fgsm & robust_iterative).sum())
    # Per sample too: FGSM breaking samples the iterative attacks miss is the same sign as a higher total.
    ok = acc_iter <= acc_fgsm and only_fgsm <= tolerated(n)
    msg = (
        f"iterative attacks leave {acc_iter:.1%} <= FGSM's {acc_fgsm:.1%}, and miss {only_fgsm} samples FGSM broke"
        if ok
        else f"iterative attacks leave {acc_iter:.1%} (FGSM {acc_fgsm:.1%}) and miss {only_fgsm} samples FGSM broke: "
        "the iterative attack is misconfigured or the loss surface is masked"
    )
    numbers = {"fgsm_accuracy": acc_fgsm, "iterative_accuracy": acc_iter, "broken_only_by_fgsm": only_fgsm}
    return Check("iterative_vs_single_step", PASS if ok else WARN, numbers, msg)


def check_monotone(eps: Sequence[float], accuracy: Sequence[float]) -> Check:
    pairs = sorted(zip(eps, accuracy, strict=True))
    rises = [(a, b) for (_, a), (_, b) in itertools.pairwise(pairs) if b > a + 1e-12]
    numbers = {f"accuracy@{e:.4g}": a for e, a in pairs}
    if not rises:
        return Check("accuracy_monotone_in_eps", PASS, numbers, "robust accuracy falls monotonically as eps grows")
    worst = max(b - a for a, b in rises)
    msg = f"robust accuracy rises with eps at {len(rises)} point(s) (by up to {worst:.1%}): the attack is unreliable"
    return Check("accuracy_monotone_in_eps", WARN, numbers, msg)


def check_large_eps(eps: float, accuracy: float, threshold: float = 0.01) -> Check:
    ok = accuracy <= threshold
    msg = (
        f"at eps {eps:.3g} robust accuracy is {accuracy:.1%}"
        if ok
        else f"at the large eps {eps:.3g} robust accuracy is still {accuracy:.1%} (expected ~0): the attack cannot "
        "reach points that surely exist (gradient masking or a broken attack)"
    )
    return Check("large_eps", PASS if ok else WARN, {"eps": eps, "accuracy": accuracy}, msg)


def check_unbounded(success_rate: float, threshold: float = 0.99) -> Check:
    ok = success_rate >= threshold
    msg = (
        f"an unbounded attack (CW-L2, large c) succeeds on {success_rate:.1%} of the correctly classified samples"
        if ok
        else f"an unbounded attack (CW-L2, large c) succeeds on only {success_rate:.1%}: with no bound it should "
        "reach ~100%, so gradients do not lead to the decision boundary"
    )
    return Check("unbounded_attack", PASS if ok else WARN, {"success_rate": success_rate}, msg)


def check_square_vs_whitebox(n: int, whitebox_accuracy: float, square_only: int) -> Check:
    tol = tolerated(n)
    ok = square_only <= tol
    numbers = {
        "whitebox_accuracy": whitebox_accuracy,
        "accuracy_with_square": whitebox_accuracy - square_only / n,
        "broken_only_by_square": square_only,
    }
    msg = (
        f"the black-box Square attack broke {square_only} sample(s) the white-box attacks left (tolerance {tol:.3g})"
        if ok
        else f"the black-box Square attack broke {square_only} samples ({square_only / n:.1%}) that the white-box "
        "attacks could not: gradients are masked or the white-box attacks are too weak"
    )
    return Check("square_vs_whitebox", PASS if ok else WARN, numbers, msg)


def check_loss_rises(trace: Tensor, success: Tensor, min_share: float = 0.9) -> Check:
    """``trace`` (steps + 1, N) of APGD objectives (NaN after a sample left), for correctly classified samples."""
    n = trace.shape[1]
    if n == 0:
        return Check("loss_rises", PASS, {"share_rising": 1.0, "share_nonfinite": 0.0}, "no sample to check")
    start = trace[0]
    later = torch.where(torch.isnan(trace[1:]), torch.full_like(trace[1:], -math.inf), trace[1:]).amax(dim=0)
    nonfinite = ~torch.isfinite(start) | torch.isinf(later) & (later > 0)
    rising = success | (later > start)
    share, share_bad = float(rising.float().mean()), float(nonfinite.float().mean())
    ok = share >= min_share and share_bad == 0
    msg = (
        f"the APGD loss rose for {share:.1%} of the samples"
        if ok
        else f"the APGD loss rose for only {share:.1%} of the samples ({share_bad:.1%} non-finite): flat or "
        "broken gradients"
    )
    return Check("loss_rises", PASS if ok else WARN, {"share_rising": share, "share_nonfinite": share_bad}, msg)


# ---------------------------------------------------------------------------------------- the runner


def _default_large_eps(norm: str, x: Tensor) -> float:
    # Linf 0.5 lets any pixel reach mid-grey; the L2 ball of radius 0.5 sqrt(d) holds that same point.
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    seed: int | Tensor = 0,
    suite_result: SuiteResult | None = None,
    steps: int = 20,
    eps_factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    large_eps: float | None = None,
    square_queries: int = 500,
    cw_c: float = 100.0,
    cw_steps: int = 100,
    cw_lr: float = 0.05,
) -> list[Check]:
    """Run every check on one batch and return them in a fixed order.

    Args:
        eps: the evaluation's budget (one number); the sweep uses ``eps * f`` for f in ``eps_factors``, then
            ``large_eps`` (default 0.5 in Linf, 0.5 sqrt(d) in L2).
        seed: an int or per-sample int64 seeds (N,), as for :func:`advlab.evaluate.suite.run_suite`.
        suite_result: the result of ``run_suite`` on this very batch; its worst case then stands for "the
            white-box attacks" and "Square". Without it, a reference suite runs here: APGD-CE (50 steps),
            APGD-T (top-3 targets, 50 steps), Square (``square_queries``).
        steps: APGD-CE steps per eps of the sweep.
        cw_c, cw_steps, cw_lr: the unbounded Carlini-Wagner L2 attack (one binary-search round).

    Cost, per sample: 2 forward passes, 1 gradient, FGSM, len(eps_factors) + 1 APGD-CE runs of ``steps`` steps
    (samples leave at checkpoints once broken), ``cw_steps`` CW steps, and the reference suite if none is given.
    """
    check_model(model)
    x = check_images(x)
    n = x.shape[0]
    y, y_max = check_labels(y, n, x.device)
    eps = check_positive(eps, "eps")
    norm = check_choice(norm, "norm", NORMS)
    if suite_result is not None:
        if suite_result.n != n:
            raise ValueError(
                f"suite_result holds {suite_result.n} samples but x holds {n}; pass the result of this batch"
            )
        if suite_result.norm != norm:
            raise ValueError(
                f"suite_result was run with norm {suite_result.norm!r} but the checks use {norm!r}; pass the "
                "result of run_suite at this norm"
            )
        ran = suite_result.eps.detach().double().cpu()
        if not torch.allclose(ran, torch.full_like(ran, eps), rtol=1e-6, atol=0.0):
            raise ValueError(
                f"suite_result was run at eps {float(ran.min()):.6g}..{float(ran.max()):.6g}, the checks at eps "
                f"{eps:.6g}; pass the result of run_suite at this eps"
            )
    large = _default_large_eps(norm, x) if large_eps is None else check_positive(large_eps, "large_eps")
    factors = sorted({float(f) for f in eps_factors} | {1.0})
    checks: list[Check] = []

    with frozen(model):
        with torch.no_grad():
            logits_a, logits_b = model(x), model(x)
        check_logits(logits_a, n, y_max)
        checks.append(check_deterministic(logits_a, logits_b))
        x_in = x.detach().clone().requires_grad_(True)
        grad = input_gradient(margin(model(x_in), y).sum(), x_in)  # zeros where no graph reaches x: flagged below
        checks.append(check_zero_gradients(grad))
    correct = logits_a.argmax(1) == y

    def robust_after(result: AttackResult) -> Tensor:
        return correct & ~result.success

    seeds = seed + torch.arange(n) if isinstance(seed, int) else seed
    sweep_eps, sweep_acc = [], []
    nominal: AttackResult | None = None
    for f in [*factors, None]:
        e = large if f is None else eps * f
        res = apgd(model, x, y, e, norm=norm, steps=steps, loss="ce", seed=seeds, return_info=True)
        assert isinstance(res, AttackResult)
        sweep_eps.append(e)
        sweep_acc.append(float(robust_after(res).float().mean()))
        if f == 1.0:
            nominal = res
    assert nominal is not None

    if suite_result is None:
        stages = [
            Stage("apgd-ce", apgd_ce_stage(50), "APGD-CE, 50 steps"),
            Stage("apgd-t", apgd_t_stage(50, 3), "APGD-T, top-3 targets, 50 steps"),
            Stage("square", square_stage(square_queries), f"Square, {square_queries} queries"),
        ]
        suite_result = run_suite(model, x, y, eps, norm, seed=seed, stages=stages)
    names = suite_result.attack_names
    if "square" in names:
        square_index = names.index("square")
        square_only = int((suite_result.broken_by == square_index).sum())
        robust_whitebox = suite_result.robust | (suite_result.broken_by == square_index)
    else:  # a suite without Square (e.g. "fast"): Square attacks here what the white-box stages left standing
        robust_whitebox = suite_result.robust
        left = robust_whitebox.nonzero().view(-1)
        square_only = 0
        if left.numel():
            stage = Stage("square", square_stage(square_queries), f"Square, {square_queries} queries")
            extra = run_suite(model, x[left], y[left], eps, norm, seed=seeds[left.to(seeds.device)], stages=[stage])
            square_only = int((~extra.robust).sum())

    fg = fgsm(model, x, y, eps, norm=norm, return_info=True)
    assert isinstance(fg, AttackResult)
    checks.append(check_iterative_vs_single_step(robust_after(fg), robust_whitebox & robust_after(nominal)))
    checks.append(check_monotone(sweep_eps, sweep_acc))
    checks.append(check_large_eps(large, sweep_acc[-1]))

    idx = correct.nonzero().view(-1)
    if idx.numel():
        cw = cw_l2(model, x[idx], y[idx], c=cw_c, steps=cw_steps, lr=cw_lr, binary_search_steps=1, return_info=True)
        assert isinstance(cw, AttackResult)
        checks.append(check_unbounded(float(cw.success.float().mean())))
    else:
        checks.append(check_unbounded(1.0))
    checks.append(check_square_vs_whitebox(n, float(robust_whitebox.float().mean()), square_only))
    trace = nominal.extras["loss_trace"][:, correct]
    checks.append(check_loss_rises(trace, nominal.success[correct]))
    return checks


# ------------------------------------------------------------------------------------ from a summary
