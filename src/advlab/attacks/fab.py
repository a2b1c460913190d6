"""Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive
Boundary Attack", ICML 2020): the smallest perturbation in Linf, L2 or L1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_positive, check_steps, first_logits, frozen, validate
from .gradient import input_gradient
from .hyperplane import hyperplane_box_step
from .noise import Noise
from .norms import ALL_NORM_NAMES, Norm, batch_view, get_norm
from .objectives import ROUNDING_SLACK, is_success, objective, rounding_slack
from .result import AttackResult
from .state import SmallestPoint

FAB_NORMS: tuple[str, ...] = ("linf", "l2", "l1")
# Where settle aims a point short of the rounding slack: this multiple of the slack past the boundary (a little
# past it, so that one step usually clears it without moving the point further than that).
SETTLE_TARGET = 1.1
# The floor of each projection's size in FAB's bias alpha, as in the authors' PyTorch code (AutoAttack's FAB):
# alpha = size_i / (size_i + size_o) stays defined where both steps are zero. (An iterate exactly on a tie of
# two logits, f = 0, has a zero step of its own: the step aims past the tie instead, :func:`tie_push`.)
SIZE_FLOOR = 1e-8


def fab_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
    targeted: bool = False,
    restarts: int = 1,
    seed: int | Tensor | None = None,
) -> AttackResult:
    """:func:`fab`, always returning the :class:`AttackResult`."""
    return fab_run(
        model, x, y, norm=norm, steps=steps, eta=eta, beta=beta, alpha_max=alpha_max, targeted=targeted,
        restarts=restarts, seed=seed,
    )  # fmt: skip


def fab_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    steps: int,
    eta: float,
    beta: float,
    alpha_max: float,
    targeted: bool,
    restarts: int = 1,
    seed: int | Tensor | None = None,
    label: Tensor | None = None,
) -> AttackResult:
    """:func:`fab_result` with FAB-T's ``label`` (see :func:`_run`): the true labels, ``y`` then the targets."""
    if norm not in FAB_NORMS:
        raise ValueError(f"fab: unknown norm {norm!r}; expected one of {', '.join(map(repr, FAB_NORMS))}")
    inp = validate(model, x, y, norm=norm, norms=ALL_NORM_NAMES, steps=steps)
    x, y, y_max = inp.x, inp.y, inp.y_max
    geometry = get_norm(norm)
    eta = check_positive(eta, "eta")
    beta = check_positive(beta, "beta")
    alpha_max = check_positive(alpha_max, "alpha_max")
    if beta > 1 or alpha_max > 1:
        raise ValueError(f"beta and alpha_max must be in (0, 1], got {beta}, {alpha_max}")
    restarts = check_steps(restarts, "restarts")
    noise = Noise(seed, x.shape[0])
    with frozen(model):
        best = _run(model, x, y, y_max, x, norm, steps, eta, beta, alpha_max, targeted, label)
        for _ in range(restarts - 1):
            # The paper's restarts: from a random point at half the best distance found (samples with none: no
            # restart, their run from x would repeat itself).
            index = torch.isfinite(best.size).nonzero().view(-1)
            if index.numel() == 0:
                break
            sub_x = x[index]
            start = restart_point(sub_x, best.size[index] / 2, norm, noise.take(index))
            sub_label = None if label is None else label[index]
            run = _run(model, sub_x, y[index], y_max, start, norm, steps, eta, beta, alpha_max, targeted, sub_label)
            merged = best.take(index)
            merged.update(run.x, torch.isfinite(run.size), run.size)
            best.put(index, merged)
        settle(model, x, *success_labels(y, targeted, label), best, norm)
    return best.result(x, geometry)


def success_labels(y: Tensor, targeted: bool, label: Tensor | None) -> tuple[Tensor, bool]:
    """The labels and mode a FAB point is judged by: FAB-T's true ``label`` untargeted (any misclassification
    counts), else ``y`` as given."""
    return (label, False) if label is not None else (y, targeted)


@torch.no_grad()
def settle(
    model: nn.Module, x: Tensor, labels: Tensor, targeted: bool, best: SmallestPoint, norm: str, tries: int = 8
) -> None:
    """Make every point of ``best`` adversarial on a fresh forward pass, past the boundary by the rounding slack.

    FAB aims at the linearised boundary f = 0 and counts a point once the model's top-1 has changed (Croce &
    Hein 2020, Algorithm 1), so its smallest point often lies just past the boundary, where the float rounding
    of another forward pass (another batch, layout or thread count) can flip it back. Each found point is
    re-evaluated in a batch of its own (the found ones); where its margin m does not clear ``rounding_slack`` s,
    it takes FAB's own step once more, from itself: the smallest d in the norm, within the box, with
    <grad m, d> = SETTLE_TARGET s - m (:func:`hyperplane_box_step`), with a fresh forward and backward (of those
    rows only) before each, until a forward pass finds it past the slack (at most ``tries``). The step is of
    order s / ||grad m||_q, a small fraction of the distance (docs/benchmarks.md, minimal_norm.py, measures it).
    A single step aimed further does not do: FAB-L1's step moves one pixel, whose gradient
    often holds for a small move only (max-pooling), and moving out along the ray from x stalls at the box. A
    point still short after ``tries`` counts as not broken (x returned, distance inf), as does x itself where
    it was recorded (misclassified from the start) but the fresh margin is not positive.
    """
    found = torch.isfinite(best.size).nonzero().view(-1)
    if found.numel() == 0:
        return
    z = model(best.x[found])
    m, slack = objective(z, labels[found], "margin", targeted), rounding_slack(z)
    at_x = best.size[found] == 0
    short = ~((m > slack) | (at_x & (m > 0)))
    best.size[found[short & at_x]] = float("inf")  # x itself, not misclassified on this pass
    rows = found[short & ~at_x]
    if rows.numel() == 0:
        return
    p, x0, lab = best.x[rows], x[rows], labels[rows]
    n = p.shape[0]
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(tries):
        with torch.enable_grad():
            q = p.clone().requires_grad_(True)
            zq = model(q)
            mq = objective(zq, lab, "margin", targeted)
            w = input_gradient(mq.sum(), q)
        slack = rounding_slack(zq)
        done |= mq.detach() > slack
        if bool(done.all()):
            break
        d = hyperplane_box_step(p.reshape(n, -1), w.reshape(n, -1), SETTLE_TARGET * slack - mq.detach(), norm)
        p = torch.where(batch_view(done, p), p, (p + d.view_as(p)).clamp_(0, 1))
    size = get_norm(norm).size(p - x0)
    best.size[rows] = torch.where(done, size, torch.full_like(size, float("inf")))
    best.x[rows] = torch.where(batch_view(done, p), p, x0)


def restart_point(x: Tensor, radius: Tensor, norm: str, noise: Noise) -> Tensor:
    """x plus a random perturbation of size ``radius`` (per sample) in ``norm``, clipped to the box: uniform
    in [-1, 1] scaled to Linf size radius (Linf), a Gaussian scaled to L2 / L1 size radius (L2, L1), as in
    Croce & Hein 2020's restarts."""
    t = noise.uniform(x).mul_(2).sub_(1) if norm == "linf" else noise.normal(x)
    size = get_norm(norm).size(t).clamp_min(1e-12)
    return (x + t * batch_view(radius / size, x)).clamp_(0, 1)


def _run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_max: int,
    start: Tensor,
    norm: str,
    steps: int,
    eta: float,
    beta: float,
    alpha_max: float,
    targeted: bool,
    label: Tensor | None = None,
) -> SmallestPoint:
    """One FAB run of ``steps`` steps from ``start``: the smallest adversarial point met per sample.

    ``label`` (targeted runs only) makes the run FAB-T's (Croce & Hein 2020, AutoAttack): ``y`` holds the
    targets, the boundary linearised is target against the true label (f = z_t - z_label), and any point the
    model misclassifies counts, not only one classified as the target.
    """
    geometry = get_norm(norm)
    n = x.shape[0]
    flat_x = x.reshape(n, -1)

    best = SmallestPoint.start(x)
    judged, judged_targeted = success_labels(y, targeted, label)

    def score(logits: Tensor, point: Tensor) -> Tensor:
        # Past the boundary as the paper counts it, the model's top-1 changed (FAB-T: whichever class it lands
        # in); the returned point is made to clear the rounding slack on a fresh forward pass at the end (settle).
        adversarial = is_success(logits.detach(), judged, judged_targeted)
        best.update(point, adversarial, geometry.size(point - x))
        return adversarial

    x_i = start.clone()
    # The caller holds the model frozen.
    for i in range(steps):
        x_i.requires_grad_(True)
        z = first_logits(model, x_i, y_max) if i == 0 else model(x_i)
        with torch.no_grad():
            if i == 0:
                score(z, x_i.detach())
            others = z.detach().scatter(1, y[:, None], float("-inf"))
        if targeted:
            # The target against the true label (FAB-T) or else the strongest other class: one linearised
            # boundary, one gradient.
            rival = label if label is not None else others.argmax(dim=1)
            f = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, rival[:, None]).squeeze(1)
            w = input_gradient(f.sum(), x_i)
            w, f = w.reshape(n, -1), f.detach()
        else:
            w, f = nearest_boundary(z, x_i, y, geometry)
        with torch.no_grad():
            xi = x_i.detach().reshape(n, -1)
            # Projections onto the linearised boundary f = 0 (within the box) from the iterate and from x. An
            # iterate on a tie (f = 0 exactly: routine with half-precision logits) would project onto itself, a
            # zero step that the extrapolation eta cannot lengthen; it aims a little past the tie (tie_push).
            aim = torch.where(f == 0, tie_push(z), -f)
            d_i = hyperplane_box_step(xi, w, aim, norm)
            d_o = hyperplane_box_step(flat_x, w, aim - (w * (flat_x - xi)).sum(dim=1), norm)
            size_i, size_o = geometry.size(d_i).clamp_min(SIZE_FLOOR), geometry.size(d_o).clamp_min(SIZE_FLOOR)
            alpha = (size_i / (size_i + size_o)).clamp(max=alpha_max)[:, None]
            x_next = ((1 - alpha) * (xi + eta * d_i) + alpha * (flat_x + eta * d_o)).clamp_(0, 1).view_as(x)
            z_next = model(x_next)
            adversarial = score(z_next, x_next)
            # Past the boundary: record it, then step back towards x (FAB's backward step), written as
            # x + beta (x_next - x) so that the coordinates FAB left alone stay exactly x's ((1 - beta) x + beta
            # x_next rounds them off x, and FAB-L1's sparse iterates then follow another path).
            x_i = torch.where(batch_view(adversarial, x), x + beta * (x_next - x), x_next)

    return best


def tie_push(z: Tensor) -> Tensor:
    """Per sample, how far past a tie of two logits FAB aims: as far as settle would push a point found there
    (``SETTLE_TARGET`` times the rounding slack), and at least one resolution of ``z``'s dtype at its magnitude
    (machine epsilon times the largest |logit|: half-precision logits resolve less than the slack)."""
    factor = max(SETTLE_TARGET * ROUNDING_SLACK, torch.finfo(z.dtype).eps)  # a Python float: one reduction
    return (z.detach().abs().amax(dim=1) * factor).to(torch.promote_types(z.dtype, torch.float32))


def nearest_boundary(z: Tensor, x_i: Tensor, y: Tensor, geometry: Norm) -> tuple[Tensor, Tensor]:
    """FAB's choice of boundary (Croce & Hein 2020, eq. (6)): among the classes j != y, the f_j = z_j - z_y
    whose linearisation at x_i is nearest in the norm, argmin_j |f_j| / ||grad f_j||_q (q the dual norm, the
    first j on ties); its flat gradient (N, n) and value (N,).

    Each grad f_j is one backward of z_j - z_y (K - 1 of them: the graph of the forward pass ``z = model(x_i)``
    is kept until the last), and only the nearest so far is kept, so memory stays that of one gradient.
    """
    n, classes = z.shape
    z_y = z.gather(1, y[:, None]).squeeze(1)
    best_w = torch.zeros_like(x_i).reshape(n, -1)
    best_f = torch.zeros_like(z_y).detach()
    best_dist = torch.full_like(best_f, float("inf"))
    for c in range(classes - 1):
        j = c + (c >= y).long()  # the c-th class other than y, per row
        f = z.gather(1, j[:, None]).squeeze(1) - z_y
        g = input_gradient(f.sum(), x_i, retain_graph=c < classes - 2)
        with torch.no_grad():
            g = g.reshape(n, -1)
            dist = f.detach().abs() / geometry.dual_size(g).clamp_min(1e-12)
            nearer = dist < best_dist
            best_dist = torch.where(nearer, dist, best_dist)
            best_f = torch.where(nearer, f.detach(), best_f)
            best_w = torch.where(nearer[:, None], g, best_w)
    return best_w, best_f


def fab(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
    targeted: bool = False,
    restarts: int = 1,
    seed: int | Tensor | None = None,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Fast Adaptive Boundary attack, Algorithm 1 of Croce & Hein 2020, in ``norm`` "linf", "l2" or "l1".

    At the iterate x_i, every class j != y gives a linearised decision boundary pi_j = {z: f_j(x_i) +
    <grad f_j(x_i), z - x_i> = 0} with f_j = Z_j - Z_y; FAB picks the nearest, s = argmin_j |f_j| /
    ||grad f_j||_q (q the dual norm), and projects both x_i and the original x onto pi_s intersected with the
    [0, 1] box (:func:`hyperplane_box_step`, exact in each norm). It then moves to

      x_{i+1} = clip((1 - a)(x_i + eta d_i) + a (x + eta d_x)),   a = min(||d_i|| / (||d_i|| + ||d_x||), alpha_max),

    (the extrapolation eta pushes past the boundary, the bias a towards x's own projection keeps the point
    close to x; both sizes floored at 1e-8 as in AutoAttack's FAB), and where x_{i+1} is adversarial it is
    recorded and the next iterate steps back, x_{i+1} <- x + beta (x_{i+1} - x) (the backward step). The
    smallest adversarial point met is returned. Each step costs one forward with one backward per class other
    than y (:func:`nearest_boundary`) and one forward to check x_{i+1}.

    ``targeted=True`` reads y as targets and linearises the margin of the target against the strongest other
    class at x_i (one backward per step), the boundary FAB-T crosses. ``restarts > 1`` adds the paper's random
    restarts: each further run starts from a random point at half the best distance found so far (uniform
    direction in the Linf cube, Gaussian in L2 and L1), for the samples where one was found, and the smallest
    point over all runs is kept; ``seed`` (an int, seed + i for sample i, or an int64 tensor (N,)) fixes them
    per sample. With the default ``restarts=1`` each sample's run is deterministic and its own.
    A point counts as adversarial, as in the paper, once the model's top-1 has changed; the returned point is
    then checked on a fresh forward pass and, where it is not past the boundary by 1e-4 of its largest |logit|,
    moved just past that by one more linearised step (:func:`settle`), so that re-evaluating it gives the same
    label.

    Returns the smallest adversarial point found (x where none was), or with ``return_info=True`` an
    :class:`AttackResult` with ``extras["distance"]`` (inf where no adversarial point was found).
    """
    result = fab_result(
        model, x, y, norm=norm, steps=steps, eta=eta, beta=beta, alpha_max=alpha_max, targeted=targeted,
        restarts=restarts, seed=seed,
    )
    return result if return_info else result.x_adv
