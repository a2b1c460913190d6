"""APGD-T, the targeted APGD of AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", sec. 4): APGD (:mod:`advlab.attacks.apgd`) on the targeted
DLR loss towards the classes the model ranks 2nd, 3rd, ..., each run only on the samples still standing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .apgd import apgd_run, check_classes, validate_apgd
from .checks import check_steps, frozen
from .eot import Expected
from .noise import Noise
from .objectives import dlr_loss, margin
from .result import AttackResult
from .state import BestPoint


def apgd_t_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    loss: str = "dlr",
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    seed: int | Tensor | None = None,
    eot_samples: int = 1,
) -> AttackResult:
    """:func:`apgd_t`, always returning the :class:`AttackResult`."""
    inp = validate_apgd(model, x, y, eps, steps, norm, loss, rho, eot_samples)
    assert inp.eps is not None and inp.norm is not None
    restarts = check_steps(restarts, "restarts")
    n_target_classes = check_steps(n_target_classes, "n_target_classes")
    x, y, n = inp.x, inp.y, inp.n
    noise = Noise(seed, n)
    ball = inp.norm.ball(x, inp.eps)
    with frozen(model):
        view = Expected(model, eot_samples, inp.y_max)
        logits = view.logits(x)  # the clean expected prediction ranks the targets
        classes = logits.shape[1]
        check_classes(classes, loss, "toward")
        n_target_classes = min(n_target_classes, classes - 1)  # AutoAttack's 9 on a model of fewer classes
        # The targets: the other classes by the clean expected prediction, y left out (a sample whose clean
        # "misclassification" was not confirmed would otherwise be aimed at y itself).
        order = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        best = BestPoint.start(x)
        # Samples misclassified from the start are done (x itself); the others keep -inf until a run scores them.
        # With K > 1 draws a clean "misclassification" is confirmed on fresh draws first (Expected.confirm).
        clean_break = view.confirm(x, view.success(logits, y), y)
        best.update(x, torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device), clean_break)
        target_rank = torch.where(best.success, 0, -1)
        for rank in range(1, n_target_classes + 1):
            for _ in range(restarts):
                index = best.standing()
                if index.numel() == 0:
                    break
                sub = ball.take(index)
                start = sub.random_start(noise.take(index)) if random_start else sub.x
                run, _ = apgd_run(
                    model, sub, y[index], order[index, rank - 1], start, steps, loss, "toward", rho, inp.y_max, True,
                    eot_samples,
                )
                best.merge(run, index)
                target_rank[index] = torch.where(run.success, rank, target_rank[index])
        final_logits = view.logits(best.x)
        final = dlr_loss(final_logits, y) if classes >= 3 else margin(final_logits, y)
    return AttackResult(best.x, best.success, final, {"target_rank": target_rank})


def apgd_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    loss: str = "dlr",
    restarts: int = 1,
    rho: float = 0.75,
    random_start: bool = True,
    seed: int | Tensor | None = None,
    eot_samples: int = 1,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """APGD-T, the targeted APGD of AutoAttack (Croce & Hein 2020, sec. 4): an untargeted attack that runs APGD
    on the targeted DLR loss (eq. (6)) towards each of the ``n_target_classes`` classes other than y ranked
    highest by the model's clean logits (the 2nd, 3rd, ... of a correctly classified sample), in that order,
    each run only on the samples not yet misclassified
    (``n_target_classes`` is capped at classes - 1, so AutoAttack's default of 9 also suits a 5-class model).

    ``y`` holds the true classes; success means any misclassification. Cost: up to
    ``n_target_classes * restarts * steps`` gradient steps for a sample that never breaks, fewer for the others
    (a broken sample leaves at the next checkpoint and is not attacked towards further targets). A sample
    misclassified from the start is returned unchanged. ``loss="ce"`` uses the targeted cross-entropy instead.

    Returns x_adv, or with ``return_info=True`` an :class:`AttackResult` whose ``loss`` is the untargeted DLR
    at x_adv and whose ``extras["target_rank"]`` (N,) gives the rank of the target class that broke each
    sample (0 if it was misclassified from the start, -1 if never broken). ``eot_samples`` as in
    :func:`apgd`; the target classes are then ranked by the clean expected prediction, and a clean
    misclassification counts only once fresh draws confirm it (:meth:`~advlab.attacks.eot.Expected.confirm`).
    """
    result = apgd_t_result(
        model, x, y, eps, norm=norm, steps=steps, n_target_classes=n_target_classes, loss=loss,
        restarts=restarts, rho=rho, random_start=random_start, seed=seed, eot_samples=eot_samples,
    )
    return result if return_info else result.x_adv
