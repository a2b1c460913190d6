"""The norm-specific pieces of a first-order attack, written once (the Foolbox 3 split): one class per norm with
its random start, steepest-ascent step and projection onto the ball intersected with the [0, 1] box.

A :class:`Ball` is the feasible set of one batch, B_p(x, eps) ∩ [0, 1]^d with a per-sample eps: attacks project
onto it and draw random starts from it, and take the rows of the samples still standing (:meth:`Ball.take`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .noise import Noise

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
        x, eps = ball.x, ball.eps
        d = x_adv.sub_(x)
        t = (eps / flat_norm(d, 2.0).clamp_min(1e-30)).clamp_(max=1.0)
        for _ in range(L2_PROJECTION_ITERATIONS):
            reached = flat_norm(torch.addcmul(x, batch_view(t, d), d).clamp_(0, 1).sub_(x), 2.0)
            # reached == 0: x + t d rounds to x (a step far below a float's spacing next to a saturated pixel);
            # the ratio then says nothing, and t stays where it is feasible.
            t = torch.where(reached > 0, t * eps / reached.clamp_min(1e-30), t).clamp_(max=1.0)
        return d.mul_(batch_view(t, d)).add_(x).clamp_(0, 1)


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


NORMS: dict[str, Norm] = {"linf": Linf(), "l2": L2()}
NORM_NAMES: tuple[str, ...] = tuple(NORMS)


def get_norm(name: str) -> Norm:
    """The geometry of norm ``name`` ("linf" or "l2")."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(map(repr, NORMS))}")
    return NORMS[name]
