"""Input-transformation defences and the tools to attack them adaptively.

Put transforms in front of any classifier with :func:`defended`; turn a non-differentiable function or module into
one an attack can differentiate through with :func:`bpda`; build a defence from text with
:func:`parse_defense`; judge a random model with common, per-sample random numbers inside :func:`sample_streams`.
The defences (:class:`BitDepth`, :class:`MedianSmoothing`, :class:`JPEG`,
:class:`RandomResizePad`, :class:`GaussianNoise`) keep shape, dtype and the [0, 1] range; the random ones call for
``eot_samples`` in the gradient attacks, the non-differentiable ones for :func:`bpda`.

This package depends on torch (and Pillow, for :class:`JPEG`) only, not on the rest of advlab.
"""

from .bpda import BPDA, bpda, bpda_at
from .parse import DEFENSES, defend, parse_defense
from .streams import SampleStreams, current_streams, sample_streams
from .transforms import JPEG, BitDepth, Defended, GaussianNoise, MedianSmoothing, RandomResizePad, defended

__all__ = [
    "BPDA",
    "DEFENSES",
    "JPEG",
    "BitDepth",
    "Defended",
    "GaussianNoise",
    "MedianSmoothing",
    "RandomResizePad",
    "SampleStreams",
    "bpda",
    "bpda_at",
    "current_streams",
    "defend",
    "defended",
    "parse_defense",
    "sample_streams",
]
