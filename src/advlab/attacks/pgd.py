"""Iterative gradient attacks: BIM (Kurakin et al. 2016) and PGD (Madry et al. 2017), Linf and L2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._core import (
    GEOMETRIES,
    LOSSES,
    NORMS,
    AttackResult,
    Geometry,
    ModelCall,
    Noise,
    batch_view,
    check_choice,
    check_eps,
    check_images,
    check_labels,
    check_logits,
    check_model,
    check_steps,
    frozen,
    is_success,
    objective,
    per_sample,
)


class Best:
    """Per-sample best point: a successful point beats an unsuccessful one, then a higher objective wins."""

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.x = x.detach().clone()
        self.objective = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        self.success = torch.zeros(n, dtype=torch.bool, device=x.device)

    @torch.no_grad()
    def update(self, x: Tensor, objective: Tensor, success: Tensor) -> None:
        # NaN objectives compare False, so a point with a NaN loss is never kept.
        better = (success & ~self.success) | ((success == self.success) & (objective > self.objective))
        self.x = torch.where(batch_view(better, x), x, self.x)
        self.objective = torch.where(better, objective, self.objective)
        self.success |= better & success

    def merge(self, other: Best, index: Tensor) -> None:
        """Fold in ``other``, which holds the samples at ``index`` of this batch."""
        sub = Best.__new__(Best)
        sub.x, sub.objective, sub.success = self.x[index], self.objective[index], self.success[index]
        sub.update(other.x, other.objective, other.success)
        self.x[index], self.objective[index], self.success[index] = sub.x, sub.objective, sub.success


def _ascend(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_max: int,
    start: Tensor,
    eps: Tensor,
    alpha: Tensor,
    steps: int,
    geometry: Geometry,
    loss: str,
    targeted: bool,
) -> Best:
    """``steps`` projected steepest-ascent steps from ``start``; every iterate is scored, the best is kept.

    The loop body is one forward, one input-gradient backward and an in-place update under no_grad: no host
    syncs, no copies beyond the best-point bookkeeping. Each iterate is scored from the logits its own forward
    pass already computed, and one final forward scores the last iterate.
    """
    best = Best(x)
    box = geometry.box(x, eps)
    x_adv = start.detach().clone()
    forward = ModelCall(model, x, steps + 1)
    for i in range(steps):
        x_adv.requires_grad_(True)
        logits = forward(x_adv)
        if i == 0:
            check_logits(logits, x.shape[0], y_max)
        obj = objective(logits, y, loss, targeted)
        (grad,) = torch.autograd.grad(obj.sum(), x_adv)
        with torch.no_grad():
            x_adv = x_adv.detach()
            best.update(x_adv, obj.detach(), is_success(logits, y, targeted))
            x_adv.add_(geometry.ascent_step_(grad, alpha))
            geometry.project_(x_adv, x, eps, box)
    with torch.no_grad():
        logits = forward(x_adv)
        best.update(x_adv, objective(logits, y, loss, targeted), is_success(logits, y, targeted))
    return best


def _prepare(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None,
    steps: int,
    loss: str,
    norm: str,
    default_alpha: float,
) -> tuple[Tensor, Tensor, int, Tensor, Tensor, Geometry]:
    check_model(model)
    x = check_images(x)
    steps = check_steps(steps)
    y, y_max = check_labels(y, x.shape[0], x.device)
    eps_t = check_eps(eps, x.shape[0], x, norm)
    alpha_t = (
        eps_t * default_alpha / steps
        if alpha is None
        else per_sample(alpha, x.shape[0], "alpha", x, strictly_positive=True)
    )
    check_choice(loss, "loss", LOSSES)
    geometry = GEOMETRIES[check_choice(norm, "norm", NORMS)]
    return x, y, y_max, eps_t, alpha_t, geometry


def _result(best: Best, return_info: bool) -> Tensor | AttackResult:
    if return_info:
        return AttackResult(best.x, best.success, best.objective)
    return best.x


def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None = None,
    steps: int = 10,
    *,
    targeted: bool = False,
    loss: str = "ce",
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Basic Iterative Method: FGSM repeated with step alpha, clipped to the eps-ball and to [0, 1] each step.

    Eq. (3)-(4) of Madan & Anand, from Kurakin, Goodfellow & Bengio 2016 ("Adversarial examples in the
    physical world"): x_0 = x, x_{n+1} = Clip_{x,eps}{x_n + alpha * sign(grad_x J(theta, x_n, y))}, with
    Clip_{x,eps} the intersection of the Linf eps-ball and the [0, 1] box. No random start. Returns the best
    iterate met (a successful one first, else the highest loss), which is never weaker than the last one.

    ``alpha`` defaults to eps / steps, the smallest step that can reach the corner of the ball.
    Other arguments as in :func:`advlab.attacks.fgsm`.
    """
    x, y, y_max, eps_t, alpha_t, geometry = _prepare(model, x, y, eps, alpha, steps, loss, "linf", 1.0)
    with frozen(model):
        best = _ascend(model, x, y, y_max, x, eps_t, alpha_t, steps, geometry, loss, targeted)
    return _result(best, return_info)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None = None,
    steps: int = 10,
    *,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    seed: int | Tensor | None = None,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Projected Gradient Descent (Madry et al. 2017, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", eq. (2.1) inner maximisation): x_{t+1} = Pi_{B(x,eps) ∩ [0,1]^d}(x_t + alpha * s(grad_x L)), with
    s = sign for Linf and g/||g||_2 for L2, from a uniform random start in the ball.

    With ``restarts > 1`` the attack restarts from new random points, only for the samples not yet broken
    (as AutoAttack does), and keeps per sample the best point over all restarts: a successful one, else the
    one of highest loss. Per-sample independence: the loss is summed (not averaged) over the batch and
    nothing stops the batch early, so each sample gets exactly what it would get alone, given the same
    per-sample ``seed`` (an int, used as seed + i for sample i, or an int64 tensor (N,) of per-sample seeds).

    ``alpha`` defaults to 2.5 * eps / steps (Madry et al.). Returns the best point met, not the last iterate.
    """
    x, y, y_max, eps_t, alpha_t, geometry = _prepare(model, x, y, eps, alpha, steps, loss, norm, 2.5)
    restarts = check_steps(restarts, "restarts")
    noise = Noise(seed, x.shape[0])
    with frozen(model):
        start = geometry.random_start(x, eps_t, noise) if random_start else x
        best = _ascend(model, x, y, y_max, start, eps_t, alpha_t, steps, geometry, loss, targeted)
        for _ in range(restarts - 1):
            index = (~best.success).nonzero().view(-1)
            if index.numel() == 0:
                break
            xs, ys, es, al = x[index], y[index], eps_t[index], alpha_t[index]
            start = geometry.random_start(xs, es, noise.subset(index)) if random_start else xs
            best.merge(_ascend(model, xs, ys, y_max, start, es, al, steps, geometry, loss, targeted), index)
    return _result(best, return_info)
