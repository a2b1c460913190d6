"""Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy 2014, "Explaining and Harnessing Adversarial Examples")."""

from __future__ import annotations

from torch import Tensor, nn

from .checks import Inputs, frozen, validate
from .eot import Expected
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
    eot_samples: int = 1,
) -> AttackResult:
    """:func:`fgsm`, always returning the :class:`AttackResult` (one more forward pass, for the success mask;
    ``eot_samples`` of them with EOT, the result judged on the expected prediction)."""
    inp = validate(model, x, y, eps=eps, norm=norm, loss=loss, eot_samples=eot_samples)
    with frozen(model):
        view = Expected(model, eot_samples, inp.y_max)
        x_adv = _step(view, inp, loss, targeted)
        logits, obj = view.value(x_adv, lambda z: objective(z, inp.y, loss, targeted))
    return AttackResult(x_adv, is_success(logits, inp.y, targeted), obj)


def _step(view: Expected, inp: Inputs, loss: str, targeted: bool) -> Tensor:
    """x + eps * s(grad), projected onto the ball ∩ box: the whole attack, without scoring the result."""
    assert inp.eps is not None and inp.norm is not None
    _, _, grad = view.value_and_grad(inp.x, lambda z: objective(z, inp.y, loss, targeted))
    x_adv = inp.x.clone()
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
    eot_samples: int = 1,
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
        eot_samples: K >= 1, Expectation over Transformation (Athalye et al. 2018) for a randomized model:
            the gradient is the mean of K gradients, each from its own draw of the model's randomness, and
            success is judged on the mean softmax over K draws (:mod:`advlab.attacks.eot`, which also says how
            seeds reach the model's randomness). 1 (default) is the plain attack.
        return_info: return an :class:`AttackResult` with the success mask (one extra forward pass).

    Returns:
        x_adv shaped like x, in [0, 1] and within eps of x in the chosen norm.
    """
    if return_info:
        return fgsm_result(model, x, y, eps, targeted=targeted, loss=loss, norm=norm, eot_samples=eot_samples)
    inp = validate(model, x, y, eps=eps, norm=norm, loss=loss, eot_samples=eot_samples)
    with frozen(model):
        return _step(Expected(model, eot_samples, inp.y_max), inp, loss, targeted)
