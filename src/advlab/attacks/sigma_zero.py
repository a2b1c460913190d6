"""sigma-zero (Cina, Villani, Pintor, Schoenherr, Biggio & Pelillo, "sigma-zero: Gradient-based Optimization of
l0-norm Adversarial Examples", ICLR 2025): the smallest L0 perturbation, by gradient descent on a smooth
approximation of the L0 norm with a per-sample threshold that zeroes the small components."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_non_negative, check_positive, first_logits, frozen, validate
from .fmn import cosine_annealing
from .gradient import input_gradient
from .norms import batch_view, get_norm
from .objectives import objective, rounding_slack
from .result import AttackResult
from .state import SmallestPoint

# Adam's moment decay rates and denominator guard (Kingma & Ba 2015), as the authors' torch.optim.Adam has them.
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


def smooth_l0(delta: Tensor, sigma: float) -> Tensor:
    """sum_i delta_i^2 / (delta_i^2 + sigma) per sample (eq. 3 of the paper): ||delta||_0 as sigma -> 0, and
    differentiable everywhere; each term is 1/2 at |delta_i| = sqrt(sigma)."""
    square = delta.square()
    return (square / (square + sigma)).flatten(1).sum(dim=1)


def sigma_zero_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 1.0,
    sigma: float = 1e-3,
    tau_init: float = 0.3,
    tau_factor: float = 0.01,
    targeted: bool = False,
) -> AttackResult:
    """:func:`sigma_zero`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, steps=steps)
    x, y, y_max = inp.x, inp.y, inp.y_max
    lr = check_positive(lr, "lr")
    sigma = check_positive(sigma, "sigma")
    tau_init = check_positive(tau_init, "tau_init")
    tau_factor = check_non_negative(tau_factor, "tau_factor")
    if tau_init > 1:
        raise ValueError(f"tau_init is a threshold on |delta_i| for images in [0, 1] and must be <= 1, got {tau_init}")
    l0 = get_norm("l0")
    d = x[0].numel()  # the paper's d: the L0 term is normalised by the number of coordinates

    best = SmallestPoint.start(x)
    delta = torch.zeros_like(x)
    m = torch.zeros_like(x)  # Adam's first and second moments, per coordinate
    v = torch.zeros_like(x)
    tau = torch.full((x.shape[0],), tau_init, dtype=x.dtype, device=x.device)

    with frozen(model):
        for i in range(steps + 1):
            last = i == steps  # the last iterate is scored, no step after it
            delta.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                x_adv = x + delta
                logits = first_logits(model, x_adv, y_max) if i == 0 else model(x_adv)
                obj = objective(logits, y, "margin", targeted)  # > 0 exactly when adversarial
                slack = rounding_slack(logits)
                adversarial = obj.detach() > slack
                # delta_i = 0 leaves x_i as it is, so delta's count bounds the point's (result() measures the point)
                best.update(x_adv.detach(), adversarial, l0.size(delta.detach()))
                if last:
                    break
                loss = (slack - obj).clamp_min(0) + smooth_l0(delta, sigma) / d
                grad = input_gradient(loss.sum(), delta)
            with torch.no_grad():
                delta = delta.detach()
                grad.div_(batch_view(grad.flatten(1).abs().amax(dim=1).clamp_min(1e-12), grad))
                m.mul_(ADAM_BETA1).add_(grad, alpha=1 - ADAM_BETA1)
                v.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1 - ADAM_BETA2)
                step = cosine_annealing(lr, lr / 10, i, steps) / (1 - ADAM_BETA1 ** (i + 1))
                denom = v.sqrt().div_((1 - ADAM_BETA2 ** (i + 1)) ** 0.5).add_(ADAM_EPS)
                delta.addcdiv_(m, denom, value=-step)
                delta.add_(x).clamp_(0, 1).sub_(x)  # into the box
                rate = tau_factor * cosine_annealing(lr, lr / 10, i + 1, steps)
                tau = torch.where(adversarial, tau + rate, tau - rate).clamp_(0, 1)
                delta.masked_fill_(delta.abs() < batch_view(tau, delta), 0.0)
    return best.result(x, l0)


def sigma_zero(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 1.0,
    sigma: float = 1e-3,
    tau_init: float = 0.3,
    tau_factor: float = 0.01,
    targeted: bool = False,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """sigma-zero, Algorithm 1 of Cina et al. (ICLR 2025): the smallest L0 perturbation (changed coordinates).

    It minimises, per sample, max(-L(x + delta), 0) + l0_sigma(delta) / d over delta, with L the margin
    max_{j != y} Z_j - Z_y (> 0 exactly when adversarial; Z_t - max_{j != t} Z_j towards target t when
    ``targeted``: advlab's extension, the paper's attack is untargeted), d the number of coordinates and l0_sigma
    the smooth L0 norm of :func:`smooth_l0` (eq. 3).
    Not adversarial, the margin term pulls towards the boundary; adversarial, only the L0 term acts and shrinks
    the perturbation. At step k = 0 .. steps - 1, with eta_k cosine-annealed from ``lr`` to lr / 10:

      g = grad / ||grad||_inf                 (per sample; the step's scale does not depend on the model's)
      delta <- delta - eta_k Adam(g)          (Adam per coordinate, beta = 0.9, 0.999, as the authors')
      delta <- clip(x + delta, 0, 1) - x
      tau   <- clip(tau +- tau_factor eta_{k+1}, 0, 1)   (+ where x + delta was adversarial before the step, -
                                                         where not: the adaptive projection, sec. 3)
      delta_i <- 0 where |delta_i| < tau      (the projection that makes delta sparse)

    from delta = 0 and tau = ``tau_init``. The threshold rises while the point is adversarial (more small
    components dropped) and falls while it is not (more allowed back), so it settles near the sparsest delta
    that stays adversarial. Defaults are the paper's (sigma = 1e-3, tau_init = 0.3, t = 0.01, eta_0 = 1);
    ``tau_factor=0`` holds tau at ``tau_init``, as the authors' current code does (docs/attacks.md).

    Every iterate is scored on the forward pass that computes its gradient, and the last one on one more
    forward (steps + 1 forwards, steps backwards); a point counts as adversarial once its margin clears
    ``rounding_slack`` (1e-4 of its largest |logit|), and the margin term aims that far past the boundary
    (the authors' at 0, which a re-evaluation in other float rounding can undo). Each sample's run depends on
    itself alone (no randomness; the gradient is normalised per sample and Adam works per coordinate).

    Returns the adversarial point with the fewest changed coordinates met, or x itself where none was met
    (distance inf); a sample already misclassified (past the rounding slack) comes back unchanged with distance 0.
    With ``return_info=True`` an :class:`AttackResult` whose ``extras["distance"]`` is ||x_adv - x||_0 and whose
    ``loss`` is minus that distance.
    """
    result = sigma_zero_result(
        model, x, y, steps=steps, lr=lr, sigma=sigma, tau_init=tau_init, tau_factor=tau_factor, targeted=targeted
    )
    return result if return_info else result.x_adv
