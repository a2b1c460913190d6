"""Per-sample random numbers: a sample's random start depends on its own seed, never on its batch."""

from __future__ import annotations

import torch
from torch import Tensor


class Noise:
    """Random numbers drawn per sample.

    With ``seed=None`` the global torch generator is used (fast, not batch-independent). With an int, sample i
    of the batch gets seed ``seed + i``; with an int64 tensor of shape (N,) (e.g. dataset indices), sample i
    gets ``seed[i]``. Seeded draws are made on the CPU and then moved, so a seeded start is the same on
    every device.
    """

    def __init__(self, seed: int | Tensor | None, n: int) -> None:
        self.generators: list[torch.Generator] | None = None
        if seed is None:
            return
        self.generators = [torch.Generator().manual_seed(s) for s in seed_list(seed, n)]

    def take(self, index: Tensor) -> Noise:
        """The generators of the samples at ``index`` (their streams continue where they were)."""
        sub = Noise(None, 0)
        if self.generators is not None:
            sub.generators = [self.generators[i] for i in index.tolist()]
        return sub

    def _draw(self, like: Tensor, uniform: bool) -> Tensor:
        if self.generators is None:
            return torch.rand_like(like) if uniform else torch.randn_like(like)
        fn = torch.rand if uniform else torch.randn
        shape = like.shape[1:]
        cpu = torch.stack([fn(shape, generator=g, dtype=torch.float64) for g in self.generators])
        return cpu.to(device=like.device, dtype=like.dtype)

    def uniform(self, like: Tensor) -> Tensor:
        """U[0, 1) noise shaped like ``like``, one stream per sample."""
        return self._draw(like, uniform=True)

    def normal(self, like: Tensor) -> Tensor:
        """N(0, 1) noise shaped like ``like``, one stream per sample."""
        return self._draw(like, uniform=False)


def seed_list(seed: int | Tensor, n: int) -> list[int]:
    """The per-sample seeds of a ``seed`` argument: ``seed + i`` for an int, the values of an int tensor (N,)."""
    if isinstance(seed, bool) or not isinstance(seed, int | Tensor):
        raise TypeError(f"seed must be None, an int, or an int64 tensor of shape ({n},), got {type(seed).__name__}")
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    if seed.is_floating_point() or seed.shape != (n,):
        raise ValueError(f"a seed tensor must hold {n} integers (one per sample), got {seed.dtype} {tuple(seed.shape)}")
    return [int(s) for s in seed.tolist()]
