"""Hugging Face image classifiers: ``hf:ORG/NAME`` (or ``hf:/path/to/saved/folder``) through ``transformers``.

``AutoModelForImageClassification`` gives the network, the matching ``AutoImageProcessor`` the mean, std,
size and resampling that the model was trained with, ``config.id2label`` the class names. The files come
from the local Hugging Face cache (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) or are downloaded
where allowed (the same rule as other pretrained weights: advlab.models.weights.may_download). transformers
reads ``model.safetensors`` (or a ``.bin`` file with ``torch.load(weights_only=True)``); advlab never asks it
to run remote code.

The processor's resize-to-(H, W) is done here as "short side to H, centre crop (H, W)": the same for square
images (what these models are given in practice), a crop rather than a squash for others.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advlab.errors import UsageError
from advlab.models.classifier import ImageClassifier
from advlab.models.weights import WeightsNotFoundError, may_download

PREFIX = "hf:"
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class LogitsOnly(nn.Module):
    """A transformers classifier as ``pixel_values -> logits`` (attacks want a tensor, not a ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _sizes(processor: Any) -> tuple[int, int, int, int | tuple[int, int]]:
    """(height, width, resize short side, crop) from an image processor's ``size`` / ``crop_size``."""
    size = dict(getattr(processor, "size", None) or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    if "height" in crop and "width" in crop and getattr(processor, "do_center_crop", False):
        h, w = int(crop["height"]), int(crop["width"])
        short = int(size.get("shortest_edge", min(h, w)))
        return h, w, short, (h, w)
    if "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
        return h, w, min(h, w), (h, w)
    if "shortest_edge" in size:  # ConvNeXt-style: resize to shortest_edge / crop_pct, crop shortest_edge
        edge = int(size["shortest_edge"])
        pct = float(getattr(processor, "crop_pct", None) or 1.0)
        return edge, edge, round(edge / pct), edge
    raise UsageError(f"cannot read the input size from the image processor's size={size}, crop_size={crop}")


def load_huggingface(name: str, download: bool | None) -> ImageClassifier:
    """``hf:ORG/NAME`` as an ImageClassifier with the image processor's preprocessing (module docstring)."""
    repo = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError as err:
        raise UsageError(f"hf: models need transformers ({err}): pip install 'advlab[hf]'") from err
    local_only = not may_download(download, "https://huggingface.co")
    try:
        net = AutoModelForImageClassification.from_pretrained(repo, local_files_only=local_only)
        processor = AutoImageProcessor.from_pretrained(repo, local_files_only=local_only)
    except (OSError, ValueError) as err:  # not in the cache / not a model repo / no image processor
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "the local Hugging Face cache (offline)" if local_only else "the Hugging Face Hub"
        raise WeightsNotFoundError(f"hf:{repo}: cannot load it from {where}: {reason[:300]}") from err
    h, w, short, crop = _sizes(processor)
    channels = int(getattr(net.config, "num_channels", 3))
    if getattr(processor, "do_normalize", True):
        mean = tuple(float(v) for v in processor.image_mean)
        std = tuple(float(v) for v in processor.image_std)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    id2label = {int(k): str(v) for k, v in net.config.id2label.items()}
    return ImageClassifier(
        LogitsOnly(net.eval()),
        mean=mean,
        std=std,
        input_size=(channels, h, w),
        class_names=[id2label.get(i, str(i)) for i in range(int(net.config.num_labels))],
        resize_size=short,
        crop_size=crop,
        interpolation=RESAMPLE.get(int(getattr(processor, "resample", 2) or 2), "bilinear"),
        name=f"{PREFIX}{repo}",
        source=f"Hugging Face {repo} (transformers {type(net).__name__})",
    )
