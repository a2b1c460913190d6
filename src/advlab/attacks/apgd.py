"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Algorithm 1): APGD-CE, APGD-DLR and the targeted APGD-T, Linf and L2.

APGD is PGD with momentum whose step size needs no tuning: it starts at eta = 2 * eps and is halved at fixed
checkpoints when the optimisation stalls, after which the iterate restarts from the best point found so far.
The DLR loss (eq. (5) and (6) of the paper) is invariant to shifting and scaling the logits, so it does not
saturate on over-confident models the way cross-entropy does.

Conventions shared with the attack core (:mod:`advlab.attacks.pgd`): the model runs frozen and is left as it
was; every sample is attacked independently of its batch (random starts from per-sample seeds, per-sample
step sizes and checkpoint decisions, no batch-mean losses); the result stays in the [0, 1] box and the eps-ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._core import (
    GEOMETRIES,
    NORMS,
    AttackResult,
    Forward,
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
    check_positive,
    check_steps,
    frozen,
    margin,
)
from .pgd import Best

APGD_LOSSES: tuple[str, ...] = ("ce", "dlr")
MOMENTUM = 0.75  # alpha of Algorithm 1: weight of the new gradient step against the previous update
_TINY = 1e-12  # the paper's guard against a zero DLR denominator

# How the labels are read: "untargeted" (y = true class, success = y left), "targeted" (y = target, success =
# target reached) and "toward" (APGD-T: y = true class, the loss pulls towards a second label, success = y left).
_MODES = ("untargeted", "targeted", "toward")


# ----------------------------------------------------------------------------------------------- losses


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio, eq. (5) of Croce & Hein 2020, with the sign that makes it grow as x breaks:

    DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12),

    where pi orders the logits decreasingly. Needs at least 3 classes.
    """
    top = logits.topk(3, dim=1).values
    return margin(logits, y) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR, eq. (6) of Croce & Hein 2020: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

    Grows as the target logit z_t overtakes the true logit z_y. Needs at least 4 classes.
    """
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


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
        return -margin(logits, y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)
    assert target is not None
    if loss == "ce":
        return -F.cross_entropy(logits, target, reduction="none")
    return targeted_dlr_loss(logits, y, target)


def _success(logits: Tensor, y: Tensor, mode: str) -> Tensor:
    pred = logits.argmax(dim=1)
    return pred == y if mode == "targeted" else pred != y


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


def _take(state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    return {k: v[keep] for k, v in state.items()}


def _apgd_run(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    start: Tensor,
    eps: Tensor,
    steps: int,
    geometry: Geometry,
    loss: str,
    mode: str,
    rho: float,
    y_max: int,
    stop_on_success: bool,
) -> tuple[Best, Tensor]:
    """One APGD run from ``start`` (Algorithm 1). Returns the per-sample best point and the loss trace.

    Each iteration is one forward, one input-gradient backward and a few in-place updates: no host syncs. The
    only syncs are at the checkpoints, where the step-size rule is applied and, with ``stop_on_success``,
    the samples already broken leave the batch, so that the cost falls as samples break. A sample's result does
    not depend on when others leave: its own trajectory is the same whatever the batch holds, and it leaves at
    the same (fixed) checkpoint whatever the batch.

    The trace (steps + 1, N) holds the objective of every iterate; NaN once a sample has left.
    """
    n = x.shape[0]
    trace = torch.full((steps + 1, n), float("nan"), dtype=x.dtype, device=x.device)
    best_all = Best(x)
    marks = set(checkpoints(steps))

    def evaluate(x_adv: Tensor, st: dict[str, Tensor], need_grad: bool, first: bool) -> tuple[Tensor, Tensor, Tensor]:
        if need_grad:
            x_adv = x_adv.detach().requires_grad_(True)
            logits = forward(x_adv)
        else:
            with torch.no_grad():
                logits = forward(x_adv)
        if first:
            check_logits(logits, x_adv.shape[0], y_max)
        obj = _objective(logits, st["y"], st.get("target"), loss, mode)
        grad = torch.autograd.grad(obj.sum(), x_adv)[0] if need_grad else torch.zeros_like(x_adv)
        return obj.detach(), grad, _success(logits.detach(), st["y"], mode)

    # Per-sample state of the samples still in the batch; ``idx`` maps them back to the run's batch.
    st: dict[str, Tensor] = {"idx": torch.arange(n, device=x.device), "x": x, "y": y, "eps": eps}
    if target is not None:
        st["target"] = target
    box = geometry.box(x, eps)
    if box is not None:
        st["lo"], st["hi"] = box

    x_cur = start.detach().clone()
    f_cur, grad, succ = evaluate(x_cur, st, steps > 0, True)
    trace[0] = f_cur
    best = Best(x_cur)
    best.update(x_cur, f_cur, succ)
    st.update(
        x_cur=x_cur,
        x_prev=x_cur.clone(),
        grad=grad,
        eta=2.0 * eps,  # eta^(0) = 2 eps, for Linf and L2 alike
        f_cur=f_cur,
        f_max=f_cur.clone(),
        x_max=x_cur.clone(),
        grad_max=grad.clone(),
        f_max_last=f_cur.clone(),
        reduced_last=torch.zeros(n, dtype=torch.bool, device=x.device),
        increases=torch.zeros(n, dtype=x.dtype, device=x.device),
        best_x=best.x,
        best_f=best.objective,
        best_s=best.success,
    )
    last_mark = 0

    def write_back(state: dict[str, Tensor]) -> None:
        i = state["idx"]
        best_all.x[i], best_all.objective[i], best_all.success[i] = state["best_x"], state["best_f"], state["best_s"]

    for k in range(steps):
        with torch.no_grad():
            a = 1.0 if k == 0 else MOMENTUM
            x_cur, x_prev = st["x_cur"], st["x_prev"]
            box_k = (st["lo"], st["hi"]) if "lo" in st else None
            # z^(k+1) = P_S(x^(k) + eta grad-step), x^(k+1) = P_S(x^(k) + a (z - x^(k)) + (1 - a)(x^(k) - x^(k-1)))
            z = x_cur + geometry.ascent_step_(st["grad"], st["eta"])
            geometry.project_(z, st["x"], st["eps"], box_k)
            x_new = z.sub_(x_cur).mul_(a).add_(x_cur)
            if k > 0:
                x_new.add_(x_cur - x_prev, alpha=1.0 - a)
            geometry.project_(x_new, st["x"], st["eps"], box_k)
        f_new, grad, succ = evaluate(x_new, st, k < steps - 1, False)
        with torch.no_grad():
            trace[k + 1, st["idx"]] = f_new
            st["increases"] += (f_new > st["f_cur"]).to(x.dtype)
            st["x_prev"], st["x_cur"], st["f_cur"], st["grad"] = x_cur, x_new, f_new, grad
            improved = f_new > st["f_max"]  # NaN never improves
            st["f_max"] = torch.where(improved, f_new, st["f_max"])
            st["x_max"] = torch.where(batch_view(improved, x_new), x_new, st["x_max"])
            st["grad_max"] = torch.where(batch_view(improved, grad), grad, st["grad_max"])
            b = Best.__new__(Best)
            b.x, b.objective, b.success = st["best_x"], st["best_f"], st["best_s"]
            b.update(x_new, f_new, succ)
            st["best_x"], st["best_f"], st["best_s"] = b.x, b.objective, b.success

        if k + 1 not in marks:
            continue
        with torch.no_grad():
            # Condition 1: fewer than rho of the steps since the last checkpoint increased the loss.
            cond1 = st["increases"] < rho * (k + 1 - last_mark)
            # Condition 2: the step was not reduced at the last checkpoint and the best loss has not improved.
            cond2 = ~st["reduced_last"] & (st["f_max"] <= st["f_max_last"])
            reduce = cond1 | cond2
            st["eta"] = torch.where(reduce, st["eta"] / 2, st["eta"])
            # Restart from the best point (and its gradient) where the step was halved.
            st["x_cur"] = torch.where(batch_view(reduce, x_new), st["x_max"], st["x_cur"])
            st["grad"] = torch.where(batch_view(reduce, x_new), st["grad_max"], st["grad"])
            st["reduced_last"], st["f_max_last"] = reduce, st["f_max"].clone()
            st["increases"] = torch.zeros_like(st["increases"])
            last_mark = k + 1
        if stop_on_success and k + 1 < steps:
            keep = ~st["best_s"]
            if not bool(keep.all()):  # the one host sync, at a checkpoint
                write_back(_take(st, ~keep))
                st = _take(st, keep)
                if st["idx"].numel() == 0:
                    break
    write_back(st)
    return best_all, trace


# ------------------------------------------------------------------------------------------- public API


def _prepare(
    model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, steps: int, norm: str, loss: str, rho: float
) -> tuple[Tensor, Tensor, int, Tensor, Geometry]:
    check_model(model)
    x = check_images(x)
    check_steps(steps)
    y, y_max = check_labels(y, x.shape[0], x.device)
    eps_t = check_eps(eps, x.shape[0], x, norm)
    geometry = GEOMETRIES[check_choice(norm, "norm", NORMS)]
    check_choice(loss, "loss", APGD_LOSSES)
    rho = check_positive(rho, "rho")
    if rho > 1:
        raise ValueError(f"rho must be in (0, 1] (a share of the steps), got {rho}")
    return x, y, y_max, eps_t, geometry


def _check_classes(num_classes: int, loss: str, mode: str) -> None:
    need = 4 if loss == "dlr" and mode != "untargeted" else 3 if loss == "dlr" else 2
    if num_classes < need:
        name = "targeted DLR" if need == 4 else "DLR"
        raise ValueError(
            f"the {name} loss needs a model with at least {need} classes, got {num_classes}; use loss='ce'"
        )


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
    """
    x, y, y_max, eps_t, geometry = _prepare(model, x, y, eps, steps, norm, loss, rho)
    restarts = check_steps(restarts, "restarts")
    mode = "targeted" if targeted else "untargeted"
    noise = Noise(seed, x.shape[0])
    best = Best(x)
    trace = None
    with frozen(model):
        forward = ModelCall(model, x, steps * restarts)
        if loss == "dlr":
            with torch.no_grad():
                probe = forward(x[:1])
            check_logits(probe, 1, y_max)
            _check_classes(probe.shape[1], loss, mode)
        index = torch.arange(x.shape[0], device=x.device)
        for r in range(restarts):
            if r > 0:
                index = (~best.success).nonzero().view(-1)
                if index.numel() == 0:
                    break
            xs, ys, es = x[index], y[index], eps_t[index]
            start = geometry.random_start(xs, es, noise.subset(index)) if random_start else xs
            run, run_trace = _apgd_run(
                forward, xs, ys, None, start, es, steps, geometry, loss, mode, rho, y_max, stop_on_success
            )
            best.merge(run, index)
            if trace is None:
                trace = run_trace
    if not return_info:
        return best.x
    assert trace is not None
    return AttackResult(best.x, best.success, best.objective, {"loss_trace": trace})


def apgd_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    loss: str = "dlr",
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    seed: int | Tensor | None = None,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """APGD-T, the targeted APGD of AutoAttack (Croce & Hein 2020, sec. 4): an untargeted attack that runs APGD
    on the targeted DLR loss (eq. (6)) towards each of the ``n_target_classes`` classes ranked 2nd, 3rd, ...
    by the model's clean logits, in that order, each run only on the samples not yet misclassified
    (``n_target_classes`` is capped at classes - 1, so AutoAttack's default of 9 also suits a 5-class model).

    ``y`` holds the true classes; success means any misclassification. Cost: up to
    ``n_target_classes * restarts * steps`` gradient steps for a sample that never breaks, fewer for the others
    (a broken sample leaves at the next checkpoint and is not attacked towards further targets). A sample
    misclassified from the start is returned unchanged. ``loss="ce"`` uses the targeted cross-entropy instead.

    Returns x_adv, or with ``return_info=True`` an :class:`AttackResult` whose ``loss`` is the untargeted DLR
    at x_adv and whose ``extras["target_rank"]`` (N,) gives the rank of the target class that broke each
    sample (0 if it was misclassified from the start, -1 if never broken).
    """
    x, y, y_max, eps_t, geometry = _prepare(model, x, y, eps, steps, norm, loss, rho)
    restarts = check_steps(restarts, "restarts")
    n_target_classes = check_steps(n_target_classes, "n_target_classes")
    n = x.shape[0]
    noise = Noise(seed, n)
    with frozen(model):
        forward = ModelCall(model, x, steps * restarts * n_target_classes)
        with torch.no_grad():
            logits = forward(x)
        check_logits(logits, n, y_max)
        classes = logits.shape[1]
        _check_classes(classes, loss, "toward")
        n_target_classes = min(n_target_classes, classes - 1)  # AutoAttack's 9 on a model of fewer classes
        order = logits.argsort(dim=1, descending=True)
        best = Best(x)
        # Samples misclassified from the start are done (x itself); the others keep -inf until a run scores them.
        best.update(x, torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device), logits.argmax(dim=1) != y)
        target_rank = torch.where(best.success, 0, -1)
        for rank in range(1, n_target_classes + 1):
            for _ in range(restarts):
                index = (~best.success).nonzero().view(-1)
                if index.numel() == 0:
                    break
                xs, ys, es = x[index], y[index], eps_t[index]
                start = geometry.random_start(xs, es, noise.subset(index)) if random_start else xs
                run, _ = _apgd_run(
                    forward, xs, ys, order[index, rank], start, es, steps, geometry, loss, "toward", rho, y_max, True
                )
                best.merge(run, index)
                target_rank[index] = torch.where(run.success, rank, target_rank[index])
        if not return_info:
            return best.x
        with torch.no_grad():
            final = dlr_loss(forward(best.x), y) if classes >= 3 else margin(forward(best.x), y)
    return AttackResult(best.x, best.success, final, {"target_rank": target_rank})
