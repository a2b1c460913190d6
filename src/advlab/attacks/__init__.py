"""Adversarial attacks as plain functions: ``x_adv = attack(model, x, y, ...)``.

Every attack takes a model that maps images in [0, 1] (N, C, H, W) to logits (N, K), calls that model and
nothing else, leaves it as it was (mode, requires_grad, no .grad), and returns a tensor shaped like ``x``, in
[0, 1] and inside the eps-ball of its norm; ``return_info=True`` returns an :class:`AttackResult` instead (each
``<attack>_result`` function always does). ``targeted=True`` reads ``y`` as the target classes.

The kernel the attacks are built from is public too, for new attacks and for the evaluation layer:
:mod:`~advlab.attacks.checks` (``validate`` and the model guard ``frozen``), :mod:`~advlab.attacks.objectives`,
:mod:`~advlab.attacks.norms` (one geometry per norm), :mod:`~advlab.attacks.noise`,
:mod:`~advlab.attacks.state` (per-sample state and best points), :mod:`~advlab.attacks.ascent` (the shared
steepest-ascent loop) and :mod:`~advlab.attacks.eot` (the expectation over a randomized model's draws behind
``eot_samples`` of the gradient attacks).
"""

from .apgd import apgd, apgd_result
from .apgd_l1 import apgd_l1, apgd_l1_result
from .apgd_t import apgd_t, apgd_t_result
from .cw import cw_l2, cw_l2_result
from .ddn import ddn, ddn_result
from .deepfool import deepfool, deepfool_result
from .fab import fab, fab_result
from .fab_t import fab_t, fab_t_result
from .fgsm import fgsm, fgsm_result
from .fmn import fmn, fmn_result
from .mifgsm import mifgsm, mifgsm_result
from .minimal import MINIMAL_MEMBERS, minimal, minimal_result
from .pgd import bim, bim_result, pgd, pgd_result
from .result import AttackResult
from .sigma_zero import sigma_zero, sigma_zero_result
from .square import square, square_result

# The attacks by name, as the evaluation layer registers them (each also has an ``<name>_result`` form).
ATTACKS: tuple[str, ...] = (
    "apgd", "apgd_l1", "apgd_t", "bim", "cw_l2", "ddn", "deepfool", "fab", "fab_t", "fgsm", "fmn", "mifgsm", "minimal",
    "pgd", "sigma_zero", "square",
)

__all__ = [
    "ATTACKS",
    "MINIMAL_MEMBERS",
    "AttackResult",
    "apgd",
    "apgd_l1",
    "apgd_l1_result",
    "apgd_result",
    "apgd_t",
    "apgd_t_result",
    "bim",
    "bim_result",
    "cw_l2",
    "cw_l2_result",
    "ddn",
    "ddn_result",
    "deepfool",
    "deepfool_result",
    "fab",
    "fab_result",
    "fab_t",
    "fab_t_result",
    "fgsm",
    "fgsm_result",
    "fmn",
    "fmn_result",
    "mifgsm",
    "mifgsm_result",
    "minimal",
    "minimal_result",
    "pgd",
    "pgd_result",
    "sigma_zero",
    "sigma_zero_result",
    "square",
    "square_result",
]
