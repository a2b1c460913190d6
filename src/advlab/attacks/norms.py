"""The norm-specific pieces of a first-order attack, written once (the Foolbox 3 split): one class per norm with
its random start, steepest-ascent step and projection onto the ball intersected with the [0, 1] box.

Linf and L2 serve every fixed-budget attack (:data:`NORM_NAMES`); L1 and L0 join them in :data:`NORMS` for PGD
(sparse steps) and the minimal-norm attacks (FMN). Every projection is the exact Euclidean projection onto
ball ∩ box, not the ball's projection followed by a clip.

A :class:`Ball` is the feasible set of one batch, B_p(x, eps) ∩ [0, 1]^d with a per-sample eps: attacks project
onto it and draw random starts from it, and take the rows of the samples still standing (:meth:`Ball.take`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .deepening import rows_of, search_deeper, whole_at_least
from .noise import Noise

# The L1 steepest-ascent step moves this fraction of the coordinates (at least one), those of largest |grad|.
L1_STEP_FRACTION = 0.01

# The L1 projection finds its multiplier from this many of the largest breakpoints of a row (a top-k, far
# cheaper than sorting all 2n), then from L1_PROJECTION_GROWTH times as many for the rows whose crossing lies
# lower, and so on, sorting all of them once the next top-k would pass a quarter of 2n (L1.project_). Where
# FMN-L1's crossings lie on ImageNet-sized images, and what that saves: docs/benchmarks.md, minimal_norm.py,
# "EfficientNet-Lite0 on all 128".
L1_PROJECTION_TOPK = 128
L1_PROJECTION_GROWTH = 32

# Fixed-point iterations of the L2 projection onto ball ∩ box (L2.project_); each costs about four elementwise
# passes over the batch, far below a forward pass.
L2_PROJECTION_ITERATIONS = 3


def batch_view(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (N,) tensor so it broadcasts against a batch shaped like ``x``."""
    return t.view(-1, *([1] * (x.ndim - 1)))


def flat_norm(t: Tensor, p: float) -> Tensor:
    """The p-norm of each sample of a batch, over all its other dimensions."""
    return t.flatten(1).norm(p=p, dim=1)


class Norm:
    """A threat model's geometry. Subclasses define the three pieces; :class:`Ball` binds them to a batch."""

    name: str = ""
    p: float = 0.0
    dual_p: float = 0.0  # q with 1/p + 1/q = 1: ||w||_q is the largest <w, delta> over the unit p-ball

    def size(self, delta: Tensor) -> Tensor:
        """||delta||_p per sample."""
        return flat_norm(delta, self.p)

    def dual_size(self, w: Tensor) -> Tensor:
        """||w||_q per sample, the dual norm (how far a linear function w moves per unit of this norm)."""
        return flat_norm(w, self.dual_p)

    def ball(self, x: Tensor, eps: Tensor) -> Ball:
        return Ball(self, x, eps, None)

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """A point drawn uniformly from the eps-ball around x, then put back in the [0, 1] box."""
        raise NotImplementedError

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """Turn ``grad`` in place into the steepest-ascent step of size alpha (per sample) for this norm."""
        raise NotImplementedError

    def project_(self, x_adv: Tensor, ball: Ball) -> Tensor:
        """Project ``x_adv`` in place onto ``ball`` (the eps-ball around its x intersected with [0, 1])."""
        raise NotImplementedError


class Linf(Norm):
    name, p, dual_p = "linf", math.inf, 1.0

    def ball(self, x: Tensor, eps: Tensor) -> Ball:
        e = batch_view(eps, x)
        return Ball(self, x, eps, ((x - e).clamp_(0, 1), (x + e).clamp_(0, 1)))

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        return (x + (2 * noise.uniform(x) - 1) * batch_view(eps, x)).clamp_(0, 1)

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """alpha * sign(grad): Goodfellow et al. 2014, eq. (2)."""
        return grad.sign_().mul_(batch_view(alpha, grad))

    def project_(self, x_adv: Tensor, ball: Ball) -> Tensor:
        """Both constraints are one clamp per pixel to the precomputed bounds, which is exact."""
        assert ball.box is not None
        return torch.clamp(x_adv, ball.box[0], ball.box[1], out=x_adv)


class L2(Norm):
    name, p, dual_p = "l2", 2.0, 2.0

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """Uniform in the L2 ball: a Gaussian direction, radius eps * u^(1/d)."""
        direction = noise.normal(x)
        direction = direction / batch_view(flat_norm(direction, 2.0).clamp_min(1e-12), x)
        radius = noise.uniform(x[:, :1].flatten(1)[:, :1]).view(-1) ** (1.0 / x[0].numel())
        return (x + direction * batch_view(radius, x) * batch_view(eps, x)).clamp_(0, 1)

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """alpha * grad / ||grad||_2."""
        return grad.mul_(batch_view(alpha, grad) / batch_view(flat_norm(grad, 2.0).clamp_min(1e-12), grad))

    def project_(self, x_adv: Tensor, ball: Ball) -> Tensor:
        """The Euclidean projection onto {||z - x||_2 <= eps} ∩ [0, 1]^n, by a few fixed-point iterations.

        From the KKT conditions of min ||z - p||^2 for p = x + d (one multiplier for the ball, the box separable
        per coordinate), z(t) = clip(x + t d, 0, 1) with t in [0, 1] the largest such that ||z(t) - x||_2 <= eps.
        Scaling d to the ball and then clipping (t = eps / ||d||, the usual shortcut, AutoAttack's and Foolbox's)
        leaves the point inside the ball whenever a coordinate is clipped, wasting budget on images with
        saturated pixels. t is found by the fixed point t <- t * eps / ||z(t) - x||_2 from the shortcut's t:
        ||z(t) - x|| / t does not increase with t, so every iterate stays feasible and grows monotonically
        towards the root; ``L2_PROJECTION_ITERATIONS`` of them get close to it from any start the attacks meet
        (docs/attacks.md; benchmarks/l2_projection.py measures it against a bisection), and the point is
        feasible after any number.
        """
        return self.scale_in_box_(x_adv, ball, 1.0)

    def scale_in_box_(self, x_adv: Tensor, ball: Ball, t_max: Tensor | float) -> Tensor:
        """x_adv <- clip(x + t d, 0, 1), d = x_adv - x, with t the largest in [0, t_max] (per sample) such that
        ||clip(x + t d, 0, 1) - x||_2 <= eps, by the fixed point of :meth:`project_`. t_max = 1 is the
        projection onto ball ∩ box; t_max = inf also stretches a short d out to the sphere of radius eps (as
        far as the box allows along d), which FMN does before it has met an adversarial point."""
        x, eps = ball.x, ball.eps
        d = x_adv.sub_(x)
        t = torch.clamp(eps / flat_norm(d, 2.0).clamp_min(1e-30), max=t_max)
        z = torch.empty_like(d)  # one buffer for every iterate: a fresh batch-sized tensor each time costs more
        for _ in range(L2_PROJECTION_ITERATIONS):  # than the arithmetic (page faults of a large allocation)
            reached = flat_norm(torch.addcmul(x, batch_view(t, d), d, out=z).clamp_(0, 1).sub_(x), 2.0)
            # reached == 0: x + t d rounds to x (a step far below a float's spacing next to a saturated pixel);
            # the ratio then says nothing, and t stays where it is feasible.
            t = torch.where(reached > 0, t * eps / reached.clamp_min(1e-30), t).clamp_(max=t_max)
        return d.mul_(batch_view(t, d)).add_(x).clamp_(0, 1)


class L1(Norm):
    name, p, dual_p = "l1", 1.0, math.inf

    def __init__(
        self,
        step_fraction: float = L1_STEP_FRACTION,
        projection_topk: int = L1_PROJECTION_TOPK,
        projection_growth: int = L1_PROJECTION_GROWTH,
    ) -> None:
        """``step_fraction``: the share of coordinates the sparse step moves (:meth:`ascent_step_`);
        ``projection_topk`` (>= 1) and ``projection_growth`` (>= 2): the first depth of the projection's search
        for its multiplier and the factor between depths (:meth:`project_`; the result does not depend on
        them, only its cost)."""
        self.step_fraction = step_fraction
        self.projection_topk = whole_at_least(projection_topk, 1, "projection_topk")
        self.projection_growth = whole_at_least(projection_growth, 2, "projection_growth")

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """Uniform in the L1 ball, then put back in the box (which only shrinks |delta|, so stays in the ball).

        With E_1..E_{d+1} i.i.d. Exp(1), (E_1..E_d) / sum_{i<=d+1} E_i is uniform on the solid simplex; random
        signs make it uniform on the L1 unit ball.
        """
        flat = x.flatten(1)
        e = -torch.log1p(-noise.uniform(torch.empty(flat.shape[0], flat.shape[1] + 1, dtype=x.dtype)))
        signs = noise.uniform(flat).sub_(0.5).sign_()
        point = e[:, :-1].to(x.device) / e.sum(dim=1, keepdim=True).to(x.device) * signs
        return (x + point.view_as(x) * batch_view(eps, x)).clamp_(0, 1)

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """The sparse L1 step: alpha spread evenly over the k = max(1, ceil(step_fraction * d)) coordinates of
        largest |grad|, each moved along sign(grad) (||step||_1 = alpha).

        k = 1 is the exact steepest-ascent direction of the L1 norm (argmax_{||s||_1 <= 1} <grad, s> is a vertex);
        moving a small fraction instead is the sparse step of Tramer & Boneh 2019 (SLIDE) and of Croce & Hein
        2021 ("Mind the box", sec. 3), which makes progress when one coordinate at a time would not.
        """
        flat = grad.reshape(grad.shape[0], -1)  # a copy where grad is not row-major (a channels-last input's)
        k = max(1, math.ceil(self.step_fraction * flat.shape[1]))
        top = flat.abs().topk(k, dim=1).indices
        step = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign())
        return grad.copy_(step.view_as(grad)).mul_(batch_view(alpha / k, grad))

    def project_(self, x_adv: Tensor, ball: Ball) -> Tensor:
        """The exact Euclidean projection onto {||z - x||_1 <= eps} ∩ [0, 1]^n.

        min ||z - p||^2 with p = x + d separates per coordinate once the ball has its multiplier lambda >= 0:
        u_i = z_i - x_i minimises (u_i - d_i)^2 + 2 lambda |u_i| over [-x_i, 1 - x_i], which is the soft
        threshold of d_i clipped to the box, u_i = sign(d_i) min(max(|d_i| - lambda, 0), b_i) with b_i the room
        the box leaves in d_i's direction (Duchi et al. 2008's projection generalised to the box). phi(lambda) =
        ||u(lambda)||_1 is piecewise linear and non-increasing, with breakpoints |d_i| (coordinate i starts
        moving as lambda falls below it) and |d_i| - b_i (it reaches its box bound); lambda = 0 where phi(0) <=
        eps, else the lambda where phi crosses eps, found by :func:`l1_threshold` from the largest breakpoints
        down (``projection_topk`` of them first; for the rows whose crossing lies lower, ``projection_growth``
        times as many, and so on; all of them once that would pass a quarter of 2n: :func:`search_deeper`).
        """
        if not x_adv.is_contiguous():  # channels-last or strided: projected as a row-major copy, written back
            return x_adv.copy_(self.project_(x_adv.contiguous(), ball))
        x, eps = ball.x, ball.eps
        d = x_adv.sub_(x).view(x.shape[0], -1)
        xf = x.reshape(x.shape[0], -1)
        mag = d.abs()
        room = torch.where(d > 0, 1 - xf, xf)
        outside = torch.minimum(mag, room).sum(dim=1) > eps  # phi(0) > eps: lambda > 0
        # Every row at once (a row inside the ball gets lambda = 0 below): row copies and their scatter back
        # cost more ops than the few rows they spare.
        points = torch.cat([mag, (mag - room).clamp_min_(0)], dim=1)

        def solve(rows: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
            lam, found = l1_threshold(*rows_of(rows, points, eps), k)
            return lam, found | ~rows_of(rows, outside)[0]  # a row inside the ball needs no crossing: lambda = 0

        lam = search_deeper(solve, points.shape[1], self.projection_topk, self.projection_growth)
        lam = torch.where(outside, lam, 0.0)
        # |u_i| = min(max(|d_i| - lambda, 0), b_i), summed before the signs go on (the same sum as of |u|).
        u_abs = torch.minimum(mag.sub_(lam[:, None]).clamp_min_(0), room)
        # The cumulative sums round: scale the few ulps of excess away (toward x, so the box still holds).
        size = u_abs.sum(dim=1)
        scale = torch.where(size > eps, eps / size.clamp_min(1e-30), 1.0)[:, None]
        return torch.mul(u_abs, d.sign_(), out=d).mul_(scale).view_as(x_adv).add_(x).clamp_(0, 1)


def l1_threshold(points: Tensor, eps: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The multiplier lambda of the L1 ball ∩ box projection (:meth:`L1.project_`) from the k largest
    breakpoints of each row, and whether the crossing phi(lambda) = eps lies among them.

    ``points`` (N, 2n) holds per row the breakpoints |d_i| (first n) and max(|d_i| - b_i, 0) (last n). From
    lambda = +inf (phi = 0) down, phi grows with slope the number of coordinates moving: +1 below an |d_i|, -1
    below an |d_i| - b_i; its value at each breakpoint is a cumulative sum over the breakpoints above, so the
    k largest (a top-k, not a sort of all 2n) give phi exactly down to the k-th, which holds the crossing
    whenever fewer than about k / 2 coordinates end up nonzero (the sparse points an L1 projection makes).
    Ties among breakpoints do not matter: a tie adds a zero-width piece. Rows where phi stays below eps over
    the k (``found`` False) need a larger k; with k = 2n every row is found.
    """
    k = min(k, points.shape[1])
    values, indices = points.topk(k, dim=1) if k < points.shape[1] else points.sort(dim=1, descending=True)
    slope = torch.where(indices < points.shape[1] // 2, 1.0, -1.0).to(values.dtype).cumsum_(dim=1)
    phi = torch.zeros_like(values)  # phi at each breakpoint
    if k > 1:
        torch.cumsum(slope[:, :-1] * (values[:, :-1] - values[:, 1:]), dim=1, out=phi[:, 1:])
    j = (phi < eps[:, None]).sum(dim=1)  # the first breakpoint where phi >= eps (phi grows along the row)
    # With all 2n, a row is found even when j = 2n: phi is flat below the last breakpoint (every coordinate at
    # its bound), so phi(0) > eps puts the crossing there; only rounding keeps the computed phi below eps.
    found = j < k if k < points.shape[1] else torch.ones_like(j, dtype=torch.bool)
    # lambda on the piece just above breakpoint j: from breakpoint j - 1 down by the missing (eps - phi) over
    # the slope there; j = 0 (eps = 0) is lambda at the largest breakpoint, where phi = 0.
    above = (j - 1).clamp_(min=0)[:, None]
    start, phi_start = values.gather(1, above).squeeze(1), phi.gather(1, above).squeeze(1)
    lam = start - (eps - phi_start) / slope.gather(1, above).squeeze(1).clamp_min(1)
    lam = torch.where(j > 0, lam, values[:, 0])
    return lam.clamp_min(0), found


class L0(Norm):
    """The number of coordinates changed, counted per coordinate (each channel of each pixel), as FMN (Pintor
    et al. 2021), adv_lib and Foolbox count it; eps is an integer count per sample."""

    name, p, dual_p = "l0", 0.0, math.nan

    def size(self, delta: Tensor) -> Tensor:
        """The number of nonzero coordinates of delta per sample (in delta's dtype), as the p = 0 "norm" (one
        op, the same count as comparing, summing and converting)."""
        return flat_norm(delta, 0.0)

    def dual_size(self, w: Tensor) -> Tensor:
        raise ValueError("the L0 'norm' is not a norm and has no dual norm")

    def ball(self, x: Tensor, eps: Tensor) -> Ball:
        check_count(eps)
        return Ball(self, x, eps, None)

    def random_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """A point drawn uniformly from the ball ∩ box: eps coordinates drawn without replacement, each set to a
        value uniform in [0, 1]."""
        flat = x.flatten(1)
        rank = noise.uniform(flat).argsort(dim=1).argsort(dim=1)
        chosen = rank < eps.round()[:, None]
        return torch.where(chosen, noise.uniform(flat), flat).view_as(x)

    def box_start(self, x: Tensor, eps: Tensor, noise: Noise) -> Tensor:
        """Croce & Hein's PGD_0 start: a point drawn uniformly from the box, projected onto the ball ∩ box,
        i.e. the eps coordinates drawn farthest from x keep their draw (on a dark background, bright pixels)."""
        return self.project_(noise.uniform(x.flatten(1)).view_as(x), Ball(self, x, eps, None))

    def ascent_step_(self, grad: Tensor, alpha: Tensor) -> Tensor:
        """alpha * grad / ||grad||_1, the step of PGD_0 (Croce & Hein 2019, "Sparse and Imperceivable
        Adversarial Attacks"; FMN takes its own). The L0 ball has no steepest-ascent direction: the step
        follows the gradient with an L1 length of alpha, which moves the coordinates of large |grad| far and the
        rest little, and the projection then keeps the k of largest gain."""
        return grad.mul_(batch_view(alpha, grad) / batch_view(flat_norm(grad, 1.0).clamp_min(1e-30), grad))

    def project_(self, x_adv: Tensor, ball: Ball) -> Tensor:
        """The exact Euclidean projection onto {||z - x||_0 <= k} ∩ [0, 1]^n.

        Keeping coordinate i costs (d_i - u_i)^2 with u_i = d_i clipped to the box, dropping it costs d_i^2;
        the k kept are those of largest gain d_i^2 - (d_i - u_i)^2 = |u_i| (2 |d_i| - |u_i|), which is |d_i|^2
        where the box does not bind (keep the k largest |d_i|). Where several coordinates tie at a row's k-th
        gain, the lowest-indexed of them are kept: the row's choice is its own, whatever its batch mates' k.
        The moves d must not be NaN (a NaN gain ranks first and is never kept); a row with k = 0 keeps nothing,
        whatever its moves.
        """
        if not x_adv.is_contiguous():  # channels-last or strided: projected as a row-major copy, written back
            return x_adv.copy_(self.project_(x_adv.contiguous(), ball))
        x = ball.x
        xf = x.reshape(x.shape[0], -1)
        n_coords = xf.shape[1]
        k = ball.eps.clamp(0, n_coords).round().long()  # clamped first: a huge eps would overflow the long
        d = x_adv.sub_(x).view(xf.shape)
        u = (xf + d).clamp_(0, 1).sub_(xf)
        # |u| (2 |d| - |u|) as u (2 d - u): with x in the box, |fl(x + d) - x| <= 2 |d|, so u and 2 d - u have
        # d's sign (or are 0) and the two are the same number (up to the sign of a zero) in three passes over the
        # batch where the absolute values took five.
        gain = (d * 2).sub_(u).mul_(u)
        # Each row's k-th largest gain, from the values of one top-k of the batch's largest k + 1 (a fraction of
        # a full sort; the values, unlike the indices of tied ones, do not depend on that k): every gain above
        # it is kept, and of those equal to it the first in index order, as many as the row has room for. The
        # (k + 1)-th value says whether a row has more gains tied at its k-th than room, without counting.
        k_max = int(k.max()) if k.numel() else 0
        if k_max == 0:
            return d.zero_().view_as(x_adv).add_(x)
        top = gain.topk(min(k_max + 1, n_coords), dim=1).values
        kth = top.gather(1, (k - 1).clamp_min(0)[:, None])
        kth = torch.where(k[:, None] > 0, kth, float("nan"))  # k = 0: keep none (no gain is >= NaN, not even inf)
        keep = gain >= kth
        next_value = top.gather(1, k.clamp_max(top.shape[1] - 1)[:, None])
        crowded = next_value == kth
        if k_max == n_coords:  # a row that keeps everything has no (k + 1)-th value: it read its own k-th
            crowded &= (k < n_coords)[:, None]
        if bool(crowded.any()):  # more ties at the k-th gain than room: the first ones
            above = gain > kth
            tied = keep & ~above
            keep = above | (tied & (tied.cumsum(dim=1) <= (k - above.sum(dim=1))[:, None]))
        return torch.add(torch.where(keep, u, 0.0), xf, out=d).view_as(x_adv).clamp_(0, 1)


def check_count(eps: Tensor, name: str = "eps") -> None:
    """An L0 budget counts coordinates: raise unless every value is a whole number."""
    if bool((eps != eps.round()).any()):
        bad = eps[eps != eps.round()][0].item()
        raise ValueError(f"{name} for norm 'l0' counts changed coordinates and must be a whole number, got {bad:.6g}")


@dataclass(frozen=True)
class Ball:
    """B_p(x, eps) ∩ [0, 1]^d for a batch: x (N, ...), eps (N,), and for Linf the per-pixel bounds."""

    norm: Norm
    x: Tensor
    eps: Tensor
    box: tuple[Tensor, Tensor] | None

    def project_(self, x_adv: Tensor) -> Tensor:
        return self.norm.project_(x_adv, self)

    def random_start(self, noise: Noise) -> Tensor:
        return self.norm.random_start(self.x, self.eps, noise)

    def take(self, index: Tensor) -> Ball:
        """The ball of the samples at ``index``."""
        box = None if self.box is None else (self.box[0][index], self.box[1][index])
        return Ball(self.norm, self.x[index], self.eps[index], box)


NORMS: dict[str, Norm] = {"linf": Linf(), "l2": L2(), "l1": L1(), "l0": L0()}
# The norms of the fixed-budget first-order attacks (APGD, FGSM, DeepFool, Square; PGD adds L1 and L0) and of
# the evaluation layer; attacks that also take L1 or L0 (PGD, FMN, FAB) name their own list.
NORM_NAMES: tuple[str, ...] = ("linf", "l2")
ALL_NORM_NAMES: tuple[str, ...] = tuple(NORMS)


def get_norm(name: str) -> Norm:
    """The geometry of norm ``name`` ("linf", "l2", "l1" or "l0")."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(map(repr, NORMS))}")
    return NORMS[name]
