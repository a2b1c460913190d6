"""The input gradient every gradient attack takes, defined for models whose output has no graph back to the input."""

from __future__ import annotations

import torch
from torch import Tensor


def input_gradient(total: Tensor, x_in: Tensor, *, retain_graph: bool = False) -> Tensor:
    """d total / d x_in, or zeros where the model's output has no graph back to its input (a preprocessor run
    under ``torch.no_grad``, a NumPy round trip). Masked gradients give the attack a masked result, which the
    gradient-masking checks report and BPDA repairs (:mod:`advlab.evaluate.adaptive`), not an exception."""
    if not total.requires_grad:
        return torch.zeros_like(x_in)
    (grad,) = torch.autograd.grad(total, x_in, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x_in) if grad is None else grad
