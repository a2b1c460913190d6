"""Carlini & Wagner L2 attack (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._core import (
    AttackResult,
    ModelCall,
    batch_view,
    check_images,
    check_labels,
    check_logits,
    check_model,
    check_positive,
    check_steps,
    frozen,
    margin,
    per_sample,
)

_UPPER_INIT = 1e10  # c above this counts as "no upper bound found yet" (Carlini's reference code)
ABORT_WINDOW_MIN = 10  # iterations between two early-abort checks, at least


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

    ``abort_early`` stops a sample's round when its objective has not fallen by 0.01% over max(steps/10, 10)
    iterations. The test is per sample (Carlini & Wagner's reference code stops the whole batch once the
    summed objective stalls): a stalled sample leaves the batch, so the round goes on, and costs, only for
    the samples still improving, and each sample gets what it would get alone. The first check only records
    the reference value, so a round can stop at the second check at the earliest: rounds of 20 steps or
    fewer always run to the end (stopping earlier measurably raised the L2 found, docs/benchmarks.md).

    Returns x_adv, or with ``return_info=True`` an :class:`AttackResult` whose ``success`` marks the samples
    made adversarial and whose ``extras`` hold ``l2`` (inf where unsuccessful) and ``c`` (the smallest c
    that succeeded, else the last c tried).
    """
    check_model(model)
    check_images(x)
    steps = check_steps(steps)
    binary_search_steps = check_steps(binary_search_steps, "binary_search_steps")
    n = x.shape[0]
    y, y_max = check_labels(y, n, x.device)
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
    # Carlini & Wagner check every steps/10 iterations (1,000 of their 10,000). Adam's first steps move every
    # pixel by about lr and raise the L2 term before the margin term pays off, so a window of a couple of
    # steps (short budgets) would freeze samples that go on to succeed: never check more often than every 10.
    check_every = max(steps // 10, ABORT_WINDOW_MIN)

    forward = ModelCall(model, x, steps * binary_search_steps)
    with frozen(model):
        for _round in range(binary_search_steps):
            # The round's state, for the samples still optimised (``idx`` into the batch). A stalled sample is
            # written back and dropped from every tensor, so it costs nothing for the rest of the round: the
            # batch shrinks as samples converge instead of carrying them to the end.
            idx = torch.arange(n, device=x.device)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            xs, ys, cs, ks = x, y, const, kappa_t
            l2s, xbs, fs = best_l2sq, best_x, found
            previous = torch.full_like(const, float("inf"))
            for t in range(1, steps + 1):
                w.requires_grad_(True)
                x_new = (torch.tanh(w) + 1) * 0.5
                logits = forward(x_new)
                if t == 1 and _round == 0:
                    check_logits(logits, n, y_max)
                gap = margin(logits, ys)  # > 0 iff ys is not top-1
                if not targeted:
                    gap = -gap
                # gap is now the CW quantity inside f: positive while not adversarial.
                l2sq = (x_new - xs).flatten(1).pow(2).sum(dim=1)
                total = l2sq + cs * torch.maximum(gap, -ks)
                (grad,) = torch.autograd.grad(total.sum(), w)
                with torch.no_grad():
                    w = w.detach()
                    adversarial = gap < -ks
                    improved = adversarial & (l2sq < l2s)
                    l2s = torch.where(improved, l2sq, l2s)
                    xbs = torch.where(batch_view(improved, xs), x_new.detach(), xbs)
                    fs = fs | adversarial
                    # Adam (Kingma & Ba 2015, algorithm 1), bias corrections folded into two scalars.
                    m.lerp_(grad, 1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = v.sqrt().div_(math.sqrt(1 - beta2**t)).add_(adam_eps)
                    w.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                    if abort_early and t % check_every == 0 and t < steps:
                        total = total.detach()
                        # One sync every check_every iterations: shrink the batch, end the round when empty.
                        kept = (total <= previous * 0.9999).nonzero().view(-1)
                        if kept.numel() == 0:
                            break
                        if kept.numel() < idx.numel():
                            best_l2sq[idx], best_x[idx], found[idx] = l2s, xbs, fs
                            idx, w, m, v, total = idx[kept], w[kept], m[kept], v[kept], total[kept]
                            xs, ys, cs, ks = xs[kept], ys[kept], cs[kept], ks[kept]
                            l2s, xbs, fs = l2s[kept], xbs[kept], fs[kept]
                        previous = total
            best_l2sq[idx], best_x[idx], found[idx] = l2s, xbs, fs
            # Per-sample binary search on c (Carlini & Wagner, section V.A).
            tried = const
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bisect = (lower + upper) / 2
            const = torch.where(found | (upper < _UPPER_INIT), bisect, const * 10)

    success = torch.isfinite(best_l2sq)
    if not return_info:
        return best_x
    smallest_c = torch.where(upper < _UPPER_INIT, upper, tried)
    return AttackResult(best_x, success, -best_l2sq.sqrt(), {"l2": best_l2sq.sqrt(), "c": smallest_c})
