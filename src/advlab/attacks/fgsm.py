"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2014, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._core import (
    GEOMETRIES,
    LOSSES,
    NORMS,
    AttackResult,
    ModelCall,
    check_choice,
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_model,
    frozen,
    is_success,
    objective,
)


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    targeted: bool = False,
    loss: str = "ce",
    norm: str = "linf",
    return_info: bool = False,
) -> Tensor | AttackResult:
    """One gradient step of size eps: x' = clip_[0,1](x + eps * sign(grad_x J(theta, x, y))).

    Eq. (2) of Madan & Anand ("Robust Deep Learning"), from Goodfellow et al. 2014. With ``targeted=True``,
    ``y`` holds the targets and the step goes down their loss: x' = x - eps * sign(grad_x J(theta, x, t)).
    ``norm="l2"`` gives the L2 variant (fast gradient method, Miyato et al. 2016): x + eps * g / ||g||_2.

    Args:
        model: maps images in [0, 1] (N, C, H, W) to logits (N, K); left in the mode it was in.
        x: clean images in [0, 1]; float32 or float64, on the model's device.
        y: true classes (untargeted) or target classes (targeted), int tensor (N,).
        eps: perturbation budget in pixel units, a number or a per-sample tensor (N,).
        loss: "ce" (cross-entropy) or "margin" (the Carlini-Wagner logit margin).
        return_info: return an :class:`AttackResult` with the success mask (one extra forward pass).

    Returns:
        x_adv shaped like x, in [0, 1] and within eps of x in the chosen norm.
    """
    check_model(model)
    x = check_images(x)
    y, y_max = check_labels(y, x.shape[0], x.device)
    eps_t = check_eps(eps, x.shape[0], x, norm)
    loss = check_choice(loss, "loss", LOSSES)
    geometry = GEOMETRIES[check_choice(norm, "norm", NORMS)]

    with frozen(model):
        forward = ModelCall(model, x, 2)
        x_in = x.detach().clone().requires_grad_(True)
        logits = forward(x_in)
        check_logits(logits, x.shape[0], y_max)
        (grad,) = torch.autograd.grad(objective(logits, y, loss, targeted).sum(), x_in)
        x_adv = x_in.detach()
        x_adv.add_(geometry.ascent_step_(grad, eps_t))
        geometry.project_(x_adv, x, eps_t, geometry.box(x, eps_t))
        if not return_info:
            return x_adv
        with torch.no_grad():
            logits_adv = forward(x_adv)
        return AttackResult(x_adv, is_success(logits_adv, y, targeted), objective(logits_adv, y, loss, targeted))
