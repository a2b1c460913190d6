"""What an attack maximises and what counts as success, kept apart from how it searches (the Foolbox 3 split).

Every objective is per sample (no batch mean), so that the gradient of ``objective(...).sum()`` with respect to
sample i depends on sample i alone: that is what makes each sample's result independent of its batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

# Float rounding differs between equal computations (batch size, memory layout, thread count, a prepared model
# against the model as given) by about 1e-6 of the logits' scale. A point whose margin clears the boundary by
# less than this fraction of the largest |logit| could flip back when the caller re-evaluates it.
ROUNDING_SLACK = 1e-4
DLR_TINY = 1e-12  # Croce & Hein's guard against a zero DLR denominator


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{i != label} Z_i - Z_label per sample: positive exactly when ``label`` is not the top-1 class.

    This is the margin of Carlini & Wagner (2017), objective f_6, with the sign that makes it grow as the
    sample moves away from ``label``.
    """
    z_label = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - z_label


def rounding_slack(logits: Tensor) -> Tensor:
    """Per-sample margin (logit units) a point must clear the boundary by to count as past it for sure."""
    return ROUNDING_SLACK * logits.detach().abs().amax(dim=1)


def objective(logits: Tensor, labels: Tensor, loss: str, targeted: bool) -> Tensor:
    """Per-sample value the attack ascends: the loss of the true class ("ce" or "margin"), or minus the loss of
    the target when ``targeted``."""
    value = F.cross_entropy(logits, labels, reduction="none") if loss == "ce" else margin(logits, labels)
    return -value if targeted else value


def is_success(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Top-1 is the target (targeted), or is not the true class (untargeted)."""
    pred = logits.argmax(dim=1)
    return pred == labels if targeted else pred != labels


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio, eq. (5) of Croce & Hein 2020, with the sign that makes it grow as x breaks:

    DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12),

    where pi orders the logits decreasingly. Invariant to shifting and scaling the logits. Needs 3 classes.
    """
    top = logits.topk(3, dim=1).values
    return margin(logits, y) / (top[:, 0] - top[:, 2] + DLR_TINY)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR, eq. (6) of Croce & Hein 2020: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

    Grows as the target logit z_t overtakes the true logit z_y. Needs at least 4 classes.
    """
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_TINY)
