"""Per-sample random numbers: what a sample draws depends on its own seed, never on its batch.

:class:`Noise` draws tensors from one ``torch.Generator`` per sample (random starts). :class:`CounterRandom`
draws integers that are a pure function of (sample seed, counter, stream), for attacks that draw a few numbers per
sample at every one of thousands of iterations (Square), where a Python call per sample would dominate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..mixing import MASK32, mix32


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


class CounterRandom:
    """Per-sample random numbers that are a pure function of (sample seed, counter, stream).

    ``seed``: None (draw per-sample keys from torch's global generator; not batch-independent), an int (sample
    i gets seed + i, as in :class:`advlab.attacks.noise.Noise`) or an int64 tensor (N,) of per-sample seeds.
    """

    def __init__(self, seed: int | Tensor | None, n: int, device: torch.device) -> None:
        if seed is None:
            seeds = torch.randint(0, 2**62, (n,), dtype=torch.long)
        else:
            seeds = torch.tensor(seed_list(seed, n), dtype=torch.long)
        seeds = seeds.to(device)
        lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
        self.key = mix32(lo ^ mix32(hi ^ 0x2545F491))

    @classmethod
    def from_keys(cls, key: Tensor) -> CounterRandom:
        """The generator of samples whose mixed keys (``.key``) are already known, e.g. a subset's."""
        rng = cls.__new__(cls)
        rng.key = key
        return rng

    def take(self, index: Tensor) -> CounterRandom:
        """The streams of the samples at ``index``."""
        return CounterRandom.from_keys(self.key[index])

    def bits(self, counter: int, width: int) -> Tensor:
        """(N, width) independent 32-bit integers for draw ``counter`` (e.g. the iteration)."""
        stream = torch.arange(width, dtype=torch.long, device=self.key.device)
        c = mix32(torch.tensor(counter & MASK32, dtype=torch.long, device=self.key.device) ^ 0x68E31DA4)
        return mix32(mix32(self.key[:, None] ^ c) ^ mix32(stream + 0x1B56C4E9))

    def uniform(self, counter: int, width: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """(N, width) floats in [0, 1) with 24 random bits each."""
        return (self.bits(counter, width) >> 8).to(dtype) / float(1 << 24)

    def integers(self, counter: int, width: int, high: int | Tensor) -> Tensor:
        """(N, width) integers uniform in [0, high)."""
        return (self.uniform(counter, width) * high).long()

    def signs(self, counter: int, width: int, dtype: torch.dtype) -> Tensor:
        """(N, width) values in {-1, +1}."""
        return ((self.bits(counter, width) >> 31) * 2 - 1).to(dtype)
