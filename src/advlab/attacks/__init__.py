"""Adversarial attacks as plain functions: ``x_adv = attack(model, x, y, ...)``.

Every attack takes a model that maps images in [0, 1] (N, C, H, W) to logits (N, K), leaves the model as it
was (mode, requires_grad, no .grad), and returns a tensor shaped like ``x``, in [0, 1] and inside the eps-ball
of its norm; ``return_info=True`` returns an :class:`AttackResult` instead. ``targeted=True`` reads ``y`` as
the target classes.
"""

from ._core import AttackResult, prepared_models
from .apgd import apgd, apgd_t
from .cw import cw_l2
from .deepfool import deepfool
from .fgsm import fgsm
from .mifgsm import mifgsm
from .pgd import bim, pgd
from .square import square

__all__ = [
    "AttackResult",
    "apgd",
    "apgd_t",
    "bim",
    "cw_l2",
    "deepfool",
    "fgsm",
    "mifgsm",
    "pgd",
    "prepared_models",
    "square",
]
