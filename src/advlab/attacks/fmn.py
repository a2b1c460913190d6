"""Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through
Adaptive Norm Constraints", NeurIPS 2021): the smallest perturbation in L0, L1, L2 or Linf."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_positive, first_logits, frozen, validate
from .gradient import input_gradient
from .norms import ALL_NORM_NAMES, L2, Ball, Norm, batch_view, flat_norm
from .objectives import objective, rounding_slack
from .result import AttackResult
from .state import SmallestPoint

FMN_NORMS: tuple[str, ...] = ("l0", "l1", "l2", "linf")

# (alpha_init, gamma_init) per norm when not given. L1, L2, Linf: the paper's (Pintor et al. 2021, sec. 4)
# and adv_lib's. L0: a larger step and eps factor, chosen on held-out Fashion-MNIST images (test images 200-400
# of both shipped models, docs/benchmarks.md "minimal_norm.py"): with the paper's (1, 0.05) the step moves each
# kept coordinate by about alpha / sqrt(k), far from the saturated values a sparse perturbation needs, and
# eps, which starts at one coordinate and grows by max(1, gamma eps) a step, does not reach the 20-30
# coordinates a robust model needs within 100 steps.
FMN_DEFAULTS: dict[str, tuple[float, float]] = {
    "l0": (100.0, 0.5),
    "l1": (1.0, 0.05),
    "l2": (1.0, 0.05),
    "linf": (1.0, 0.05),
}


# Once a sample is adversarial, how far FMN trusts one estimate of the boundary linearised along delta: t* is
# taken as at least this (fmn's docstring; the paper's shrink and the best distance can still take eps lower).
RADIAL_TRUST = 0.8


def cosine_annealing(start: float, end: float, i: int, steps: int) -> float:
    """end + (start - end) (1 + cos(pi i / steps)) / 2: ``start`` at i = 0, falling to ``end`` at i = steps."""
    return end + (start - end) * (1 + math.cos(math.pi * i / steps)) / 2


def worst_size(geometry: Norm, x: Tensor) -> Tensor:
    """The largest size a perturbation of x can have inside the [0, 1] box, per sample."""
    if geometry.name == "l0":
        return torch.full((x.shape[0],), float(x[0].numel()), dtype=x.dtype, device=x.device)
    return geometry.size(torch.maximum(x, 1 - x))


def fmn_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    steps: int = 100,
    alpha_init: float | None = None,
    alpha_final: float | None = None,
    gamma_init: float | None = None,
    gamma_final: float = 0.001,
    targeted: bool = False,
) -> AttackResult:
    """:func:`fmn`, always returning the :class:`AttackResult`."""
    if norm not in FMN_NORMS:  # before validate, whose list (all the geometries) is the same today
        raise ValueError(f"fmn: unknown norm {norm!r}; expected one of {', '.join(map(repr, FMN_NORMS))}")
    inp = validate(model, x, y, norm=norm, norms=ALL_NORM_NAMES, steps=steps)
    assert inp.norm is not None
    x, y, y_max, geometry = inp.x, inp.y, inp.y_max, inp.norm
    default_alpha, default_gamma = FMN_DEFAULTS[norm]
    alpha_init = check_positive(default_alpha if alpha_init is None else alpha_init, "alpha_init")
    alpha_final = alpha_init / 100 if alpha_final is None else check_positive(alpha_final, "alpha_final")
    gamma_init = check_positive(default_gamma if gamma_init is None else gamma_init, "gamma_init")
    gamma_final = check_positive(gamma_final, "gamma_final")
    if gamma_init >= 1 or gamma_final >= 1:
        raise ValueError(f"gamma_init and gamma_final must be < 1 (eps shrinks by 1 - gamma), got {gamma_init}, "
                         f"{gamma_final}")
    n = x.shape[0]
    l0 = geometry.name == "l0"

    worst = worst_size(geometry, x)
    eps = torch.ones_like(worst) if l0 else torch.full_like(worst, float("inf"))
    best = SmallestPoint.start(x)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    near = torch.zeros(n, dtype=torch.bool, device=x.device)  # the last estimate asked for less than gamma growth
    x_adv = x.clone()

    def score(logits: Tensor, point: Tensor, obj: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keep ``point`` where it is adversarial (past the rounding slack) and smaller than the best so far;
        ``obj`` is the margin of ``logits`` (> 0 exactly when adversarial). Returns whether it is adversarial,
        the slack, the perturbation point - x and its size (reused by the step: each is a pass over the batch
        on a CPU, a kernel on a GPU)."""
        slack = rounding_slack(logits)
        adversarial = obj > slack
        delta = point - x
        size = geometry.size(delta)
        best.update(point, adversarial, size)
        return adversarial, slack, delta, size

    gammas = [cosine_annealing(gamma_init, gamma_final, i, steps) for i in range(steps)]
    # 1 / R_i, R_i = prod_{j > i} (1 - gamma_j): the shrink the schedule has left after step i. Summed in logs
    # from the end (one pass) and capped below the dtype's largest value, so that 0 * (1 / R_i) stays 0.
    log_cap = math.log(torch.finfo(x.dtype).max) - 1
    inv_reach = [0.0] * steps
    log_reach = 0.0
    for i in reversed(range(steps)):
        inv_reach[i] = math.exp(min(-log_reach, log_cap))
        log_reach += math.log1p(-gammas[i])

    with frozen(model):
        for i in range(steps):
            alpha = cosine_annealing(alpha_init, alpha_final, i, steps)
            gamma = gammas[i]
            x_adv.requires_grad_(True)
            logits = first_logits(model, x_adv, y_max) if i == 0 else model(x_adv)
            obj = objective(logits, y, "margin", targeted)
            grad = input_gradient(obj.sum(), x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach()
                obj = obj.detach()
                adversarial, slack, delta, size = score(logits, x_adv, obj)
                found |= adversarial
                grad_l2 = flat_norm(grad, 2.0).clamp_min(1e-12)  # the step's norm, and L2's dual norm
                if l0:
                    del delta  # not used in L0 (and freed before the next forward and backward)
                    # Integer budgets: move by at least one coordinate (Pintor et al.'s L0 rule).
                    shrink = torch.minimum(torch.minimum(eps - 1, (eps * (1 - gamma)).floor()), best.size)
                    grow = torch.maximum(eps + 1, (eps * (1 + gamma)).floor())
                    eps = torch.where(adversarial, shrink, grow).clamp_(min=0)
                else:
                    # Not adversarial yet: the linear estimate of the distance to the boundary (moved by the
                    # rounding slack, which success requires), |L| / ||grad L||_q past the current size; where
                    # the last estimate already asked for less than gamma growth and fell short (the box stops
                    # coordinates the estimate counts on: it falls short every step and the iterate only creeps
                    # up to the boundary), at least 1 + gamma times the current size.
                    dual = grad_l2 if geometry.dual_p == 2.0 else geometry.dual_size(grad).clamp_min(1e-12)
                    estimate = size + (slack - obj) / dual
                    floor = size * (1 + gamma)
                    first = torch.where(near, torch.maximum(estimate, floor), estimate)
                    near = estimate < floor
                    # Adversarial: shrink at least fast enough that the schedule's remaining shrinks still reach
                    # the boundary linearised along delta: t* ||delta||, where the margin obj is down to the slack.
                    outward = (grad * delta).flatten(1).sum(dim=1)
                    del delta
                    t_star = torch.where(outward > 0, 1 - (obj - slack) / outward.clamp_min(1e-30), 1.0)
                    shrunk = torch.minimum(eps * (1 - gamma), best.size)
                    shrunk = torch.minimum(shrunk, size * t_star.clamp(RADIAL_TRUST, 1.0) * inv_reach[i])
                    eps = torch.where(adversarial, shrunk, torch.where(found, eps * (1 + gamma), first))
                eps = torch.minimum(eps, worst)
                # The step is the L2-normalised gradient in every norm; the projection carries the norm.
                x_adv.add_(grad.mul_(batch_view(alpha / grad_l2, grad)))
                ball = Ball(geometry, x, eps, None) if l0 else geometry.ball(x, eps)
                if isinstance(geometry, L2):
                    # Until an adversarial point is met, eps is the linear estimate of the distance to the
                    # boundary: go there (onto the sphere ∩ box) even where the step falls short of it.
                    geometry.scale_in_box_(x_adv, ball, torch.where(found, 1.0, math.inf))
                else:
                    ball.project_(x_adv)
        with torch.no_grad():
            logits = model(x_adv)
            score(logits, x_adv, objective(logits, y, "margin", targeted))

    return best.result(x, geometry)


def fmn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    steps: int = 100,
    alpha_init: float | None = None,
    alpha_final: float | None = None,
    gamma_init: float | None = None,
    gamma_final: float = 0.001,
    targeted: bool = False,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Fast Minimum-Norm attack, Algorithm 1 of Pintor et al. 2021, in ``norm`` "l0", "l1", "l2" or "linf".

    FMN searches the smallest perturbation delta such that x + delta is adversarial by alternating an
    eps-update and a gradient step constrained to the eps-ball. With L(x') = Z_y(x') - max_{j != y} Z_j(x')
    (untargeted; max_{j != t} Z_j - Z_t when targeted: L < 0 exactly when adversarial), at step k:

      gamma_k, alpha_k: cosine annealing from gamma_init to gamma_final and from alpha_init to alpha_final
        (alpha_init / 100 by default; alpha_init and gamma_init default per norm, :data:`FMN_DEFAULTS`:
        the paper's 1 and 0.05, but 100 and 0.5 in L0);
      eps_k = min(eps_{k-1} (1 - gamma_k), ||delta*||_p,     if x + delta_{k-1} is adversarial
                  t* ||delta_{k-1}||_p / R_k)                (the third term advlab's, below),
              eps_{k-1} (1 + gamma_k)                        else, if an adversarial point was ever met,
              ||delta_{k-1}||_p + |L| / ||grad L||_q          else (q the dual norm: the linearised distance
                                                             to the boundary; at least ||delta_{k-1}||_p
                                                             (1 + gamma_k) where the last one was below that);
      delta_k = Pi_{eps_k}(delta_{k-1} - alpha_k grad L / ||grad L||_2), then into the [0, 1] box;

    delta* being the smallest adversarial perturbation met, which is what is returned. For L0, eps is an
    integer number of coordinates (counted per coordinate, as the paper does) that moves by at least one:
    floor(eps (1 -+ gamma)) or eps -+ 1, and there is no linear estimate (eps starts at 1).

    advlab's projections are the exact Euclidean projections onto the eps-ball intersected with the box
    (:mod:`advlab.attacks.norms`) rather than the ball's projection followed by a clip; they coincide for Linf.
    In L2, until a sample has met an adversarial point, delta is moved along itself onto the sphere of radius
    eps (as far as the box allows), not just into the ball: eps is then the linearised distance to the boundary,
    and a step alpha_k shorter than it would leave the iterate short of the boundary for several steps (adv_lib's
    L2 "projection" rescales onto the sphere at every step, then clips; advlab keeps the ball afterwards).
    The floor on the linearised distance is advlab's: where the box stops coordinates the estimate counts on
    (pixels at 0 or 1), every estimate falls short, and the paper's rule only creeps up to the boundary, never
    past it, on linear models (tests/test_minimal_boxed.py). It applies from the second estimate in a row that
    asks for less than gamma_k growth: the first may still cross, and a jump of gamma_k past the boundary is
    an overshoot that a run of few steps cannot shrink back. eps then grows as it does once a point was met.
    The third term of the shrink is advlab's too: t* = 1 - (L + slack) / (grad L . delta), taken in
    [RADIAL_TRUST, 1] (1 where grad L . delta >= 0), is where the boundary (past the rounding slack) lies along
    delta in the linearisation, and R_k = prod_{j > k} (1 - gamma_j) is the factor the remaining steps' shrinks
    can still take eps down by. The paper's rule shrinks by at most gamma_k a step, a fraction of a per cent late in
    the schedule; in a run of few steps the first adversarial point (often well past the boundary, reached on
    the linear estimate) then stays close to what is returned. With R_k, eps shrinks only as fast as it must to
    reach the linearised boundary by the last step: at once in the last steps, not at all early in a long run.
    A point counts as adversarial once it is past the boundary by ``rounding_slack`` (1e-4 of its largest
    |logit|, so that re-evaluating it with other float rounding gives the same label), and the linear estimate
    aims that far past the boundary. Every iterate is scored on the forward pass that computes its gradient,
    and the last one on one more forward. Each sample's run depends on itself alone (no randomness).

    Returns the smallest adversarial point found (x itself where none was: a sample already misclassified
    comes back unchanged with distance 0), or with ``return_info=True`` an :class:`AttackResult` whose
    ``extras["distance"]`` is ||x_adv - x|| in ``norm`` (inf where no adversarial point was found) and whose
    ``loss`` is minus that distance.
    """
    result = fmn_result(
        model, x, y, norm=norm, steps=steps, alpha_init=alpha_init, alpha_final=alpha_final,
        gamma_init=gamma_init, gamma_final=gamma_final, targeted=targeted,
    )
    return result if return_info else result.x_adv
