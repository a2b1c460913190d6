"""Per-sample state, one way for every attack: named tensors whose first dimension is the sample.

Attacks that stop working on a sample once it is broken (APGD, Square, PGD's restarts) keep the state of the
samples still standing, :meth:`PerSample.take` the rows that go on and :meth:`PerSample.put` back the rows
that finish. :class:`BestPoint` is the per-sample best point every attack returns.
"""

from __future__ import annotations

from typing import Any, Self

import torch
from torch import Tensor

from .norms import batch_view


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
        self.x = torch.where(batch_view(better, x), x, self.x)
        self.objective = torch.where(better, objective, self.objective)
        self.success = self.success | (better & success)

    def merge(self, other: BestPoint, index: Tensor) -> None:
        """Fold in ``other``, which holds the samples at ``index`` of this batch."""
        sub = self.take(index)
        sub.update(other.x, other.objective, other.success)
        self.put(index, sub)
