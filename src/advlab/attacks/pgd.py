"""Iterative gradient attacks: BIM (Kurakin et al. 2016) and PGD (Madry et al. 2017), Linf and L2."""

from __future__ import annotations

from torch import Tensor, nn

from .ascent import ascend
from .checks import check_steps, frozen, per_sample, validate
from .noise import Noise
from .norms import Ball
from .objectives import is_success, objective
from .result import AttackResult
from .state import BestPoint

# The norms of BIM and PGD: L1 takes the sparse step of its geometry (Croce & Hein 2021, sec. 3).
PGD_NORMS: tuple[str, ...] = ("linf", "l2", "l1")


def _alpha(alpha: float | Tensor | None, eps: Tensor, steps: int, default: float) -> Tensor:
    """``alpha`` per sample, or ``default * eps / steps``."""
    if alpha is None:
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
) -> AttackResult:
    """:func:`pgd`, always returning the :class:`AttackResult`."""
    return _projected_ascent(
        model, x, y, eps, alpha, steps, norm=norm, random_start=random_start, restarts=restarts,
        targeted=targeted, loss=loss, seed=seed, default_alpha=2.5, eot_samples=eot_samples,
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
) -> AttackResult:
    """BIM and PGD: restarts of :func:`~advlab.attacks.ascent.ascend`, each on the samples not yet broken."""
    inp = validate(model, x, y, eps=eps, norm=norm, norms=PGD_NORMS, loss=loss, steps=steps, eot_samples=eot_samples)
    assert inp.eps is not None and inp.norm is not None
    restarts = check_steps(restarts, "restarts")
    alpha_t = _alpha(alpha, inp.eps, steps, default_alpha)
    noise = Noise(seed, inp.n)

    def run(ball: Ball, y: Tensor, alpha: Tensor, noise: Noise) -> BestPoint:
        best = BestPoint.start(ball.x)
        ascend(
            model,
            ball,
            ball.random_start(noise) if random_start else ball.x,
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
        best = run(ball, inp.y, alpha_t, noise)
        for _ in range(restarts - 1):  # each restart only on the samples not yet broken
            index = best.standing()
            if index.numel() == 0:
                break
            best.merge(run(ball.take(index), inp.y[index], alpha_t[index], noise.take(index)), index)
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
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Projected Gradient Descent (Madry et al. 2017, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", eq. (2.1) inner maximisation): x_{t+1} = Pi_{B(x,eps) ∩ [0,1]^d}(x_t + alpha * s(grad_x L)), with
    s = sign for Linf, g/||g||_2 for L2 and, for L1, the sparse step of Croce & Hein 2021 ("Mind the box",
    sec. 3; :meth:`advlab.attacks.norms.L1.ascent_step_`: alpha spread over the 1% of coordinates of largest
    |g|, each along sign(g)) followed by the exact projection onto the L1 ball ∩ box, from a uniform random
    start in the ball.

    With ``restarts > 1`` the attack restarts from new random points, only for the samples not yet broken
    (as AutoAttack does), and keeps per sample the best point over all restarts: a successful one, else the
    one of highest loss. Per-sample independence: the loss is summed (not averaged) over the batch and
    nothing stops the batch early, so each sample gets exactly what it would get alone, given the same
    per-sample ``seed`` (an int, used as seed + i for sample i, or an int64 tensor (N,) of per-sample seeds).

    ``alpha`` defaults to 2.5 * eps / steps (Madry et al.). Returns the best point met, not the last iterate.
    ``eot_samples`` as in :func:`advlab.attacks.fgsm` (EOT on a randomized model).
    """
    result = pgd_result(
        model, x, y, eps, alpha, steps, norm=norm, random_start=random_start, restarts=restarts,
        targeted=targeted, loss=loss, seed=seed, eot_samples=eot_samples,
    )
    return result if return_info else result.x_adv
