"""Input checks shared by every attack: :func:`validate` returns the checked inputs, one call per attack.

Checks never repair silently (no clipping of x, no casting of labels that are not integers) and every error names
the argument, what it got and what is expected. The model guard :func:`frozen` also lives here: it is what an
attack promises about the model (left as it was), and what makes a pass cost one forward and one input gradient.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .norms import NORM_NAMES, Norm, check_count, get_norm

LOSSES: tuple[str, ...] = ("ce", "margin")


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of an attack call.

    ``x`` is detached from any graph; ``y`` is int64 on x's device; ``y_max`` is the largest label (checked
    against the model's classes on the first forward, :func:`check_logits`); ``eps`` is (N,) on x's device and
    dtype when a budget was given; ``norm`` is the norm's geometry when one was named.
    """

    x: Tensor
    y: Tensor
    y_max: int
    eps: Tensor | None
    norm: Norm | None

    @property
    def n(self) -> int:
        return self.x.shape[0]


def validate(
    model: object,
    x: object,
    y: object,
    *,
    eps: float | Tensor | None = None,
    norm: str | None = None,
    norms: Sequence[str] = NORM_NAMES,
    loss: str | None = None,
    losses: Sequence[str] = LOSSES,
    **counts: int,
) -> Inputs:
    """Check an attack's arguments and return them ready to use.

    ``counts`` are integer settings that must be >= 1, by name (``steps=steps, restarts=restarts``).
    """
    check_model(model)
    xt = check_images(x)
    yt, y_max = check_labels(y, xt.shape[0], xt.device)
    for name, value in counts.items():
        check_steps(value, name)
    geometry = get_norm(check_choice(norm, "norm", norms)) if norm is not None else None
    if loss is not None:
        check_choice(loss, "loss", losses)
    eps_t = check_eps(eps, xt.shape[0], xt, norm or "l2") if eps is not None else None
    return Inputs(xt, yt, y_max, eps_t, geometry)


def check_images(x: object) -> Tensor:
    """``x`` detached from any graph if it is a finite float32/float64 batch in [0, 1]; never clip silently.

    Also refuses to run inside ``torch.inference_mode()``, where no input gradient can be taken.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "advlab attacks need autograd (input gradients) and cannot run inside torch.inference_mode(); "
            "call the attack outside it (torch.no_grad() around it is fine)"
        )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images in [0, 1], got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"x must be a float32 or float64 tensor of images in [0, 1], got dtype {x.dtype}"
            + (
                "; attack in float32 and let the model use autocast inside its forward for half precision"
                if x.is_floating_point()
                else ""
            )
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, C, H, W) (any N >= 1), got shape {tuple(x.shape)}")
    # One pass and one host sync for all three facts: min and max propagate NaN, and an infinity is one of them.
    lo, hi = torch.stack(x.aminmax()).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x contains NaN or inf; expected finite pixel values in [0, 1]")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"x must lie in [0, 1] (raw pixels, before normalisation), got min {lo:.6g} and max {hi:.6g}; "
            "put the mean/std normalisation inside the model (advlab.models.ImageClassifier) instead of in x"
        )
    # A tensor made under inference_mode cannot enter autograd; a clone made here can.
    return x.clone() if x.is_inference() else x.detach()


def check_labels(y: object, n: int, device: torch.device) -> tuple[Tensor, int]:
    """Return ``y`` as int64 on ``device`` and its largest value (checked against the model's classes later)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class indices (e.g. torch.int64), got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        hint = ""
        if y.ndim == 1 and y.shape[0] == 1 and n > 1:  # one label for x read as a batch: an image without N?
            hint = f"; if x is one image, give it as a batch of one, x[None] (shape (1, {n}, ...))"
        raise ValueError(
            f"y must have shape ({n},), one class index per image in x, got shape {tuple(y.shape)}{hint}"
        )
    lo, hi = (int(v) for v in torch.stack([y.min(), y.max()]).tolist())
    if lo < 0:
        raise ValueError(f"y holds class index {lo}; class indices must be >= 0")
    return y.to(device=device, dtype=torch.long), hi


def check_logits(logits: Tensor, n: int, y_max: int) -> None:
    """Raise unless the model output is (N, classes) and every label is a valid class. No host sync."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits shaped (N, classes) = ({n}, K), got {shape}")
    if logits.shape[1] < 2:
        raise ValueError(f"the model must return at least 2 class logits per image, got {logits.shape[1]}")
    if y_max >= logits.shape[1]:
        raise ValueError(
            f"y (the labels) holds class index {y_max} but the model has {logits.shape[1]} classes "
            f"(valid: 0..{logits.shape[1] - 1}); are the labels meant for another model?"
        )


def first_logits(model: nn.Module, x: Tensor, y_max: int) -> Tensor:
    """The model's logits on an attack's first batch, checked (:func:`check_logits`), with a clear error for an
    input whose dtype differs from the model's (torch's own message names neither side's role)."""
    try:
        logits = model(x)
    except RuntimeError as e:
        dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
        if dtypes and str(x.dtype) not in dtypes:
            usable = [d for d in dtypes if d in (str(torch.float32), str(torch.float64))]  # x's (check_images)
            if usable:
                fix = f"give x in the model's dtype (x.to({usable[0]})) or convert the model"
            else:  # a half-precision model: it must come up to x
                fix = (f"convert the model (model.to({x.dtype})); for half precision, keep its parameters in "
                       "float32 and autocast inside its forward")
            raise TypeError(f"x is {x.dtype} but the model's parameters are {', '.join(dtypes)}; {fix}") from e
        raise
    check_logits(logits, x.shape[0], y_max)
    return logits


def per_sample(value: float | Tensor, n: int, name: str, like: Tensor, *, strictly_positive: bool) -> Tensor:
    """Turn a scalar or (N,) tensor parameter into a checked (N,) tensor on ``like``'s device and dtype."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Tensor):
        raise TypeError(f"{name} must be a number or a tensor of shape ({n},), got {type(value).__name__}")
    if isinstance(value, Tensor):
        value = value.detach()
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(n)
    elif t.shape != (n,):
        raise ValueError(f"{name} must be a number or a tensor of shape ({n},), got shape {tuple(t.shape)}")
    lo = float(t.min()) if t.numel() else 0.0
    if not bool(torch.isfinite(t).all()):
        given = value.double() if isinstance(value, Tensor) else torch.as_tensor(float(value), dtype=torch.float64)
        if bool(torch.isfinite(given).all()):  # finite as given, not in x's dtype
            largest = torch.finfo(like.dtype).max
            raise ValueError(f"{name} {value} overflows x's dtype {like.dtype} (largest {largest:.3g})")
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {lo:.6g}")
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got {lo:.6g}")
    return t


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the first frame outside advlab."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2  # level 1 is the caller of this function, the one that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def check_eps(eps: float | Tensor, n: int, like: Tensor, norm: str) -> Tensor:
    """:func:`per_sample` for the budget; an Linf eps above 1 (the whole [0, 1] box) is almost always a budget
    meant for pixels in [0, 255] (8 for 8/255), so it is warned about; an L0 eps must be a whole count."""
    eps_t = per_sample(eps, n, "eps", like, strictly_positive=False)
    if norm == "l0":
        check_count(eps_t)
    if norm != "linf":
        return eps_t
    largest = float(eps_t.max()) if isinstance(eps, Tensor) else float(eps)
    if largest > 1:
        warnings.warn(
            f"Linf eps {largest:.6g} > 1 allows any image in [0, 1]; eps is in pixel units of images "
            "in [0, 1] (8/255 = 0.0314, not 8)",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return eps_t


def check_steps(steps: object, name: str = "steps") -> int:
    """An int >= 1 (a number of steps, restarts, candidates...)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def check_positive(value: object, name: str) -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_non_negative(value: object, name: str) -> float:
    """A finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value) + 0.0  # -0.0 as 0.0


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return str(value)


def check_model(model: object) -> nn.Module:
    """An ``nn.Module`` (the attacks call it on images in [0, 1] and read logits)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module mapping images in [0, 1] to logits, got {type(model).__name__}"
        )
    return model


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with parameters that need no gradient, then restore both exactly.

    Freezing the parameters is what makes an attack cost one forward and one input-gradient backward:
    autograd then never computes (or stores into ``.grad``) the weight gradients. Each submodule's own
    mode is restored, so a model that mixes train and eval submodules comes back as it was.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, req in grads:
            p.requires_grad_(req)
