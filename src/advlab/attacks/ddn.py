"""Decoupled Direction and Norm attack (Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger, "Decoupling
Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019): the smallest
L2 perturbation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_positive, first_logits, frozen, validate
from .fmn import cosine_annealing, worst_size
from .gradient import input_gradient
from .norms import batch_view, flat_norm, get_norm
from .objectives import objective, rounding_slack
from .result import AttackResult
from .state import SmallestPoint


def ddn_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    levels: int | None = None,
    targeted: bool = False,
) -> AttackResult:
    """:func:`ddn`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, steps=steps)
    x, y, y_max = inp.x, inp.y, inp.y_max
    gamma = check_positive(gamma, "gamma")
    if gamma >= 1:
        raise ValueError(f"gamma must be < 1 (the norm shrinks by 1 - gamma), got {gamma}")
    init_norm = check_positive(init_norm, "init_norm")
    alpha_init = check_positive(alpha_init, "alpha_init")
    alpha_final = check_positive(alpha_final, "alpha_final")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise (ValueError if isinstance(levels, int) and not isinstance(levels, bool) else TypeError)(
            f"levels must be None (no quantisation) or an int >= 2, got {levels!r} (the grey levels to round to)"
        )
    l2 = get_norm("l2")

    worst = worst_size(l2, x)
    eps = torch.full_like(worst, init_norm)
    best = SmallestPoint.start(x)
    x_adv = x.clone()
    delta = torch.zeros_like(x)

    def score(logits: Tensor, point: Tensor, delta: Tensor) -> Tensor:
        """Keep ``point`` = x + ``delta`` where it is adversarial (past the rounding slack) and nearer than the
        best so far."""
        adversarial = objective(logits.detach(), y, "margin", targeted) > rounding_slack(logits)
        best.update(point, adversarial, l2.size(delta))
        return adversarial

    with frozen(model):
        for i in range(steps):
            alpha = cosine_annealing(alpha_init, alpha_final, i, steps)
            x_adv.requires_grad_(True)
            logits = first_logits(model, x_adv, y_max) if i == 0 else model(x_adv)
            grad = input_gradient(objective(logits, y, "ce", targeted).sum(), x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach()
                adversarial = score(logits, x_adv, delta)
                # The direction: one normalised gradient step of size alpha.
                delta.add_(grad.mul_(batch_view(alpha / flat_norm(grad, 2.0).clamp_min(1e-12), grad)))
                # The norm: down by gamma where x_adv is adversarial, up otherwise.
                eps = torch.where(adversarial, eps * (1 - gamma), eps * (1 + gamma))
                eps = torch.minimum(eps, worst)
                # Project onto the sphere of radius eps, then into the box.
                delta.mul_(batch_view(eps / flat_norm(delta, 2.0).clamp_min(1e-12), delta))
                x_adv = (x + delta).clamp_(0, 1)
                if levels is not None:
                    x_adv.mul_(levels - 1).round_().div_(levels - 1)
                delta = x_adv - x
        with torch.no_grad():
            score(model(x_adv), x_adv, delta)

    return best.result(x, l2)


def ddn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    levels: int | None = None,
    targeted: bool = False,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Decoupled Direction and Norm, Algorithm 1 of Rony et al. 2019: the smallest L2 perturbation.

    The direction and the norm of the perturbation are updated apart. From delta_0 = 0 and eps_0 =
    ``init_norm``, at step k with x_{k-1} = x + delta_{k-1}:

      g = grad_x J(x_{k-1}) with J the cross-entropy of y (ascended; of the target, descended, when targeted),
      delta_k = delta_{k-1} + alpha_k g / ||g||_2,
      eps_k = (1 - gamma) eps_{k-1} if x_{k-1} is adversarial, else (1 + gamma) eps_{k-1},
      x_k = clip_[0,1](x + eps_k delta_k / ||delta_k||_2), delta_k = x_k - x,

    with alpha_k annealed by a cosine from ``alpha_init`` to ``alpha_final`` as in the authors' experiments (and
    eps capped at the largest L2 distance the box allows). ``levels`` rounds every x_k to that many grey levels
    (256 for 8-bit images, the paper's quantisation); None (the default) keeps real values. The smallest
    adversarial x_k met is returned; a point counts as adversarial once it is past the boundary by
    ``rounding_slack`` (1e-4 of its largest |logit|), so that re-evaluating it gives the same label. A zero
    gradient leaves the direction where it was. No randomness: each sample's run depends on itself alone.

    Returns the smallest adversarial point found (x where none was; a sample already misclassified comes back
    unchanged with distance 0), or with ``return_info=True`` an :class:`AttackResult` whose
    ``extras["distance"]`` is ||x_adv - x||_2 (inf where no adversarial point was found).
    """
    result = ddn_result(
        model, x, y, steps=steps, gamma=gamma, init_norm=init_norm, alpha_init=alpha_init,
        alpha_final=alpha_final, levels=levels, targeted=targeted,
    )
    return result if return_info else result.x_adv
