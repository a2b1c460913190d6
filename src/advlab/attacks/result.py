"""What an attack returns with ``return_info=True``."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns when called with ``return_info=True``.

    Attributes:
        x_adv: the adversarial batch, same shape, dtype and device as the input.
        success: bool tensor (N,): the model's top-1 at ``x_adv`` is not the true class (untargeted) or is
            the target (targeted). For CW the success test includes the confidence margin ``kappa``.
        loss: per-sample value of the attack's objective at ``x_adv`` (higher is stronger), when defined.
        extras: attack-specific per-sample tensors (e.g. CW's ``l2`` and final ``c``).
    """

    x_adv: Tensor
    success: Tensor
    loss: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
