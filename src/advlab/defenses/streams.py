"""Per-sample random streams for the random defences: common random numbers for judging a randomized model.

A random defence (:class:`~advlab.defenses.GaussianNoise`, :class:`~advlab.defenses.RandomResizePad`) draws from
torch's global generator (or its ``generator``) by default: one draw for the whole batch, so what sample i gets
depends on its row in the batch and on everything drawn before. That is fine for an attack's inner loop, but not
for *judging* a sample, where an evaluation wants two things:

- **common random numbers** (CRN): the clean and the adversarial expected predictions of a sample, each the mean
  softmax over K draws, should come from the *same* K draws of the model's randomness, so that the difference
  between them is the perturbation's effect and not draw noise (with independent draws a sample whose expected
  prediction is uncertain at that K can count as broken by the draws alone);
- **per-sample draws**: sample i's draws should be a function of the sample, not of its batch neighbours, so
  that its record does not depend on the batch size or on which rows an attack was still running on.

``with sample_streams(keys):`` gives both. ``keys`` holds one integer per row of the batches the model will see
inside the block (e.g. a hash of (run seed, dataset index)). Inside it every advlab random defence ignores the
global generator and its ``generator`` and draws row r's randomness from a counter-based stream (a pure
function of (keys[r], d), the integer-hash construction of Salmon et al. 2011, "Parallel Random Numbers: As Easy
as 1, 2, 3", with the 32-bit finaliser of advlab's Square attack), where d counts the random-defence forwards
made inside the block (d = 0, 1, ... in call order; a model with two random defences uses two per forward).
Two blocks with the same keys therefore replay the same draws: K forwards at x in one block and K forwards at
x_adv in another see the same K noise tensors, row by row. A block over a subset of the rows takes
``keys[subset]``: each row keeps its stream. The block holds no state after it ends; nothing outside one
changes (no global generator is read or advanced inside it).

Randomness of any other kind (a user's module that calls ``torch.randn``) is untouched by this: it stays the
model's own, drawn from torch's global generator, which advlab's evaluation seeds per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from advlab.errors import UsageError
from advlab.mixing import MASK32, mix32


class SampleStreams:
    """The per-row streams of one ``with sample_streams(keys)`` block: the rows' mixed keys and the number of
    draws made so far."""

    def __init__(self, keys: Tensor) -> None:
        lo, hi = keys & MASK32, (keys >> 32) & MASK32
        self.keys = mix32(lo ^ mix32(hi ^ 0x3C6EF372))
        self.draws = 0

    def take(self, n: int, who: str) -> Tensor:
        """The rows' keys for the next draw (one per row), on the keys' device; ``n`` must be the block's row
        count."""
        if n != self.keys.shape[0]:
            raise UsageError(
                f"{who}: a batch of {n} rows inside sample_streams over {self.keys.shape[0]} keys; the block's keys "
                "must be those of the rows the model sees (take keys[subset] for a subset). A model that runs an "
                "advlab random defence on other rows than its input's (test-time augmentation, a loop over single "
                "images) cannot be judged per sample: put the defence in front of the model (advlab.defenses.defended)"
            )
        d = mix32(torch.tensor(self.draws & MASK32, dtype=torch.long, device=self.keys.device) ^ 0x68E31DA4)
        self.draws += 1
        return mix32(self.keys ^ d)

    def uniform(self, n: int, width: int, device: torch.device, who: str) -> Tensor:
        """(n, width) float64 uniforms in (0, 1) for the next draw: 24 random bits each, half a step off 0."""
        keys = self.take(n, who).to(device)
        stream = mix32(torch.arange(width, dtype=torch.long, device=device) + 0x1B56C4E9)
        bits = mix32(mix32(keys[:, None] ^ stream[None, :]) ^ 0x2545F491)
        return ((bits >> 8).double() + 0.5) / float(1 << 24)

    def normal(self, n: int, width: int, device: torch.device, who: str) -> Tensor:
        """(n, width) float64 standard normals for the next draw (Box-Muller on two uniforms per value)."""
        u = self.uniform(n, 2 * width, device, who)
        u1, u2 = u[:, :width], u[:, width:]
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


_CURRENT: ContextVar[SampleStreams | None] = ContextVar("advlab_sample_streams", default=None)


def current_streams() -> SampleStreams | None:
    """The innermost active ``sample_streams`` block, or None outside any (the random defences then draw from
    their generator or torch's global one)."""
    return _CURRENT.get()


@contextmanager
def sample_streams(keys: Tensor | Sequence[int]) -> Iterator[SampleStreams]:
    """Inside the block, advlab's random defences draw row r's randomness from the stream of ``keys[r]`` (module
    docstring): per sample, and the same draws again in every block with the same keys. ``keys``: one integer
    per row of the batches the model sees in the block (an int64 tensor (N,) or a list)."""
    if isinstance(keys, Tensor):
        if keys.dim() != 1 or keys.is_floating_point() or keys.dtype == torch.bool:
            raise ValueError(f"sample_streams: keys must be integers shaped (N,), got {keys.dtype} {tuple(keys.shape)}")
        t = keys.to(torch.long)
    else:
        t = torch.tensor([int(k) for k in keys], dtype=torch.long)
    streams = SampleStreams(t)
    token = _CURRENT.set(streams)
    try:
        yield streams
    finally:
        _CURRENT.reset(token)
