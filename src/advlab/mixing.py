"""The integer mixer of advlab's counter-based random numbers, written once.

The attacks' per-sample draws (:class:`advlab.attacks.noise.CounterRandom`) and the defences' per-sample streams
(:func:`advlab.defenses.sample_streams`) hash (sample key, counter, stream) into random bits with it. At the
bottom of advlab (it imports torch only), so both layers can use it.
"""

from __future__ import annotations

from torch import Tensor

MASK32 = 0xFFFFFFFF


def mix32(h: Tensor) -> Tensor:
    """A 32-bit integer finaliser (xor-shift / multiply rounds) on int64 tensors holding values < 2**32.

    The multipliers are below 2**31, so no product leaves the int64 range: the arithmetic is exact and the
    same on every device.
    """
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & MASK32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & MASK32
    return h ^ (h >> 15)
