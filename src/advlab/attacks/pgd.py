"""Iterative gradient attacks: BIM (Kurakin et al. 2016) and PGD (Madry et al. 2017) in Linf, L2, L1 and L0."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ascent import ascend
from .checks import check_choice, check_steps, frozen, per_sample, validate
from .noise import Noise
from .norms import L0, Ball
from .objectives import is_success, objective
from .result import AttackResult
from .state import BestPoint

# The norms of PGD: L1 takes the sparse step of its geometry (Croce & Hein 2021, sec. 3), L0 PGD_0's
# (Croce & Hein 2019).
PGD_NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")

# PGD_0's default step, an L1 length per coordinate of the input: Croce & Hein's 120000/255 on CIFAR-10's
# 3 x 32 x 32 coordinates (their code's step_size), scaled to the input's size.
L0_ALPHA_PER_COORDINATE = 120000 / 255 / 3072
# PGD_0's random starts (``l0_start``): "box", Croce & Hein's (a uniform point of the box projected onto the
# ball, :meth:`~advlab.attacks.norms.L0.box_start`); "box_with_clean", the second restart (index 1; with
# restarts=1 the same as "box") from the clean image and every other from "box"; "ball", a uniform point of the
# ball ∩ box (:meth:`~advlab.attacks.norms.L0.random_start`).
L0_STARTS: tuple[str, ...] = ("box", "box_with_clean", "ball")


def _alpha(alpha: float | Tensor | None, eps: Tensor, steps: int, default: float, norm: str, x: Tensor) -> Tensor:
    """``alpha`` per sample, or ``default * eps / steps`` (in L0, where eps counts coordinates and says nothing
    of a step's length: PGD_0's step, :data:`L0_ALPHA_PER_COORDINATE` times the coordinates of one input)."""
    if alpha is None:
        if norm == "l0":
            return torch.full_like(eps, L0_ALPHA_PER_COORDINATE * x[0].numel())
        return eps * default / steps
    return per_sample(alpha, eps.shape[0], "alpha", eps, strictly_positive=True)


def bim_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None = None,
    steps: int = 10,
    *,
    targeted: bool = False,
    loss: str = "ce",
    eot_samples: int = 1,
) -> AttackResult:
    """:func:`bim`, always returning the :class:`AttackResult`: PGD-Linf with no random start and no restart."""
    return _projected_ascent(
        model, x, y, eps, alpha, steps, norm="linf", random_start=False, restarts=1, targeted=targeted, loss=loss,
        seed=None, default_alpha=1.0, eot_samples=eot_samples,
    )


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
    eot_samples: int = 1,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Basic Iterative Method: FGSM repeated with step alpha, clipped to the eps-ball and to [0, 1] each step.

    Eq. (3)-(4) of Madan & Anand, from Kurakin, Goodfellow & Bengio 2016 ("Adversarial examples in the
    physical world"): x_0 = x, x_{n+1} = Clip_{x,eps}{x_n + alpha * sign(grad_x J(theta, x_n, y))}, with
    Clip_{x,eps} the intersection of the Linf eps-ball and the [0, 1] box. No random start. Returns the best
    iterate met (a successful one first, else the highest loss), which is never weaker than the last one.

    ``alpha`` defaults to eps / steps, the smallest step that can reach the corner of the ball.
    Other arguments (``eot_samples`` included) as in :func:`advlab.attacks.fgsm`.
    """
    result = bim_result(model, x, y, eps, alpha, steps, targeted=targeted, loss=loss, eot_samples=eot_samples)
    return result if return_info else result.x_adv


def pgd_result(
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
    eot_samples: int = 1,
    l0_start: str = "box",
) -> AttackResult:
    """:func:`pgd`, always returning the :class:`AttackResult`."""
    return _projected_ascent(
        model, x, y, eps, alpha, steps, norm=norm, random_start=random_start, restarts=restarts,
        targeted=targeted, loss=loss, seed=seed, default_alpha=2.5, eot_samples=eot_samples, l0_start=l0_start,
    )


def _projected_ascent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor | None,
    steps: int,
    *,
    norm: str,
    random_start: bool,
    restarts: int,
    targeted: bool,
    loss: str,
    seed: int | Tensor | None,
    default_alpha: float,
    eot_samples: int,
    l0_start: str = "box",
) -> AttackResult:
    """BIM and PGD: restarts of :func:`~advlab.attacks.ascent.ascend`, each on the samples not yet broken."""
    inp = validate(model, x, y, eps=eps, norm=norm, norms=PGD_NORMS, loss=loss, steps=steps, eot_samples=eot_samples)
    assert inp.eps is not None and inp.norm is not None
    restarts = check_steps(restarts, "restarts")
    l0_start = check_choice(l0_start, "l0_start", L0_STARTS)
    alpha_t = _alpha(alpha, inp.eps, steps, default_alpha, inp.norm.name, inp.x)
    noise = Noise(seed, inp.n)

    def start(ball: Ball, noise: Noise, restart: int) -> Tensor:
        if not random_start:
            return ball.x
        if not isinstance(ball.norm, L0) or l0_start == "ball":
            return ball.random_start(noise)
        if l0_start == "box_with_clean" and restart == 1:
            return ball.x
        return ball.norm.box_start(ball.x, ball.eps, noise)

    def run(ball: Ball, y: Tensor, alpha: Tensor, noise: Noise, restart: int) -> BestPoint:
        best = BestPoint.start(ball.x)
        ascend(
            model,
            ball,
            start(ball, noise, restart),
            alpha,
            steps,
            lambda logits: objective(logits, y, loss, targeted),
            y_max=inp.y_max,
            best=best,
            success=lambda logits: is_success(logits, y, targeted),
            eot_samples=eot_samples,
        )
        return best

    with frozen(model):
        ball = inp.norm.ball(inp.x, inp.eps)
        best = run(ball, inp.y, alpha_t, noise, 0)
        for restart in range(1, restarts):  # each restart only on the samples not yet broken
            index = best.standing()
            if index.numel() == 0:
                break
            best.merge(run(ball.take(index), inp.y[index], alpha_t[index], noise.take(index), restart), index)
    return AttackResult(best.x, best.success, best.objective)


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
    eot_samples: int = 1,
    l0_start: str = "box",
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Projected Gradient Descent (Madry et al. 2017, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", eq. (2.1) inner maximisation): x_{t+1} = Pi_{B(x,eps) ∩ [0,1]^d}(x_t + alpha * s(grad_x L)), with
    s = sign for Linf, g/||g||_2 for L2 and, for L1, the sparse step of Croce & Hein 2021 ("Mind the box",
    sec. 3; :meth:`advlab.attacks.norms.L1.ascent_step_`: alpha spread over the 1% of coordinates of largest
    |g|, each along sign(g)) followed by the exact projection onto the L1 ball ∩ box, from a uniform random
    start in the ball. In L0 (``eps`` a whole number of coordinates, each channel of each pixel counted) it is
    PGD_0 of Croce & Hein 2019 ("Sparse and Imperceivable Adversarial Attacks"): s = g/||g||_1 and the exact
    projection onto {||delta||_0 <= eps} ∩ box (keep the eps coordinates of largest gain), every restart from
    their start, a uniform point of the box projected onto the ball (``l0_start="box"``). With
    ``"box_with_clean"`` the second restart (``restarts >= 2``) starts from the clean image instead, the stronger
    start on undefended models, where theirs is weak, and the weaker on adversarially trained ones; ``"ball"``:
    a uniform point of the ball ∩ box (:data:`L0_STARTS`). ``eps`` counts coordinates, not pixels as the
    paper's k does: on RGB images its k pixels are up to 3k here.

    With ``restarts > 1`` the attack restarts from new random points, only for the samples not yet broken
    (as AutoAttack does), and keeps per sample the best point over all restarts: a successful one, else the
    one of highest loss. Per-sample independence: the loss is summed (not averaged) over the batch and
    nothing stops the batch early, so each sample gets exactly what it would get alone, given the same
    per-sample ``seed`` (an int, used as seed + i for sample i, or an int64 tensor (N,) of per-sample seeds).

    ``alpha`` defaults to 2.5 * eps / steps (Madry et al.); in L0, where it is the step's L1 length, to a value
    scaled from Croce & Hein's (:data:`L0_ALPHA_PER_COORDINATE` per input coordinate; theirs on CIFAR-10).
    Returns the best point met, not the last iterate.
    ``eot_samples`` as in :func:`advlab.attacks.fgsm` (EOT on a randomized model).
    """
    result = pgd_result(
        model, x, y, eps, alpha, steps, norm=norm, random_start=random_start, restarts=restarts,
        targeted=targeted, loss=loss, seed=seed, eot_samples=eot_samples, l0_start=l0_start,
    )
    return result if return_info else result.x_adv
