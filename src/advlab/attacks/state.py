"""Per-sample state, one way for every attack: named tensors whose first dimension is the sample.

Attacks that stop working on a sample once it is broken (APGD, Square, PGD's restarts) keep the state of the
samples still standing, :meth:`PerSample.take` the rows that go on and :meth:`PerSample.put` back the rows
that finish. :class:`BestPoint` is the per-sample best point every attack returns.
"""

from __future__ import annotations

from typing import Any, Self

import torch
from torch import Tensor

from .norms import Norm, batch_view
from .result import AttackResult


class PerSample:
    """Named per-sample tensors, read and written as attributes (``state.x``, ``state.eta``)."""

    def __init__(self, **tensors: Tensor) -> None:
        self.__dict__.update(tensors)

    def __getattr__(self, name: str) -> Any:  # only called for missing names: say which
        raise AttributeError(f"{type(self).__name__} has no per-sample field {name!r}")

    def fields(self) -> dict[str, Tensor]:
        return dict(self.__dict__)

    def take(self, index: Tensor) -> Self:
        """A new state holding the rows at ``index`` (a long index or a bool mask) of every field."""
        sub = object.__new__(type(self))
        sub.__dict__.update({k: v[index] for k, v in self.__dict__.items()})
        return sub

    def put(self, index: Tensor, other: PerSample) -> None:
        """Write ``other``'s fields into the rows at ``index``."""
        for k, v in other.__dict__.items():
            self.__dict__[k][index] = v


class BestPoint(PerSample):
    """Per-sample best point: a successful point beats an unsuccessful one, then a higher objective wins."""

    x: Tensor
    objective: Tensor
    success: Tensor

    @classmethod
    def start(cls, x: Tensor) -> BestPoint:
        """x itself, unscored (objective -inf, not successful)."""
        n = x.shape[0]
        return cls(
            x=x.detach().clone(),
            objective=torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device),
            success=torch.zeros(n, dtype=torch.bool, device=x.device),
        )

    @torch.no_grad()
    def update(self, x: Tensor, objective: Tensor, success: Tensor) -> None:
        """Keep ``x`` where it is better. NaN objectives compare False, so a point with a NaN loss is never kept."""
        better = (success & ~self.success) | ((success == self.success) & (objective > self.objective))
        # In place: the best point is this state's own tensor (start, take), so no batch-sized copy per iteration.
        torch.where(batch_view(better, x), x, self.x, out=self.x)
        self.objective = torch.where(better, objective, self.objective)
        self.success = self.success | (better & success)

    def standing(self) -> Tensor:
        """The indices of the samples not yet broken: what a restart attacks (AutoAttack's rule)."""
        return (~self.success).nonzero().view(-1)

    def merge(self, other: BestPoint, index: Tensor) -> None:
        """Fold in ``other``, which holds the samples at ``index`` of this batch."""
        sub = self.take(index)
        sub.update(other.x, other.objective, other.success)
        self.put(index, sub)


class SmallestPoint(PerSample):
    """Per-sample smallest adversarial point of a minimal-norm attack (FMN, DDN, FAB): the point of least size
    among those past the decision boundary; x itself (size inf) until one is found."""

    x: Tensor
    size: Tensor

    @classmethod
    def start(cls, x: Tensor) -> SmallestPoint:
        return cls(x=x.detach().clone(), size=torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device))

    @torch.no_grad()
    def update(self, point: Tensor, adversarial: Tensor, size: Tensor) -> None:
        """Keep ``point`` where it is adversarial and smaller than the best so far."""
        better = adversarial & (size < self.size)
        self.size = torch.where(better, size, self.size)
        # In place (the state's own tensor, from start): no batch-sized allocation per iteration.
        torch.where(batch_view(better, point), point, self.x, out=self.x)

    def result(self, x: Tensor, norm: Norm) -> AttackResult:
        """The attack's result: success where a point was found, ``extras["distance"]`` its size in ``norm``
        measured on the returned point (inf where none was found), and ``loss = -distance``."""
        success = torch.isfinite(self.size)
        distance = torch.where(success, norm.size(self.x - x), torch.full_like(self.size, float("inf")))
        return AttackResult(self.x, success, -distance, {"distance": distance})
