"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2014, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import Inputs, first_logits, frozen, validate
from .objectives import is_success, objective
from .result import AttackResult


def fgsm_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    targeted: bool = False,
    loss: str = "ce",
    norm: str = "linf",
) -> AttackResult:
    """:func:`fgsm`, always returning the :class:`AttackResult` (one more forward pass, for the success mask)."""
    inp = validate(model, x, y, eps=eps, norm=norm, loss=loss)
    with frozen(model):
        x_adv = _step(model, inp, loss, targeted)
        with torch.no_grad():
            logits = model(x_adv)
    return AttackResult(x_adv, is_success(logits, inp.y, targeted), objective(logits, inp.y, loss, targeted))


def _step(model: nn.Module, inp: Inputs, loss: str, targeted: bool) -> Tensor:
    """x + eps * s(grad), projected onto the ball ∩ box: the whole attack, without scoring the result."""
    assert inp.eps is not None and inp.norm is not None
    x_in = inp.x.clone().requires_grad_(True)
    logits = first_logits(model, x_in, inp.y_max)
    (grad,) = torch.autograd.grad(objective(logits, inp.y, loss, targeted).sum(), x_in)
    x_adv = x_in.detach()
    x_adv.add_(inp.norm.ascent_step_(grad, inp.eps))
    return inp.norm.ball(inp.x, inp.eps).project_(x_adv)


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
    if return_info:
        return fgsm_result(model, x, y, eps, targeted=targeted, loss=loss, norm=norm)
    inp = validate(model, x, y, eps=eps, norm=norm, loss=loss)
    with frozen(model):
        return _step(model, inp, loss, targeted)
