"""Input-transformation defences: modules that map images in [0, 1] to images in [0, 1] of the same shape and
dtype, to put in front of a classifier with :func:`advlab.defenses.defended`.

They are the published preprocessing defences that adaptive attacks break (Athalye, Carlini & Wagner 2018): each
one is implemented as its paper describes it, differentiable or not as in the paper, so that a naive gradient
attack meets the same masked gradients an evaluation of the original defence met. The non-differentiable ones
have a zero gradient (they are piecewise constant), which stalls a sign-gradient attack; BPDA
(:func:`advlab.defenses.bpda`) is the remedy. The random ones draw fresh randomness on every forward, from
``generator`` if one is given and from torch's global generator otherwise (``torch.manual_seed`` makes them
repeatable), and inside a :func:`~advlab.defenses.sample_streams` block from per-sample streams (what advlab's
evaluation judges them with); EOT (``eot_samples`` of the gradient attacks) is the remedy for them.
"""

from __future__ import annotations

import io
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bpda import _Bpda
from .streams import current_streams


def _int_in(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [{lo}, {hi}], got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value}")
    return value


def _real_in(value: object, name: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v > hi or v < lo or (open_lo and v == lo):
        raise ValueError(f"{name} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {value}")
    return v


class _PiecewiseConstant(torch.autograd.Function):
    """y (computed outside autograd) with the derivative of a piecewise constant function: zero."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return torch.zeros_like(grad_y), None


def _attach(x: Tensor, y: Tensor, straight_through: bool) -> Tensor:
    """``y`` on x's graph: identity backward (BPDA) or zero backward (the true a.e. derivative)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return y
    return _Bpda.apply(x, y, None) if straight_through else _PiecewiseConstant.apply(x, y)


def _check_images(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} expects a float batch of images shaped (N, C, H, W), got {got}")


class BitDepth(nn.Module):
    """Bit-depth reduction, feature squeezing (Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial
    Examples in Deep Neural Networks", the colour-depth squeezer): each pixel is rounded to 2^bits levels,

        x' = round(x * (2^bits - 1)) / (2^bits - 1).

    Deterministic. Not differentiable: a step function, whose gradient is zero almost everywhere (torch's
    ``round`` gives exactly that), so naive gradient attacks stall; wrap it in :func:`~advlab.defenses.bpda`.
    """

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        self.bits = _int_in(bits, "bits", 1, 16)

    def forward(self, x: Tensor) -> Tensor:
        levels = float(2**self.bits - 1)
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _pad_symmetric(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Pad by mirroring with the edge repeated (scipy.ndimage's "reflect", numpy's "symmetric")."""
    parts = []
    if before:
        parts.append(x.narrow(dim, 0, before).flip(dim))
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim=dim)


class MedianSmoothing(nn.Module):
    """Local median smoothing, feature squeezing (Xu, Evans & Qi 2018, the spatial-smoothing squeezer): each pixel
    of each channel becomes the median of the ``size`` x ``size`` window around it.

    Equal to scipy.ndimage.median_filter with its default mode, "reflect": the window spans offsets -(size // 2)
    to size - 1 - size // 2, the border is mirrored with the edge repeated, and for an even window the upper of
    the two middle values is taken. Deterministic. Differentiable almost everywhere (it selects one input pixel
    per output pixel, a piecewise-linear map): a gradient attack gets a gradient, though a sparse one.
    """

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.size = _int_in(size, "size", 1, 15)

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "MedianSmoothing")
        k = self.size
        if k == 1:
            return x.clone()
        n, c, h, w = x.shape
        before, after = k // 2, k - 1 - k // 2
        if max(before, after) > min(h, w):
            raise ValueError(f"MedianSmoothing(size={k}) needs images of at least {max(before, after)} pixels a side")
        padded = _pad_symmetric(_pad_symmetric(x, before, after, 2), before, after, 3)
        windows = F.unfold(padded.reshape(n * c, 1, h + k - 1, w + k - 1), k)  # (N*C, k*k, H*W)
        return windows.kthvalue(k * k // 2 + 1, dim=1).values.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class JPEG(nn.Module):
    """JPEG compression at ``quality`` (Das et al. 2017, "Keeping the Bad Guys Out: Protecting and Vaccinating
    Deep Learning with JPEG Compression"; Guo, Rana, Cisse & van der Maaten 2018, "Countering Adversarial Images
    using Input Transformations", quality 75).

    Each image is quantised to 8 bits and round-tripped through Pillow's JPEG encoder (its defaults otherwise,
    4:2:0 chroma subsampling for colour), one image at a time on the CPU; 1- and 3-channel images. Deterministic.
    Not differentiable: the output is piecewise constant in x (x is quantised to 8 bits first), so its gradient
    is zero; with ``bpda=True`` the backward pass is the identity instead (BPDA, Athalye et al. 2018, sec. 4.1),
    the same as ``bpda(JPEG(quality))``.
    """

    def __init__(self, quality: int = 75, bpda: bool = False) -> None:
        super().__init__()
        self.quality = _int_in(quality, "quality", 1, 100)
        if not isinstance(bpda, bool):
            raise TypeError(f"bpda must be True or False, got {type(bpda).__name__}")
        self.bpda = bpda

    def forward(self, x: Tensor) -> Tensor:
        import numpy as np
        from PIL import Image

        _check_images(x, "JPEG")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG compresses 1- or 3-channel images, got {x.shape[1]} channels")
        with torch.no_grad():
            pixels = (x.detach() * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out = []
            for img in pixels:
                buffer = io.BytesIO()
                Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(
                    buffer, format="JPEG", quality=self.quality
                )
                decoded = np.asarray(Image.open(buffer).convert("L" if img.shape[2] == 1 else "RGB"))
                out.append(torch.from_numpy(decoded.reshape(img.shape).copy()))
            y = torch.stack(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype).div_(255)
        return _attach(x, y, self.bpda)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bpda={self.bpda}"


class RandomResizePad(nn.Module):
    """Random resizing and padding (Xie, Wang, Zhang, Ren & Yuille 2018, "Mitigating Adversarial Effects Through
    Randomization", the random resizing and random padding layers): each image is resized (nearest neighbour)
    to a random size and zero-padded at a random offset.

    The paper enlarges a 299 x 299 image to rnd x rnd, rnd uniform in [299, 331), and pads it to 331 x 331 for a
    network that takes that size. A classifier of fixed input size needs its size back, so here the canvas is the
    input's size and the image shrinks instead: its height becomes rnd uniform in [ceil(min_ratio * H), H]
    (``min_ratio`` 0.9 ~ 299 / 331 by default), its width the same ratio, and it lands at a uniform random
    offset. Random: one size and offset per image per forward (from ``generator``, a CPU generator, or torch's
    global CPU generator; inside :func:`~advlab.defenses.sample_streams`, from each row's own stream).
    Differentiable for a given draw (a selection of pixels; zeros in the padding). One gather for the whole
    batch, so EOT's many draws stay cheap.
    """

    def __init__(self, min_ratio: float = 0.9, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.min_ratio = _real_in(min_ratio, "min_ratio", 0.0, 1.0, open_lo=True)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "RandomResizePad")
        n, c, h, w = x.shape
        lo = max(1, math.ceil(self.min_ratio * h - 1e-9))
        streams = current_streams()
        if streams is None:
            rh = torch.randint(lo, h + 1, (n,), generator=self.generator)
            offsets = torch.rand((n, 2), generator=self.generator, dtype=torch.float64)
        else:  # per-sample streams (advlab.defenses.streams): size and offsets from three uniforms per row
            u = streams.uniform(n, 3, torch.device("cpu"), "RandomResizePad")
            rh = lo + (u[:, 0] * (h + 1 - lo)).long().clamp(max=h - lo)
            offsets = u[:, 1:]
        rw = (rh * w + h // 2).div(h, rounding_mode="floor").clamp(1, w)  # the same ratio, rounded
        top = (offsets[:, 0] * (h - rh + 1)).long().clamp(max=h - rh)
        left = (offsets[:, 1] * (w - rw + 1)).long().clamp(max=w - rw)
        # Output pixel (i, j) shows resized pixel (i - top, j - left), which nearest-neighbour resizing takes from
        # source pixel (floor((i - top) h / rh), floor((j - left) w / rw)); outside the resized image: zero.
        rows = torch.arange(h)[None, :] - top[:, None]  # (N, H)
        cols = torch.arange(w)[None, :] - left[:, None]  # (N, W)
        valid = ((rows >= 0) & (rows < rh[:, None]))[:, :, None] & ((cols >= 0) & (cols < rw[:, None]))[:, None, :]
        src_r = (rows.clamp(min=0) * h).div(rh[:, None], rounding_mode="floor").clamp(max=h - 1)
        src_c = (cols.clamp(min=0) * w).div(rw[:, None], rounding_mode="floor").clamp(max=w - 1)
        index = (src_r[:, :, None] * w + src_c[:, None, :]).view(n, 1, h * w).to(x.device)
        picked = x.reshape(n, c, h * w).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)
        return torch.where(valid.to(x.device)[:, None], picked, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"min_ratio={self.min_ratio}"


class GaussianNoise(nn.Module):
    """Gaussian input noise, x' = clip_[0,1](x + sigma * n), n ~ N(0, I) drawn afresh on every forward: the
    randomized-input defence that EOT was designed against (Athalye, Engstrom, Ilyas & Kwok 2018) and the noise of
    randomized smoothing (Cohen, Rosenfeld & Kolter 2019), here with a single draw as a plain preprocessing step.

    ``clip`` (default True) keeps the output in the image box [0, 1], as every other defence here does. Cohen et
    al. add the noise without clipping (``clip=False``; the output then leaves [0, 1]). The two are different
    classifiers under attack: on a pixel at 0 (Fashion-MNIST's background) the clipped noise is a half-normal,
    and an attacker's +eps moves that pixel's expected value by only
    sigma * (E[max(eps/sigma + n, 0)] - E[max(n, 0)]) (0.068 for eps = sigma = 0.1), so the clipped defence
    shrinks the effective budget on dark pixels and keeps genuine robustness that no EOT attack removes
    (docs/benchmarks.md, adaptive.py). Without the clip the noise adds no such robustness.

    Random: from ``generator`` (drawn on its device, then moved to x's) or torch's global generator of x's device;
    inside :func:`~advlab.defenses.sample_streams`, from each row's own stream (common random numbers).
    Differentiable (the identity inside the box, zero where the clip is active; everywhere without the clip).
    """

    def __init__(self, sigma: float = 0.1, clip: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma = _real_in(sigma, "sigma", 0.0, 1e6)
        if not isinstance(clip, bool):
            raise TypeError(f"clip must be True or False, got {clip!r}")
        self.clip = clip
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "GaussianNoise")
        streams = current_streams()
        if streams is not None:  # per-sample streams (advlab.defenses.streams)
            noise = streams.normal(x.shape[0], x[0].numel(), x.device, "GaussianNoise").to(x.dtype).view_as(x)
        elif self.generator is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=self.generator.device)
            noise = noise.to(x.device)
        out = x + self.sigma * noise
        return out.clamp(0, 1) if self.clip else out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}" + ("" if self.clip else ", clip=False")


class Defended(nn.Module):
    """``model(transforms(x))``: the transforms (an ``nn.Sequential``, applied in order) in front of the model."""

    def __init__(self, model: nn.Module, *transforms: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"defended: model must be an nn.Module, got {type(model).__name__}")
        for i, t in enumerate(transforms):
            if not isinstance(t, nn.Module):
                raise TypeError(
                    f"defended: transform {i} must be an nn.Module (wrap a function with bpda(fn) or a module of "
                    f"advlab.defenses), got {type(t).__name__}"
                )
        self.transforms = nn.Sequential(*transforms)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.transforms(x))


def defended(model: nn.Module, *transforms: nn.Module) -> Defended:
    """The model behind input transformations: ``defended(model, BitDepth(3), MedianSmoothing(2))`` computes
    model(median(bit_depth(x))). The model and transforms are shared, not copied."""
    return Defended(model, *transforms)
