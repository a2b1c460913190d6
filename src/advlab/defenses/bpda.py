"""Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False
Sense of Security", sec. 4.1).

A defence that puts a non-differentiable (or gradient-shattering) function f in front of a model leaves a
gradient attack with zero, undefined or useless gradients. BPDA keeps f on the forward pass and replaces its
derivative by that of a differentiable g with g(x) ~ f(x) on the backward pass; for the usual preprocessing
f(x) ~ x, g is the identity (the paper's "straight-through" special case).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from advlab.errors import UsageError

Fn = Callable[[Tensor], Tensor]


class _Bpda(torch.autograd.Function):
    """y = f(x) forward (no graph through f), grad_x = J_g(x)^T grad_y backward."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, backward_fn: Fn | None) -> Tensor:  # type: ignore[override]
        ctx.backward_fn = backward_fn
        if backward_fn is not None:
            ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        if ctx.backward_fn is None:
            return grad_y, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            g = ctx.backward_fn(x_in)
            if not isinstance(g, Tensor) or g.shape != x.shape:
                got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise UsageError(f"bpda: backward_fn must keep the input's shape {tuple(x.shape)}, got {got}")
            (grad_x,) = torch.autograd.grad(g, x_in, grad_y)
        return grad_x, None, None


class BPDA(nn.Module):
    """The module made by :func:`bpda`: forward ``forward_fn``, backward that of ``backward_fn`` (identity if None).

    A ``forward_fn`` or ``backward_fn`` that is an ``nn.Module`` is a submodule (moves with ``.to()``, follows
    ``.eval()``). Both must keep the input's shape (else a UsageError, a ValueError); the output of
    ``forward_fn`` takes the input's dtype.
    """

    def __init__(self, forward_fn: Fn, backward_fn: Fn | None = None) -> None:
        super().__init__()
        for name, fn in (("forward_fn", forward_fn), ("backward_fn", backward_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"bpda: {name} must be a callable or an nn.Module, got {type(fn).__name__}")
        self.forward_fn = forward_fn
        self.backward_fn = backward_fn

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            y = self.forward_fn(x.detach())
        if not isinstance(y, Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise UsageError(
                f"bpda: forward_fn must keep the input's shape {tuple(x.shape)}, got {got}; BPDA replaces its "
                "gradient by that of a function of the same shape (the identity by default)"
            )
        y = y.to(x.dtype)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return y
        return _Bpda.apply(x, y, self.backward_fn)

    def extra_repr(self) -> str:
        if isinstance(self.forward_fn, nn.Module):
            return "" if self.backward_fn is None or isinstance(self.backward_fn, nn.Module) else "backward=fn"
        name = getattr(self.forward_fn, "__name__", type(self.forward_fn).__name__)
        return f"forward={name}, backward={'identity' if self.backward_fn is None else 'fn'}"


def bpda(forward_fn: Fn, backward_fn: Fn | None = None) -> BPDA:
    """BPDA (Athalye, Carlini & Wagner 2018, sec. 4.1): a module whose forward is ``forward_fn`` and whose backward
    is the vector-Jacobian product of ``backward_fn`` at the same input (the identity when None, sec. 4.1.1).

    ``bpda(module)`` wraps an existing module the same way, e.g. ``defended(model, bpda(BitDepth(3)))``. The
    forward value is exactly ``forward_fn(x)`` (computed without a graph, so ``forward_fn`` may be anything, a
    Pillow round-trip included). A function that changes the shape of its input is refused with a ValueError
    on the first call.
    """
    return BPDA(forward_fn, backward_fn)


def bpda_at(model: nn.Module, paths: list[str] | tuple[str, ...], backward_fn: Fn | None = None) -> nn.Module:
    """``model`` with the submodule at each of ``paths`` (dotted names as ``model.named_modules()`` gives them,
    e.g. ``"transforms.0"``) wrapped in :func:`bpda`: same forward, identity backward there (Athalye et al. 2018,
    sec. 4.1). The user's model is left as it was: the modules on the way to each path are shallow copies, every
    other module and every parameter is shared. A path that names no submodule is a UsageError naming those that
    exist.
    """
    if isinstance(paths, str):
        paths = (paths,)
    names = [name for name, _ in model.named_modules() if name]
    out = model
    for path in paths:
        if not isinstance(path, str) or path not in names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UsageError(f"bpda: the model has no submodule {path!r}; its submodules are: {shown or 'none'}")
        out = _replaced(out, path.split("."), lambda m: m if isinstance(m, BPDA) else BPDA(m, backward_fn))
    return out


def _replaced(module: nn.Module, parts: list[str], wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` whose submodule at ``parts`` is ``wrap(submodule)``."""
    child = module._modules[parts[0]]
    assert child is not None
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._modules[parts[0]] = wrap(child) if len(parts) == 1 else _replaced(child, parts[1:], wrap)
    return new
