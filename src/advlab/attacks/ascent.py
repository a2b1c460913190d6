"""The one projected steepest-ascent loop behind BIM, PGD, MI-FGSM and training's inner maximisation.

    x_{t+1} = Pi_{B(x, eps) ∩ [0, 1]^d}(x_t + alpha * s(d_t)),    d_t = direction(grad_x f(x_t))

with s the norm's step (sign for Linf, g / ||g||_2 for L2, the sparse step in L1, g / ||g||_1 in L0) and
``direction`` the identity (BIM, PGD; Madry et al. 2018, eq. (2.1)) or a momentum rule (MI-FGSM,
:class:`Momentum`). An evaluation attack scores every iterate and keeps the best point
(:class:`~advlab.attacks.state.BestPoint`); training's inner maximisation keeps the last iterate, as Madry et
al.'s code does. With ``eot_samples=K`` the gradient and the scores are those of the model's expectation over
K draws of its randomness (:mod:`~advlab.attacks.eot`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .eot import Expected
from .norms import Ball, batch_view, flat_norm
from .state import BestPoint

Score = Callable[[Tensor], Tensor]  # logits -> per-sample values (objective) or bool (success)
Direction = Callable[[Tensor], Tensor]  # input gradient -> ascent direction (may reuse the gradient's storage)


class Momentum:
    """MI-FGSM's direction rule, Algorithm 1 of Dong et al. 2018: g_{t+1} = mu * g_t + grad / ||grad||_1.

    The L1 normalisation is per sample. One instance per run (it holds g).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.g: Tensor | None = None

    def __call__(self, grad: Tensor) -> Tensor:
        # In the gradient's own storage (the loop's to reuse, see Direction): no batch-sized allocation per step;
        # the returned direction is that storage, which the step rule then overwrites, never g itself.
        step = grad.div_(batch_view(flat_norm(grad, 1.0).clamp_min(1e-30), grad))
        if self.g is None:
            self.g = step.clone()
            return step
        self.g.mul_(self.decay).add_(step)
        return step.copy_(self.g)


def ascend(
    model: nn.Module,
    ball: Ball,
    start: Tensor,
    alpha: Tensor,
    steps: int,
    objective: Score,
    *,
    y_max: int,
    direction: Direction | None = None,
    best: BestPoint | None = None,
    success: Score | None = None,
    eot_samples: int = 1,
) -> Tensor:
    """``steps`` projected steepest-ascent steps of size ``alpha`` (N,) from ``start``; returns the last iterate.

    With ``best`` (and ``success``), every iterate is scored from the logits its own forward pass already
    computed, and one final forward scores the last iterate, so ``best`` ends holding the best point met.
    The loop body is one forward, one input-gradient backward and an in-place update under no_grad: no host
    syncs. The objective is summed over the batch, never averaged, so each sample's step is its own.

    ``eot_samples=K`` (checked by the caller) makes each step K forwards and backwards: the step follows the mean
    of the K gradients and the iterate is scored on the expected prediction of the same K draws
    (:class:`~advlab.attacks.eot.Expected`); K = 1 is the plain loop.
    """
    if (best is None) != (success is None):
        raise ValueError("ascend scores iterates only with both best and success given")
    view = Expected(model, eot_samples, y_max)
    x_adv = start.detach().clone()
    for _ in range(steps):
        logits, obj, grad = view.value_and_grad(x_adv, objective)
        with torch.no_grad():
            if best is not None and success is not None:
                best.update(x_adv, obj, success(logits))
            step = grad if direction is None else direction(grad)
            x_adv.add_(ball.norm.ascent_step_(step, alpha))
            ball.project_(x_adv)
    if best is not None and success is not None:
        logits, obj = view.value(x_adv, objective)
        best.update(x_adv, obj, success(logits))
    return x_adv
