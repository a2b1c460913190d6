"""Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum", CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._core import (
    GEOMETRIES,
    LOSSES,
    NORMS,
    AttackResult,
    ModelCall,
    batch_view,
    check_choice,
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_model,
    check_steps,
    flat_norm,
    frozen,
    is_success,
    objective,
    per_sample,
)
from .pgd import Best


def mifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None = None,
    steps: int = 10,
    *,
    decay: float = 1.0,
    norm: str = "linf",
    targeted: bool = False,
    loss: str = "ce",
    return_info: bool = False,
) -> Tensor | AttackResult:
    """MI-FGSM, Algorithm 1 of Dong et al. 2018: BIM whose step follows an accumulated, L1-normalised gradient.

      g_{t+1} = mu * g_t + grad_x J(x_t, y) / ||grad_x J(x_t, y)||_1
      x_{t+1} = Clip_{x, eps}(x_t + alpha * sign(g_{t+1}))       (L2: alpha * g / ||g||_2, eq. (9) of the paper)

    with mu = ``decay`` (1.0 in the paper), alpha = eps / steps by default (the paper's choice, so that T steps
    can reach the border of the ball), and the clip onto the eps-ball intersected with [0, 1]. No random start.
    The L1 normalisation is per sample. Returns the best iterate met (successful first, then highest loss).
    """
    check_model(model)
    x = check_images(x)
    steps = check_steps(steps)
    n = x.shape[0]
    y, y_max = check_labels(y, n, x.device)
    eps_t = check_eps(eps, n, x, norm)
    alpha_t = eps_t / steps if alpha is None else per_sample(alpha, n, "alpha", x, strictly_positive=True)
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not decay >= 0:
        raise ValueError(f"decay must be a number >= 0, got {decay!r}")
    loss = check_choice(loss, "loss", LOSSES)
    geometry = GEOMETRIES[check_choice(norm, "norm", NORMS)]

    best = Best(x)
    box = geometry.box(x, eps_t)
    x_adv = x.detach().clone()
    g = torch.zeros_like(x)
    with frozen(model):
        forward = ModelCall(model, x, steps + 1)
        for i in range(steps):
            x_adv.requires_grad_(True)
            logits = forward(x_adv)
            if i == 0:
                check_logits(logits, n, y_max)
            obj = objective(logits, y, loss, targeted)
            (grad,) = torch.autograd.grad(obj.sum(), x_adv)
            with torch.no_grad():
                x_adv = x_adv.detach()
                best.update(x_adv, obj.detach(), is_success(logits, y, targeted))
                g.mul_(decay).add_(grad / batch_view(flat_norm(grad, 1.0).clamp_min(1e-30), grad))
                x_adv.add_(geometry.ascent_step_(g.clone(), alpha_t))
                geometry.project_(x_adv, x, eps_t, box)
        with torch.no_grad():
            logits = forward(x_adv)
            best.update(x_adv, objective(logits, y, loss, targeted), is_success(logits, y, targeted))
    if return_info:
        return AttackResult(best.x, best.success, best.objective)
    return best.x
