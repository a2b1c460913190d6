"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016): a minimal-perturbation baseline, L2 and Linf."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .checks import check_steps, first_logits, frozen, validate
from .gradient import input_gradient
from .norms import batch_view
from .objectives import margin, rounding_slack
from .result import AttackResult


def deepfool_result(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    norm: str = "l2",
) -> AttackResult:
    """:func:`deepfool`, always returning the :class:`AttackResult`."""
    inp = validate(model, x, y, norm=norm, steps=steps)
    assert inp.norm is not None
    x, y, y_max, geometry = inp.x, inp.y, inp.y_max, inp.norm
    candidates = check_steps(candidates, "candidates")
    if candidates < 2:
        raise ValueError(f"candidates must be >= 2 (the true class and at least one other), got {candidates}")
    if isinstance(overshoot, bool) or not isinstance(overshoot, int | float) or not overshoot >= 0:
        raise ValueError(f"overshoot must be a number >= 0, got {overshoot!r}")
    n = x.shape[0]

    with frozen(model):
        r_total = torch.zeros_like(x)
        x_i = x.detach().clone()
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        others = y[:, None]
        k = 0
        for i in range(steps + 1):
            x_i.requires_grad_(True)
            z = first_logits(model, x_i, y_max) if i == 0 else model(x_i)
            if i == 0:
                k = min(candidates, z.shape[1]) - 1
                others = z.detach().scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices  # (N, k)
            # Past the boundary by a rounding slack: the caller's re-evaluation must agree with ``success``.
            done = done | (margin(z.detach(), y) > rounding_slack(z))
            if i == steps or bool(done.all()):
                break
            f = z.gather(1, others) - z.gather(1, y[:, None])  # (N, k): f'_k
            grads = [input_gradient(f[:, j].sum(), x_i, retain_graph=j < k - 1) for j in range(k)]
            with torch.no_grad():
                w = torch.stack(grads, dim=1)  # (N, k, ...)
                dual = geometry.dual_size(w.flatten(0, 1)).view(n, k)
                distance = f.detach().abs() / (dual + 1e-8)
                l = distance.argmin(dim=1)
                pick = torch.arange(n, device=x.device)
                w_l, f_l, dual_l = w[pick, l], f.detach()[pick, l].abs() + 1e-4, dual[pick, l]
                # The step onto the linearised boundary: |f_l| / ||w_l||_* along the norm's steepest direction.
                step = geometry.ascent_step_(w_l.clone(), f_l / (dual_l + 1e-8))
                # A sample that is already misclassified stays where it is.
                r_total += step * batch_view((~done).to(x.dtype), step)
                x_i = (x + (1 + overshoot) * r_total).clamp_(0, 1)
        success = done
        x_adv = torch.where(batch_view(success, x), x_i.detach(), x)
    size = geometry.size(x_adv - x)
    size = torch.where(success, size, torch.full_like(size, float("inf")))
    return AttackResult(x_adv, success, -size, {"norm": size})


def deepfool(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    norm: str = "l2",
    return_info: bool = False,
) -> Tensor | AttackResult:
    """Multi-class DeepFool, Algorithm 2 of Moosavi-Dezfooli et al. 2016, with the p = inf variant of sec. 3.3.

    At iterate x_i, for every candidate class k != y, with f'_k = Z_k(x_i) - Z_y(x_i) and
    w'_k = grad Z_k(x_i) - grad Z_y(x_i), the nearest linearised boundary is l = argmin_k |f'_k| / ||w'_k||_q
    (q = 2 for L2, q = 1 for Linf, the dual norm), and the step that reaches it is
      L2:   r_i = |f'_l| / ||w'_l||_2^2 * w'_l
      Linf: r_i = |f'_l| / ||w'_l||_1 * sign(w'_l).
    The steps add up to r, and x_{i+1} = clip_[0,1](x + (1 + overshoot) r), until the label leaves y. As in
    the authors' code, 1e-4 is added to |f'_l| so that a step lands past the boundary, and the candidates are
    the ``candidates - 1`` classes with the highest clean logits besides y (10 classes in all on ImageNet).

    The box constraint is not in the paper; clipping each iterate keeps x_adv a valid image. Each sample stops
    when it is misclassified by more than ``rounding_slack`` (1e-4 of its largest |logit|, so that re-evaluating
    x_adv with other float rounding, e.g. one thread instead of two, gives the same label); the loop ends when
    all have (one host sync per iteration: DeepFool usually needs 2-3 iterations, so stopping early saves far
    more than the sync costs).

    Returns x_adv (unchanged where DeepFool failed within ``steps``), or with ``return_info=True`` an
    :class:`AttackResult` whose ``extras["norm"]`` is the perturbation's size in ``norm`` (inf where it failed).
    """
    result = deepfool_result(
        model, x, y, steps=steps, overshoot=overshoot, candidates=candidates, norm=norm,
    )
    return result if return_info else result.x_adv
