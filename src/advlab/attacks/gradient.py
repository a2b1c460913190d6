"""The input gradient every gradient attack takes, defined for models whose output has no graph back to the input."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .checks import caller_stacklevel


def input_gradient(total: Tensor, x_in: Tensor, *, retain_graph: bool = False) -> Tensor:
    """d total / d x_in, or zeros where the model's output has no graph back to its input (a preprocessor run
    under ``torch.no_grad``, a NumPy round trip). Masked gradients give the attack a masked result, which the
    gradient-masking checks report and BPDA repairs (:mod:`advlab.evaluate.adaptive`), not an exception; a
    ``RuntimeWarning`` says so (once per call site, Python's default filter). Graph structure only: no host sync."""
    if not (torch.is_grad_enabled() and x_in.requires_grad):  # the attack's own doing, never the model's
        raise RuntimeError("input_gradient needs grad mode on and an input that requires grad")
    if not total.requires_grad:
        warnings.warn(
            "the model's output has no graph back to its input (a preprocessor under torch.no_grad, a NumPy round "
            "trip?): its input gradient is zero, so gradient attacks cannot move; check for gradient masking "
            "(advlab eval --sanity) and wrap such a module in BPDA (advlab.defenses.bpda_at, --suite adaptive)",
            RuntimeWarning,
            stacklevel=caller_stacklevel(),
        )
        return torch.zeros_like(x_in)
    (grad,) = torch.autograd.grad(total, x_in, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x_in) if grad is None else grad
