"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Algorithm 1): APGD-CE, APGD-DLR and the targeted APGD-T, Linf and L2.

APGD is PGD with momentum whose step size needs no tuning: it starts at eta = 2 * eps and is halved at fixed
checkpoints when the optimisation stalls, after which the iterate restarts from the best point found so far.
The DLR loss (eq. (5) and (6) of the paper) is invariant to shifting and scaling the logits, so it does not
saturate on over-confident models the way cross-entropy does.

APGD-T, which runs this engine towards one target class after another, is :mod:`advlab.attacks.apgd_t`.

Conventions shared with the attack core (:mod:`advlab.attacks.pgd`): the model runs frozen and is left as it
was; every sample is attacked independently of its batch (random starts from per-sample seeds, per-sample
step sizes and checkpoint decisions, no batch-mean losses); the result stays in the [0, 1] box and the eps-ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import Inputs, check_positive, check_steps, first_logits, frozen, validate
from .eot import Expected
from .noise import Noise
from .norms import Ball, batch_view
from .objectives import DLR_TINY, dlr_loss, margin, targeted_dlr_loss
from .result import AttackResult
from .state import BestPoint, PerSample

APGD_LOSSES: tuple[str, ...] = ("ce", "dlr")
MOMENTUM = 0.75  # alpha of Algorithm 1: weight of the new gradient step against the previous update

# How the labels are read: "untargeted" (y = true class, success = y left), "targeted" (y = target, success =
# target reached) and "toward" (APGD-T: y = true class, the loss pulls towards a second label, success = y left).
_MODES = ("untargeted", "targeted", "toward")


# ----------------------------------------------------------------------------------------------- losses


def _objective(logits: Tensor, y: Tensor, target: Tensor | None, loss: str, mode: str) -> Tensor:
    """Per-sample value APGD ascends (no batch mean, so a sample's gradient depends on that sample alone)."""
    if mode == "untargeted":
        return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else dlr_loss(logits, y)
    if mode == "targeted":
        # y holds the targets. The targeted DLR needs a class to overtake; with no true label given, that is
        # the strongest other class, which is the true class whenever the model is right.
        if loss == "ce":
            return -F.cross_entropy(logits, y, reduction="none")
        top = logits.topk(4, dim=1).values
        return -margin(logits, y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_TINY)
    assert target is not None
    if loss == "ce":
        return -F.cross_entropy(logits, target, reduction="none")
    return targeted_dlr_loss(logits, y, target)


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * N_iter) at which APGD may halve its step (Croce & Hein 2020, sec. 3.2).

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). The p_j are multiples of 0.01, so
    they are kept in integer hundredths and the ceiling is exact (0.41 * 100 must give 41, not 42).
    """
    steps = check_steps(steps)
    out: list[int] = []
    previous, p = 0, 22
    while p <= 100:
        w = -(-p * steps // 100)
        if 0 < w <= steps and (not out or w > out[-1]):
            out.append(w)
        previous, p = p, p + max(p - previous - 3, 6)
    return out


# ------------------------------------------------------------------------------------------- the engine


def apgd_run(
    model: nn.Module,
    ball: Ball,
    y: Tensor,
    target: Tensor | None,
    start: Tensor,
    steps: int,
    loss: str,
    mode: str,
    rho: float,
    y_max: int,
    stop_on_success: bool,
    eot_samples: int = 1,
) -> tuple[BestPoint, Tensor]:
    """One APGD run from ``start`` (Algorithm 1). Returns the per-sample best point and the loss trace.

    Each iteration is one forward, one input-gradient backward and a few in-place updates: no host syncs. The
    only syncs are at the checkpoints, where the step-size rule is applied and, with ``stop_on_success``,
    the samples already broken leave the batch, so that the cost falls as samples break. With K > 1 draws a
    break counts only once fresh draws confirm it (:meth:`~advlab.attacks.eot.Expected.confirm`), at the
    checkpoints and at the end. A sample's result does not depend on when others leave: its own trajectory is
    the same whatever the batch holds, and it leaves at the same (fixed) checkpoint whatever the batch.

    The trace (steps + 1, N) holds the objective of every iterate; NaN once a sample has left. With
    ``eot_samples=K`` every gradient is the mean of K draws and every objective, success test and step-size
    decision reads the expected prediction of those draws (:class:`~advlab.attacks.eot.Expected`).
    """
    x = ball.x
    n = x.shape[0]
    trace = torch.full((steps + 1, n), float("nan"), dtype=x.dtype, device=x.device)
    best_all = BestPoint.start(x)
    marks = set(checkpoints(steps))
    labels = PerSample(y=y) if target is None else PerSample(y=y, target=target)

    view = Expected(model, eot_samples, y_max)
    targeted = mode == "targeted"

    def evaluate(x_adv: Tensor, lab: PerSample, need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        def f(logits: Tensor) -> Tensor:
            # In x's dtype: a model that autocasts returns half logits, whose objective would neither fit the
            # state below nor resolve the differences the step-size rule compares (a no-op otherwise).
            return _objective(logits.to(x.dtype), lab.y, lab.target if target is not None else None, loss, mode)

        if need_grad:
            logits, obj, grad = view.value_and_grad(x_adv, f)
        else:
            (logits, obj), grad = view.value(x_adv, f), torch.zeros_like(x_adv)
        return obj, grad, view.success(logits, lab.y, targeted)

    def confirm_claims(best: BestPoint, confirmed: Tensor, lab: PerSample, st: PerSample) -> Tensor:
        """With K > 1 draws, test the newly claimed breaks again on fresh draws (Expected.confirm): a claim they
        do not resolve is withdrawn, so the sample stays in the batch, and its best point becomes the run's best
        iterate where that scored higher (while the claim stood, success outranked any objective, so a better
        unbroken iterate could not replace it). Returns the confirmed breaks."""
        claimed = best.success & ~confirmed
        fresh = view.confirm(best.x, claimed, lab.y, targeted)
        back = claimed & ~fresh & (st.f_max > best.objective)
        best.x = torch.where(batch_view(back, best.x), st.x_max, best.x)
        best.objective = torch.where(back, st.f_max, best.objective)
        best.success = fresh | (best.success & confirmed)
        return best.success  # never changed in place (BestPoint.update assigns a new tensor)

    x_cur = start.detach().clone()
    f_cur, grad, succ = evaluate(x_cur, labels, steps > 0)
    trace[0] = f_cur
    best = BestPoint.start(x_cur)
    best.update(x_cur, f_cur, succ)
    confirmed = torch.zeros_like(best.success)  # per sample: whether its best point's break is confirmed
    # Per-sample state of the samples still in the batch; ``idx`` maps them back to the run's batch.
    st = PerSample(
        idx=torch.arange(n, device=x.device),
        x_cur=x_cur,
        x_prev=x_cur.clone(),
        grad=grad,
        eta=2.0 * ball.eps,  # eta^(0) = 2 eps, for Linf and L2 alike
        f_cur=f_cur,
        f_max=f_cur.clone(),
        x_max=x_cur.clone(),
        grad_max=grad.clone(),
        f_max_last=f_cur.clone(),
        reduced_last=torch.zeros(n, dtype=torch.bool, device=x.device),
        increases=torch.zeros(n, dtype=x.dtype, device=x.device),
    )
    last_mark = 0
    for k in range(steps):
        with torch.no_grad():
            a = 1.0 if k == 0 else MOMENTUM
            x_cur, x_prev = st.x_cur, st.x_prev
            # z^(k+1) = P_S(x^(k) + eta grad-step), x^(k+1) = P_S(x^(k) + a (z - x^(k)) + (1 - a)(x^(k) - x^(k-1)))
            z = x_cur + ball.norm.ascent_step_(st.grad, st.eta)
            ball.project_(z)
            x_new = z.sub_(x_cur).mul_(a).add_(x_cur)
            if k > 0:
                x_new.add_(x_cur - x_prev, alpha=1.0 - a)
            ball.project_(x_new)
        f_new, grad, succ = evaluate(x_new, labels, k < steps - 1)
        with torch.no_grad():
            trace[k + 1, st.idx] = f_new
            st.increases += (f_new > st.f_cur).to(x.dtype)
            st.x_prev, st.x_cur, st.f_cur, st.grad = x_cur, x_new, f_new, grad
            improved = f_new > st.f_max  # NaN never improves
            st.f_max = torch.where(improved, f_new, st.f_max)
            st.x_max = torch.where(batch_view(improved, x_new), x_new, st.x_max)
            st.grad_max = torch.where(batch_view(improved, grad), grad, st.grad_max)
            # A confirmed break is final: its objective -inf here, so no later iterate replaces it (one that
            # looked better would be an unconfirmed claim).
            best.update(x_new, f_new if eot_samples == 1 else torch.where(confirmed, float("-inf"), f_new), succ)

        if k + 1 not in marks:
            continue
        with torch.no_grad():
            # Condition 1: fewer than rho of the steps since the last checkpoint increased the loss.
            cond1 = st.increases < rho * (k + 1 - last_mark)
            # Condition 2: the step was not reduced at the last checkpoint and the best loss has not improved.
            cond2 = ~st.reduced_last & (st.f_max <= st.f_max_last)
            reduce = cond1 | cond2
            st.eta = torch.where(reduce, st.eta / 2, st.eta)
            # Restart from the best point (and its gradient) where the step was halved.
            st.x_cur = torch.where(batch_view(reduce, x_new), st.x_max, st.x_cur)
            st.grad = torch.where(batch_view(reduce, x_new), st.grad_max, st.grad)
            st.reduced_last, st.f_max_last = reduce, st.f_max.clone()
            st.increases = torch.zeros_like(st.increases)
            last_mark = k + 1
        if eot_samples > 1:
            confirmed = confirm_claims(best, confirmed, labels, st)
        if stop_on_success and k + 1 < steps:
            keep = ~best.success
            if not bool(keep.all()):  # the one host sync, at a checkpoint
                best_all.put(st.idx[~keep], best.take(~keep))
                st, best, ball, labels = st.take(keep), best.take(keep), ball.take(keep), labels.take(keep)
                confirmed = confirmed[keep]
                if st.idx.numel() == 0:
                    break
    if eot_samples > 1:
        confirm_claims(best, confirmed, labels, st)
    best_all.put(st.idx, best)
    return best_all, trace


# ------------------------------------------------------------------------------------------- public API


def validate_apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    steps: int,
    norm: str,
    loss: str,
    rho: float,
    eot_samples: int,
) -> Inputs:
    """:func:`~advlab.attacks.checks.validate` for APGD's arguments, and ``rho`` in (0, 1]."""
    inp = validate(
        model, x, y, eps=eps, norm=norm, loss=loss, losses=APGD_LOSSES, steps=steps, eot_samples=eot_samples
    )
    rho = check_positive(rho, "rho")
    if rho > 1:
        raise ValueError(f"rho must be in (0, 1] (a share of the steps), got {rho}")
    return inp


def check_classes(num_classes: int, loss: str, mode: str) -> None:
    """The DLR loss needs 3 classes, its targeted form 4 (eq. (5) and (6) of Croce & Hein 2020)."""
    need = 4 if loss == "dlr" and mode != "untargeted" else 3 if loss == "dlr" else 2
    if num_classes < need:
        name = "targeted DLR" if need == 4 else "DLR"
        raise ValueError(
            f"the {name} loss needs a model with at least {need} classes, got {num_classes}; use loss='ce'"
        )


def apgd_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    loss: str = "ce",
    targeted: bool = False,
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    stop_on_success: bool = True,
    seed: int | Tensor | None = None,
    eot_samples: int = 1,
) -> AttackResult:
    """:func:`apgd`, always returning the :class:`AttackResult`."""
    inp = validate_apgd(model, x, y, eps, steps, norm, loss, rho, eot_samples)
    assert inp.eps is not None and inp.norm is not None
    restarts = check_steps(restarts, "restarts")
    mode = "targeted" if targeted else "untargeted"
    noise = Noise(seed, inp.n)
    ball = inp.norm.ball(inp.x, inp.eps)
    best = BestPoint.start(inp.x)
    trace = None
    with frozen(model):
        if loss == "dlr":
            with torch.no_grad():
                probe = first_logits(model, inp.x[:1], inp.y_max)
            check_classes(probe.shape[1], loss, mode)
        index = torch.arange(inp.n, device=inp.x.device)
        for r in range(restarts):
            if r > 0:
                index = best.standing()
                if index.numel() == 0:
                    break
            sub = ball.take(index)
            start = sub.random_start(noise.take(index)) if random_start else sub.x
            run, run_trace = apgd_run(
                model, sub, inp.y[index], None, start, steps, loss, mode, rho, inp.y_max, stop_on_success,
                eot_samples,
            )
            best.merge(run, index)
            if trace is None:
                trace = run_trace
    assert trace is not None
    return AttackResult(best.x, best.success, best.objective, {"loss_trace": trace})


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    loss: str = "ce",
    targeted: bool = False,
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    stop_on_success: bool = True,
    seed: int | Tensor | None = None,
    eot_samples: int = 1,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Auto-PGD, Algorithm 1 of Croce & Hein 2020, on the cross-entropy ("ce", APGD-CE) or DLR loss ("dlr").

    From x^(0) (a random point of the ball), with eta = 2 eps and a = 0.75:
      z^(k+1) = P_S(x^(k) + eta * s(grad f(x^(k)))),   s = sign (Linf) or g / ||g||_2 (L2)
      x^(k+1) = P_S(x^(k) + a (z^(k+1) - x^(k)) + (1 - a)(x^(k) - x^(k-1)))    (a = 1 at the first step)
    with S the eps-ball intersected with [0, 1]^d. At each checkpoint w_j (see :func:`checkpoints`) a sample's
    step is halved, and its iterate restarts from its best point, when (1) fewer than ``rho`` of its steps since
    the last checkpoint increased the loss, or (2) its step was not halved at the last checkpoint and its best
    loss has not improved since.

    ``restarts > 1`` restarts from new random points, only for the samples not yet broken. With
    ``stop_on_success`` (default) a broken sample leaves the batch at the next checkpoint, which is what makes
    the attack cheap on models that break easily; it changes no sample's result but the returned adversarial
    point (the best one met before leaving). With ``targeted=True``, ``y`` holds the targets; the targeted DLR
    then overtakes the strongest non-target class.

    Per-sample independence: ``seed`` (an int, used as seed + i for sample i, or an int64 tensor (N,)) fixes
    each sample's random starts; steps, checkpoints and early exits are decided per sample.

    Returns x_adv, or with ``return_info=True`` an :class:`AttackResult` whose ``loss`` is the objective at
    x_adv and whose ``extras["loss_trace"]`` (steps + 1, N) holds the objective of every iterate of the first
    run (NaN after a sample left), for checks that the loss rises.

    ``eot_samples=K`` runs APGD on the model's expectation (EOT, Athalye et al. 2018): each gradient is the mean
    of K draws of the model's randomness, and the losses behind the step-size rule, the success test and the
    best point read the mean softmax of the same K draws (:mod:`advlab.attacks.eot`), and a break counts only
    where the K draws resolve it and fresh draws confirm it (:meth:`~advlab.attacks.eot.Expected.confirm`). 1 is
    the plain attack.
    """
    result = apgd_result(
        model, x, y, eps, norm=norm, steps=steps, loss=loss, targeted=targeted, restarts=restarts, rho=rho,
        random_start=random_start, stop_on_success=stop_on_success, seed=seed, eot_samples=eot_samples,
    )
    return result if return_info else result.x_adv
