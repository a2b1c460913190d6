"""FAB-T, the targeted form of FAB that AutoAttack runs (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020, sec. 4; FAB itself: ICML 2020):
an untargeted minimal-norm attack made of targeted FAB runs, one per likely class.

Untargeted FAB linearises every class's boundary at each step, which costs one backward pass per class;
targeted FAB linearises only one boundary, one backward. FAB-T runs towards each of the ``n_target_classes``
classes the clean logits rank highest after the true one, each run linearising the boundary between that
target and the true label (f = z_t - z_y, as AutoAttack's FAB-T) and counting any misclassification met on
the way, in whichever class it lands; per sample it keeps the smallest such perturbation, at about the cost
of one untargeted run on a model with ``n_target_classes + 1`` classes and often with smaller perturbations,
since each run follows one boundary all the way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_steps, first_logits, frozen, validate
from .fab import FAB_NORMS, fab_run
from .norms import ALL_NORM_NAMES, get_norm
from .result import AttackResult
from .state import SmallestPoint


def fab_t_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
) -> AttackResult:
    """:func:`fab_t`, always returning the :class:`AttackResult`."""
    if norm not in FAB_NORMS:
        raise ValueError(f"fab_t: unknown norm {norm!r}; expected one of {', '.join(map(repr, FAB_NORMS))}")
    inp = validate(model, x, y, norm=norm, norms=ALL_NORM_NAMES, steps=steps)
    n_target_classes = check_steps(n_target_classes, "n_target_classes")
    x, y = inp.x, inp.y
    geometry = get_norm(norm)
    best = SmallestPoint.start(x)
    with frozen(model), torch.no_grad():
        logits = first_logits(model, x, inp.y_max)
    # x itself where the model already gets it wrong (distance 0).
    best.update(x, logits.argmax(dim=1) != y, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    for r in range(min(n_target_classes, logits.shape[1] - 1)):
        # Towards target r against the true label; any misclassification on the way counts (AutoAttack's FAB-T).
        res = fab_run(
            model, x, ranked[:, r], norm=norm, steps=steps, eta=eta, beta=beta, alpha_max=alpha_max, targeted=True,
            label=y,
        )  # fmt: skip
        best.update(res.x_adv, res.success, res.extras["distance"])
    return best.result(x, geometry)


def fab_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    eta: float = 1.05,
    beta: float = 0.9,
    alpha_max: float = 0.1,
    return_info: bool = False,
) -> Tensor | AttackResult:
    """FAB-T (AutoAttack's targeted FAB) in ``norm`` "linf", "l2" or "l1": for each of the ``n_target_classes``
    classes with the highest clean logits other than the label ``y``, a targeted :func:`~advlab.attacks.fab`
    run of ``steps`` steps (the same ``eta``, ``beta``, ``alpha_max``) on every sample, aimed at the boundary
    between the target and the label; per sample, the smallest perturbation the model misclassifies is kept
    (x itself, distance 0, where x is already misclassified).

    Untargeted: ``y`` holds the true labels. Each sample's runs are its own (targets from its own clean
    logits), so it gets what it would get alone. Returns that point (x where none was found), or with
    ``return_info=True`` an :class:`AttackResult` with ``extras["distance"]`` (inf where none was found).
    """
    result = fab_t_result(
        model, x, y, norm=norm, steps=steps, n_target_classes=n_target_classes, eta=eta, beta=beta,
        alpha_max=alpha_max,
    )
    return result if return_info else result.x_adv
