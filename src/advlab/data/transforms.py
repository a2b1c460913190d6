"""Preprocessing that turns a PIL image into the tensor a model expects, *without* normalisation.

advlab models take images in [0, 1] and normalise inside (so eps is in pixel units); the transform here
only resizes the short side, centre-crops and converts to a float tensor in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}


def make_transform(
    *,
    resize_size: int | Sequence[int] | None,
    crop_size: int | tuple[int, int] | None,
    interpolation: str = "bilinear",
    channels: int = 3,
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``resize_size`` (antialiased; a pair (h, w) resizes to exactly that, aspect ratio
    ignored: timm's "squash"), centre-crop ``crop_size``, to tensor in [0, 1].

    ``None`` skips that step. ``channels=1`` converts to grey (ITU-R 601-2 luma) before the tensor.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    steps: list[Any] = []
    if resize_size is not None:
        size = resize_size if isinstance(resize_size, int) else [int(v) for v in resize_size]
        steps.append(T.Resize(size, interpolation=INTERPOLATIONS[interpolation], antialias=True))
    if crop_size is not None:
        steps.append(T.CenterCrop(crop_size))
    if channels == 1:
        steps.append(T.Grayscale(num_output_channels=1))
    steps.append(T.ToTensor())
    return T.Compose(steps)


def transform_for(model: Any) -> Callable[[Image.Image], torch.Tensor]:
    """The PIL -> [0, 1] tensor transform for an advlab model (reads its ``resize_size``, ``crop_size``,
    ``interpolation`` and ``input_size``)."""
    missing = [a for a in ("resize_size", "crop_size", "interpolation", "input_size") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"transform_for needs an advlab ImageClassifier (from advlab.models.load_model); "
            f"{type(model).__name__} lacks {', '.join(missing)}"
        )
    return make_transform(
        resize_size=model.resize_size,
        crop_size=model.crop_size,
        interpolation=model.interpolation,
        channels=model.input_size[0],
    )
