"""Carlini & Wagner L2 attack (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_positive, first_logits, frozen, per_sample, validate
from .gradient import input_gradient
from .norms import batch_view
from .objectives import objective, rounding_slack
from .result import AttackResult

_UPPER_INIT = 1e10  # c above this counts as "no upper bound found yet" (Carlini's reference code)


def cw_l2_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    c: float | Tensor = 1e-2,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 1e-2,
    binary_search_steps: int = 5,
    targeted: bool = False,
    abort_early: bool = True,
    refine_steps: int = 8,
) -> AttackResult:
    """:func:`cw_l2`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, steps=steps, binary_search_steps=binary_search_steps)
    x, y, y_max = inp.x, inp.y, inp.y_max
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an integer >= 0 (0 turns the line search off), got {refine_steps!r}")
    n = x.shape[0]
    const = per_sample(c, n, "c", x, strictly_positive=True).clone()
    kappa_t = per_sample(kappa, n, "kappa", x, strictly_positive=False)
    check_positive(lr, "lr")

    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    # atanh is infinite at 0 and 1: pull the box in by a hair so pixels at the edges stay reachable.
    w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _UPPER_INIT)
    best_l2sq = torch.full_like(const, float("inf"))
    best_x = x.detach().clone()
    check_every = max(steps // 10, 1)

    # Every round restarts from w0, so its first iterate, margin and gradient are the same in every round up
    # to the factor c on the margin term: the first round computes them, the others reuse them (one forward
    # and one backward fewer per round; with the early abort a round is often only 3 iterates long).
    start: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    with frozen(model):
        for _round in range(binary_search_steps):
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            previous = torch.full_like(const, float("inf"))
            for t in range(steps):
                if t == 0 and start is not None:
                    x_new, gap, l2sq, grad_f = start
                    hinge = torch.maximum(gap, -kappa_t)
                else:
                    # Autograd runs through the model only; the change of variables and the distance term have
                    # their gradients written out below.
                    x_leaf = torch.tanh(w).add_(1).mul_(0.5).requires_grad_(True)
                    logits = first_logits(model, x_leaf, y_max) if t == 0 else model(x_leaf)
                    # The CW quantity inside f: positive while not adversarial (minus the margin objective).
                    gap = -objective(logits, y, "margin", targeted)
                    hinge = torch.maximum(gap, -kappa_t)
                    x_new = x_leaf.detach()
                    l2sq = (x_new - x).flatten(1).pow(2).sum(dim=1)
                with torch.no_grad():
                    total = l2sq + const * hinge
                    adversarial = gap < -kappa_t
                    improved = adversarial & (l2sq < best_l2sq)
                    best_l2sq = torch.where(improved, l2sq, best_l2sq)
                    best_x = torch.where(batch_view(improved, x), x_new, best_x)
                    found |= adversarial
                    if abort_early and t % check_every == 0:
                        # One host sync per check, before the backward that a stopped round would waste.
                        if t > 0 and bool((total > previous * 0.9999).all()):
                            break
                        previous = total
                if t == steps - 1:
                    break  # the step after the last iterate would never be evaluated
                if t == 0:
                    if start is None:
                        # d hinge / dx', kept apart from c so that later rounds can weigh it by their own c.
                        grad_f = input_gradient(hinge.sum(), x_leaf)
                        start = (x_new, gap.detach(), l2sq, grad_f)
                    grad = batch_view(const, grad_f) * grad_f
                else:
                    grad = input_gradient((const * hinge).sum(), x_leaf)
                with torch.no_grad():
                    # d total / dw = (c df/dx' + 2 (x' - x)) dx'/dw, where x' = (tanh(w) + 1) / 2 gives
                    # dx'/dw = (1 - tanh(w)^2) / 2 = 2 x' (1 - x').
                    grad.add_(x_new - x, alpha=2).mul_(x_new * (1 - x_new)).mul_(2)
                    w = w.detach()
                    # Adam (Kingma & Ba 2015, algorithm 1), bias corrections folded into two scalars.
                    m.lerp_(grad, 1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = v.sqrt().div_(math.sqrt(1 - beta2 ** (t + 1))).add_(adam_eps)
                    w.addcdiv_(m, denom, value=-lr / (1 - beta1 ** (t + 1)))
            # Per-sample binary search on c (Carlini & Wagner, section V.A).
            tried = const
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bisect = (lower + upper) / 2
            const = torch.where(found | (upper < _UPPER_INIT), bisect, const * 10)
        if refine_steps:
            best_x, best_l2sq = _shrink_along_delta(model, x, y, best_x, best_l2sq, kappa_t, targeted, refine_steps)

    success = torch.isfinite(best_l2sq)
    smallest_c = torch.where(upper < _UPPER_INIT, upper, tried)
    return AttackResult(best_x, success, -best_l2sq.sqrt(), {"l2": best_l2sq.sqrt(), "c": smallest_c})


def cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    c: float | Tensor = 1e-2,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 1e-2,
    binary_search_steps: int = 5,
    targeted: bool = False,
    abort_early: bool = True,
    refine_steps: int = 8,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Minimise ||x' - x||_2^2 + c * f(x') over x' = 0.5 (tanh(w) + 1), with a per-sample search over c.

    Carlini & Wagner 2017, section V.A, objective f_6 with the change of variables of eq. (7):
      untargeted: f(x') = max(Z(x')_y - max_{i != y} Z(x')_i, -kappa)
      targeted:   f(x') = max(max_{i != t} Z(x')_i - Z(x')_t, -kappa)
    w is optimised with Adam (lr) for ``steps`` iterations in each of ``binary_search_steps`` rounds. Between
    rounds each sample's c is bisected where an adversarial example was found in the round, and multiplied
    by ten while none has been found yet. Over all rounds and iterations, each sample keeps the adversarial
    point of smallest L2 it met (adversarial meaning the margin exceeds ``kappa``). A sample never made
    adversarial comes back unchanged.

    ``abort_early`` is the rule of Carlini & Wagner's reference code: every max(steps/10, 1) iterations,
    starting from the round's first, the objective is compared with its value at the previous check, and the
    round ends once no sample's objective has fallen by 0.01%. The decision is the batch's, so with it on a
    sample's result can depend on the other samples in its batch (as in every implementation of the
    reference); with ``abort_early=False`` every round runs all ``steps`` and each sample gets exactly what it
    would get alone. The abort spends the iterations where they pay: rounds whose c is too small for every
    sample end after a couple of steps (docs/benchmarks.md measures both settings against the peers).

    ``refine_steps`` (advlab's addition; 0 gives the paper's algorithm): Adam's iterates overshoot the
    decision boundary, its first steps move every pixel by about lr whatever c is, so the point found is
    rarely the closest one along its own direction. Each successful perturbation delta is therefore shrunk to
    the smallest s * delta, s in (0, 1], that is still adversarial, by bisection over s with ``refine_steps``
    forward passes (no gradient) of the successful samples. The result stays in the box (a convex combination
    of two box points), keeps its margin beyond kappa (with ``rounding_slack``, 1e-4 of the largest |logit|, so
    that float rounding elsewhere cannot undo it) and is never farther from x than the point Adam found.

    Returns x_adv, or with ``return_info=True`` an :class:`AttackResult` whose ``success`` marks the samples
    made adversarial and whose ``extras`` hold ``l2`` (inf where unsuccessful) and ``c`` (the smallest c
    that succeeded, else the last c tried).
    """
    result = cw_l2_result(
        model, x, y, c=c, kappa=kappa, steps=steps, lr=lr, binary_search_steps=binary_search_steps,
        targeted=targeted, abort_early=abort_early, refine_steps=refine_steps,
    )
    return result if return_info else result.x_adv


@torch.no_grad()
def _shrink_along_delta(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    best_x: Tensor,
    best_l2sq: Tensor,
    kappa: Tensor,
    targeted: bool,
    refine_steps: int,
) -> tuple[Tensor, Tensor]:
    """Bisect s in (0, 1] for the smallest x + s (best_x - x) still adversarial, for the successful samples."""
    idx = torch.isfinite(best_l2sq).nonzero().view(-1)
    if idx.numel() == 0:
        return best_x, best_l2sq
    xs, ys, ks = x[idx], y[idx], kappa[idx]
    delta = best_x[idx] - xs
    lo = torch.zeros_like(best_l2sq[idx])
    hi = torch.ones_like(lo)  # s = 1 is the point Adam found, known to be adversarial
    for _ in range(refine_steps):
        mid = (lo + hi) / 2
        logits = model(xs + batch_view(mid, xs) * delta)
        gap = -objective(logits, ys, "margin", targeted)
        # The bisection ends next to the boundary: keep a slack so the caller's re-evaluation agrees.
        adversarial = gap < -ks - rounding_slack(logits)
        hi = torch.where(adversarial, mid, hi)
        lo = torch.where(adversarial, lo, mid)
    shrunk = hi < 1  # where s stayed 1, keep Adam's point bit for bit
    refined = torch.where(batch_view(shrunk, xs), xs + batch_view(hi, xs) * delta, best_x[idx])
    # Both tensors are the attack's own (built by torch.where in the rounds): written in place.
    best_x[idx] = refined
    best_l2sq[idx] = torch.where(shrunk, (refined - xs).flatten(1).pow(2).sum(dim=1), best_l2sq[idx])
    return best_x, best_l2sq
