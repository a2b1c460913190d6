"""Momentum Iterative FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum", CVPR 2018)."""

from __future__ import annotations

from torch import Tensor, nn

from .ascent import Momentum, ascend
from .checks import frozen, per_sample, validate
from .objectives import is_success, objective
from .result import AttackResult
from .state import BestPoint


def mifgsm_result(
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
    eot_samples: int = 1,
) -> AttackResult:
    """:func:`mifgsm`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, eps=eps, norm=norm, loss=loss, steps=steps, eot_samples=eot_samples)
    assert inp.eps is not None and inp.norm is not None
    alpha_t = inp.eps / steps if alpha is None else per_sample(alpha, inp.n, "alpha", inp.x, strictly_positive=True)
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not decay >= 0:
        raise ValueError(f"decay must be a number >= 0, got {decay!r}")
    best = BestPoint.start(inp.x)
    with frozen(model):
        ascend(
            model,
            inp.norm.ball(inp.x, inp.eps),
            inp.x,
            alpha_t,
            steps,
            lambda logits: objective(logits, inp.y, loss, targeted),
            y_max=inp.y_max,
            direction=Momentum(float(decay)),
            best=best,
            success=lambda logits: is_success(logits, inp.y, targeted),
            eot_samples=eot_samples,
        )
    return AttackResult(best.x, best.success, best.objective)


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
    eot_samples: int = 1,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """MI-FGSM, Algorithm 1 of Dong et al. 2018: BIM whose step follows an accumulated, L1-normalised gradient.

      g_{t+1} = mu * g_t + grad_x J(x_t, y) / ||grad_x J(x_t, y)||_1
      x_{t+1} = Clip_{x, eps}(x_t + alpha * sign(g_{t+1}))       (L2: alpha * g / ||g||_2, eq. (9) of the paper)

    with mu = ``decay`` (1.0 in the paper), alpha = eps / steps by default (the paper's choice, so that T steps
    can reach the border of the ball), and the clip onto the eps-ball intersected with [0, 1]. No random start.
    The L1 normalisation is per sample. Returns the best iterate met (successful first, then highest loss).
    ``eot_samples`` as in :func:`advlab.attacks.fgsm` (the momentum accumulates the EOT gradients).
    """
    result = mifgsm_result(
        model, x, y, eps, alpha, steps, decay=decay, norm=norm, targeted=targeted, loss=loss,
        eot_samples=eot_samples,
    )
    return result if return_info else result.x_adv
