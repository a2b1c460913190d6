"""The model wrapper every advlab loader returns: [0, 1] images in, logits out, normalisation inside."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from advlab.data.transforms import make_transform
from advlab.errors import UsageError


class _ToChannelsLast(torch.autograd.Function):
    """Reorder the input to channels-last for the convolutions; hand the gradient back in the caller's
    (contiguous NCHW) layout so attack code can ``view`` it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class ImageClassifier(nn.Module):
    """Wrap a classifier so it takes NCHW float images in [0, 1] and normalises inside.

    ``forward(x) = backbone((x - mean) / std)``. Because normalisation is part of the model, attacks work
    in pixel units: an eps of 8/255 means 8 grey levels, whatever the model's mean/std.

    Attributes:
        backbone: the wrapped network (expects normalised input).
        mean, std: buffers of shape (1, C, 1, 1) (they follow ``.to(device)``); ``config`` has them as tuples.
            Default: no normalisation (mean 0, std 1 per channel).
        input_size: (C, H, W) the model is meant to see. Default: ``(len(mean), 224, 224)`` (3 channels
            when no mean is given), checked with one forward pass when ``class_names`` is not given.
        resize_size, crop_size, interpolation: preprocessing (short side resize, centre crop) that
            ``preprocess`` / ``advlab.data.transform_for`` applies to PIL images; a ``resize_size`` pair (h, w)
            resizes to exactly that size, aspect ratio ignored (timm's "squash" crop mode).
        class_names: one name per output logit. Default ``"0", "1", ...``, as many as the backbone's outputs
            for one zero image of ``input_size`` (one forward pass).
        name, source: the name it was loaded by and where its weights came from (for provenance).
        channels_last: run the backbone in channels-last memory layout. On CPU (oneDNN) this makes
            convolutional nets faster (docs/benchmarks.md, benchmarks/models_channels_last.py); logits change
            only by float rounding and gradients w.r.t. the input come back contiguous NCHW.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: tuple[int, int, int] | None = None,
        class_names: Sequence[str] | None = None,
        resize_size: int | tuple[int, int] | None = None,
        crop_size: int | None = None,
        interpolation: str = "bilinear",
        name: str = "",
        source: str = "",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if input_size is None:
            input_size = (len(mean) if mean is not None else len(std) if std is not None else 3, 224, 224)
        channels = input_size[0]
        mean = (0.0,) * channels if mean is None else mean
        std = (1.0,) * channels if std is None else std
        if len(mean) != channels or len(std) != channels:
            raise UsageError(
                f"mean and std need {channels} values (one per input channel), got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise UsageError(f"std must be positive, got {tuple(std)}")
        self.backbone = backbone
        if class_names is None:
            class_names = [str(i) for i in range(_count_outputs(backbone, input_size, mean, std))]
        # Non-persistent: state_dict() stays the backbone's weights (prefixed "backbone."), which
        # load_model(arch, weights=FILE) accepts back.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(int(v) for v in input_size)
        self.class_names = list(class_names)
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.interpolation = interpolation
        self.name = name
        self.source = source
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Broadcasting against the (1, C, 1, 1) mean would quietly turn a grey batch into a colour one, or an
        # unbatched (C, H, W) image into a batch: refuse both.
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            c, h, w = self.input_size
            raise ValueError(
                f"{self.name or 'this model'} takes images shaped (N, {c}, H, W) (it was trained on {c} x {h} x {w}), "
                f"got shape {tuple(x.shape)}; is the data meant for another model?"
            )
        x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = _ToChannelsLast.apply(x)
        return self.backbone(x)

    @property
    def preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> float tensor in [0, 1] of shape ``input_size`` (resize, centre crop; no normalisation)."""
        return make_transform(
            resize_size=self.resize_size,
            crop_size=self.crop_size,
            interpolation=self.interpolation,
            channels=self.input_size[0],
        )

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to describe (and reproduce the preprocessing of) this model, JSON-serialisable."""
        return {
            "name": self.name,
            "source": self.source,
            "input_size": list(self.input_size),
            "mean": [float(v) for v in self.mean.flatten()],
            "std": [float(v) for v in self.std.flatten()],
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "num_classes": self.num_classes,
        }

    def class_weight_vectors(self) -> torch.Tensor:
        """The final layer's per-class weight vectors, shape (num_classes, features), detached on CPU.

        Found as the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``, as in SqueezeNet) with ``num_classes``
        outputs; for TorchScript backbones, the last 2-D-or-more ``weight`` parameter with ``num_classes`` rows.
        """
        n = self.num_classes
        found: torch.Tensor | None = None
        if isinstance(self.backbone, torch.jit.ScriptModule):
            for pname, p in self.backbone.named_parameters():
                if pname.endswith("weight") and p.dim() >= 2 and p.shape[0] == n:
                    found = p
        else:
            for m in self.backbone.modules():
                if (isinstance(m, nn.Linear) and m.out_features == n) or (
                    isinstance(m, nn.Conv2d) and m.out_channels == n and m.kernel_size == (1, 1)
                ):
                    found = m.weight
        if found is None:
            raise UsageError(
                f"{self.name or 'model'}: no final layer with {n} outputs found to take class vectors from"
            )
        return found.detach().reshape(n, -1).float().cpu()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, num_classes={self.num_classes}"


def _count_outputs(backbone: nn.Module, input_size: tuple[int, int, int], mean: Any, std: Any) -> int:
    """Number of logits for one mid-grey image of ``input_size`` (normalised as the classifier will)."""
    x = (torch.full((1, *input_size), 0.5) - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(x.float())
    except Exception as err:  # the backbone's own shape error: say which input was tried
        raise UsageError(
            f"the backbone does not take input {tuple(input_size)} ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); pass input_size=(C, H, W)"
        ) from err
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UsageError(f"the backbone must return logits of shape (N, classes), got {getattr(out, 'shape', out)}")
    return int(out.shape[1])
