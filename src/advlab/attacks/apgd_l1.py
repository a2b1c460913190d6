"""L1-APGD (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML
2021): APGD for the L1 threat model, with an adaptive sparse step and the exact projection onto the L1 ball
intersected with the [0, 1] box.

Why a separate engine: in L1 the steepest-ascent direction is a single coordinate, and a step along it soon
hits the box; moving along the k coordinates of largest |gradient| instead ("sparse step", sec. 3) makes
progress, and the right k depends on the sample, so it adapts to the sparsity of the best point found. The
step size follows that sparsity rather than the loss-oscillation rule of L2/Linf APGD (sec. 3.3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .apgd import APGD_LOSSES, _objective, check_classes
from .checks import check_steps, first_logits, frozen, validate
from .gradient import input_gradient
from .noise import Noise
from .norms import Ball, batch_view, get_norm
from .objectives import is_success
from .result import AttackResult
from .state import BestPoint

INITIAL_SPARSITY = 0.2  # k / d of the first sparse step (sec. 3.3: 20% of the coordinates)
STEP_DECAY = 1.5  # the step size is divided by this at a checkpoint where the sparsity did not fall
MIN_STEP = 10.0  # ... but not below eps / MIN_STEP
SPARSITY_MARGIN = 1.5  # the next k is the best point's number of changed coordinates / SPARSITY_MARGIN
SPARSITY_FALL = 0.95  # "the sparsity fell": ||x_best - x||_0 below 95% of its value at the last checkpoint
L0 = get_norm("l0")  # the sparsity's count: nonzero coordinates


def sparse_step(grad: Tensor, fraction: Tensor, size: Tensor) -> Tensor:
    """The sparse L1 step of size ``size`` (per sample): the coordinates whose |grad| is at least the
    (1 - fraction)-quantile of |grad|, each moved by size / (their number) along sign(grad)."""
    flat = grad.flatten(1)
    d = flat.shape[1]
    mag = flat.abs()
    rank = ((1 - fraction) * d).clamp(0, d - 1).long()
    threshold = mag.sort(dim=1).values.gather(1, rank[:, None])
    direction = flat.sign() * (mag >= threshold)
    count = direction.abs().sum(dim=1, keepdim=True)
    return (direction * (size[:, None] / (count + 1e-10))).view_as(grad)


def _run(
    model: nn.Module,
    ball: Ball,
    y: Tensor,
    start: Tensor,
    steps: int,
    loss: str,
    mode: str,
    warm: bool,
) -> tuple[Tensor, BestPoint]:
    """One L1-APGD run of ``steps`` iterations from ``start`` in ``ball``: (the point of highest loss, the
    best point by success then loss). ``warm``: ``start`` continues an earlier run, so the first sparsity is
    taken from it (the paper's warm start between the eps stages) instead of :data:`INITIAL_SPARSITY`."""
    x, eps = ball.x, ball.eps
    d = x[0].numel()

    def evaluate(point: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            p = point.detach().requires_grad_(True)
            logits = model(p)
            obj = _objective(logits, y, None, loss, mode)
            grad = input_gradient(obj.sum(), p)
        return obj.detach(), grad.detach(), is_success(logits.detach(), y, mode == "targeted")

    x_adv = start.detach().clone()
    obj, grad, succ = evaluate(x_adv)
    best = BestPoint.start(x)
    best.update(x_adv, obj, succ)
    x_top, obj_top, grad_top = x_adv.clone(), obj.clone(), grad.clone()
    if warm:
        sparsity_old = L0.size(x_adv - x)
        fraction = sparsity_old / d / SPARSITY_MARGIN
    else:
        sparsity_old = torch.full_like(eps, float(d))
        fraction = torch.full_like(eps, INITIAL_SPARSITY)
    size = eps.clone()  # alpha = 1: the first step is the whole budget
    every = max(int(0.04 * steps), 1)  # checkpoints every 4% of the iterations
    for i in range(steps):
        with torch.no_grad():
            x_adv = ball.project_(x_adv + sparse_step(grad, fraction, size))
        obj, grad, succ = evaluate(x_adv)
        with torch.no_grad():
            best.update(x_adv, obj, succ)
            up = obj > obj_top
            x_top = torch.where(batch_view(up, x_adv), x_adv, x_top)
            grad_top = torch.where(batch_view(up, grad), grad, grad_top)
            obj_top = torch.where(up, obj, obj_top)
            if (i + 1) % every == 0:
                sparsity = L0.size(x_top - x)
                fell = sparsity / sparsity_old.clamp_min(1) < SPARSITY_FALL
                fraction = sparsity / d / SPARSITY_MARGIN
                size = torch.where(fell, eps, size / STEP_DECAY).clamp(min=eps / MIN_STEP, max=eps)
                sparsity_old = sparsity
                x_adv = torch.where(batch_view(fell, x_adv), x_top, x_adv)
                grad = torch.where(batch_view(fell, grad), grad_top, grad)
    return x_top, best


def _stages(steps: int, large_eps: bool) -> list[tuple[float, int]]:
    """(eps multiplier, iterations) per stage: 3 eps, 2 eps, eps over 30%, 30%, 40% of the iterations
    (AutoAttack's L1 schedule), or eps alone (``large_eps=False`` or fewer than 3 steps)."""
    if not large_eps or steps < 3:
        return [(1.0, steps)]
    first = math.ceil(0.3 * steps)
    last = steps - 2 * first
    if last < 1:
        return [(1.0, steps)]
    return [(3.0, first), (2.0, first), (1.0, last)]


def apgd_l1_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    steps: int = 100,
    loss: str = "ce",
    targeted: bool = False,
    restarts: int = 1,
    large_eps: bool = True,
    seed: int | Tensor | None = None,
) -> AttackResult:
    """:func:`apgd_l1`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, eps=eps, norm="l1", norms=("l1",), loss=loss, losses=APGD_LOSSES, steps=steps)
    assert inp.eps is not None and inp.norm is not None
    restarts = check_steps(restarts, "restarts")
    mode = "targeted" if targeted else "untargeted"
    noise = Noise(seed, inp.n)
    best = BestPoint.start(inp.x)
    stages = _stages(steps, large_eps)
    with frozen(model):
        with torch.no_grad():  # the model's output and the labels checked once, on one sample, before any work
            classes = first_logits(model, inp.x[:1], inp.y_max).shape[1]
        if loss == "dlr":
            check_classes(classes, loss, mode)
        index = torch.arange(inp.n, device=inp.x.device)
        for r in range(restarts):
            if r > 0:
                index = best.standing()
                if index.numel() == 0:
                    break
            x_sub, eps_sub, y_sub = inp.x[index], inp.eps[index], inp.y[index]
            # A Gaussian point projected onto the first stage's ball ∩ box (the reference's random start).
            point = x_sub + noise.take(index).normal(x_sub)
            point = inp.norm.ball(x_sub, eps_sub * stages[0][0]).project_(point)
            run_best = None
            for k, (scale, n_iter) in enumerate(stages):
                ball = inp.norm.ball(x_sub, eps_sub * scale)
                point, run_best = _run(model, ball, y_sub, ball.project_(point), n_iter, loss, mode, warm=k > 0)
            assert run_best is not None  # only the last stage's points are inside the eps-ball
            best.merge(run_best, index)
    return AttackResult(best.x, best.success, best.objective)


def apgd_l1(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    steps: int = 100,
    loss: str = "ce",
    targeted: bool = False,
    restarts: int = 1,
    large_eps: bool = True,
    seed: int | Tensor | None = None,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """L1-APGD, Croce & Hein 2021 ("Mind the box", sec. 3), on the cross-entropy ("ce") or DLR loss ("dlr").

    From a random start (a Gaussian point projected onto the ball), each iteration takes the sparse step
    x <- P(x + eta * s), s spreading a unit L1 step over the coordinates of largest |gradient| (the top k / d
    of them, :func:`sparse_step`), P the exact projection onto {||z - x||_1 <= eps} ∩ [0, 1]^d. eta starts at
    eps and k / d at 0.2. Every 4% of the iterations, with x_best the point of highest loss so far: k / d =
    ||x_best - x||_0 / (1.5 d); where that count fell below 95% of its value at the last checkpoint, eta is
    reset to eps and the iterate restarts from x_best, elsewhere eta is divided by 1.5 (not below eps / 10).
    With ``large_eps`` (AutoAttack's L1 setting) the iterations run 30% at 3 eps, 30% at 2 eps and 40% at
    eps, each stage starting from the previous one's highest-loss point projected onto its ball; only the last
    stage's points can be returned.

    ``restarts > 1`` restarts from new random points, only for the samples not yet broken. ``targeted=True``
    reads ``y`` as the targets. ``seed`` (an int, seed + i for sample i, or an int64 tensor (N,)) fixes each
    sample's starts; every sample's run is its own (the loss is summed over the batch, no batch statistics).
    Returns the best point met (a successful one, else the one of highest loss), or with ``return_info=True``
    the :class:`AttackResult` whose ``loss`` is the objective there.
    """
    result = apgd_l1_result(
        model, x, y, eps, steps=steps, loss=loss, targeted=targeted, restarts=restarts, large_eps=large_eps,
        seed=seed,
    )
    return result if return_info else result.x_adv
