"""MI-FGSM (Dong et al. 2018): the momentum recursion, box and ball, independence, strength vs FGSM.

The recursion is checked against a reference written here from Algorithm 1 of the paper, on a small non-linear
model: on a linear model the gradient direction never changes, so sign(g) is the same with or without momentum
and a broken momentum would go unnoticed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab import attacks
from tests.conftest import Linear

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def project_l2_box(p: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of p onto {||z - x||_2 <= eps} ∩ [0, 1]^n: clip(x + t (p - x), 0, 1) with the largest
    t in [0, 1] inside the ball (KKT), t found by bisection (||clip(x + t d) - x|| grows with t)."""
    d = p - x

    def size(t: torch.Tensor) -> torch.Tensor:
        return ((x + per_sample(t) * d).clamp(0, 1) - x).flatten(1).norm(dim=1)

    lo, hi = torch.zeros(len(x), dtype=x.dtype), torch.ones(len(x), dtype=x.dtype)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = torch.where(size(mid) <= eps, mid, lo), torch.where(size(mid) <= eps, hi, mid)
    t = torch.where(size(torch.ones_like(lo)) <= eps, 1.0, lo)
    return (x + per_sample(t) * d).clamp(0, 1)


def reference_iterates(model, x, y, eps, alpha, steps, decay, norm, targeted=False) -> list[torch.Tensor]:
    """x_0 = x, ..., x_T of Algorithm 1 (Dong et al. 2018), eq. (9) of the paper for L2."""
    sign = -1.0 if targeted else 1.0  # a targeted attack descends the loss of the target
    g, x_t, iterates = torch.zeros_like(x), x, [x]
    for _ in range(steps):
        x_t = x_t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(sign * F.cross_entropy(model(x_t), y, reduction="sum"), x_t)
        g = decay * g + grad / per_sample(grad.abs().flatten(1).sum(dim=1))  # g_{t+1}, L1-normalised per sample
        if norm == "linf":
            x_t = torch.minimum(torch.maximum(x_t.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        else:
            x_t = project_l2_box(x_t.detach() + alpha * g / per_sample(g.flatten(1).norm(dim=1)), x, eps)
        iterates.append(x_t)
    return iterates


@torch.no_grad()
def reference_best(model, iterates, y, targeted=False) -> tuple[torch.Tensor, torch.Tensor]:
    """The point advlab returns: the best iterate met, a successful one first, then the highest objective (the
    earliest on ties); returned with its index."""
    n = len(y)
    best_x, best_index = iterates[0], torch.zeros(n, dtype=torch.long)
    best_success, best_objective = torch.zeros(n, dtype=torch.bool), torch.full((n,), -torch.inf, dtype=torch.float64)
    for k, x_k in enumerate(iterates):
        logits = model(x_k)
        objective = F.cross_entropy(logits, y, reduction="none") * (-1.0 if targeted else 1.0)
        success = logits.argmax(1) == y if targeted else logits.argmax(1) != y
        better = (success & ~best_success) | ((success == best_success) & (objective > best_objective))
        best_x, best_index = torch.where(per_sample(better), x_k, best_x), torch.where(better, k, best_index)
        best_objective, best_success = torch.where(better, objective, best_objective), best_success | success
    return best_x, best_index


def tanh_mlp() -> nn.Module:
    """A seeded 16-12-3 tanh MLP in float64, steep enough that the gradient turns along an attack's path."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    with torch.no_grad():
        model[1].weight.mul_(3)
    return model


def images(low: float, high: float, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return low + (high - low) * torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)


# (norm, eps, alpha, pixel range, atol). linf: x spans [0, 1], so the [0, 1] box clips some steps; the clip is
# exact and so is the comparison. l2 "inside": the ball never leaves the box, the projection is a rescaling.
# l2 "box": the box binds, and advlab's projection onto ball ∩ box is an iteration from below (to ~1e-4 here).
SETTINGS = {
    "linf": ("linf", 0.15, 0.03, (0.0, 1.0), 1e-12),
    "l2_inside": ("l2", 0.3, 0.06, (0.3, 0.7), 1e-12),
    "l2_box": ("l2", 0.6, 0.12, (0.0, 1.0), 1e-3),
}


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_prefix_of_the_trajectory_matches_algorithm_1(setting: str, decay: float) -> None:
    norm, eps, alpha, (low, high), atol = SETTINGS[setting]
    model, x, y = tanh_mlp(), images(low, high), torch.arange(8) % 3
    steps = 8
    iterates = reference_iterates(model, x, y, eps, alpha, steps, decay, norm)
    last_is_best = 0
    # alpha fixed, so steps=t runs the first t steps of the same trajectory: each prefix is compared.
    for t in range(1, steps + 1):
        expected, index = reference_best(model, iterates[: t + 1], y)
        got = attacks.mifgsm(model, x, y, eps, alpha=alpha, steps=t, decay=decay, norm=norm)
        torch.testing.assert_close(got, expected, rtol=0, atol=atol, msg=f"{setting}, decay {decay}, steps {t}")
        last_is_best += int((index == t).sum())
    # Not vacuous: the points compared are mostly the newest iterate, not one the best-point rule froze early.
    assert last_is_best >= 0.8 * 8 * steps
    # The default step alpha = eps / steps (the paper's choice).
    expected, _ = reference_best(model, reference_iterates(model, x, y, eps, eps / steps, steps, decay, norm), y)
    got = attacks.mifgsm(model, x, y, eps, steps=steps, decay=decay, norm=norm)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def test_targeted_mifgsm_matches_algorithm_1() -> None:
    model, x = tanh_mlp(), images(0.0, 1.0)
    target = (torch.arange(8) + 1) % 3
    iterates = reference_iterates(model, x, target, 0.2, 0.04, 6, 1.0, "linf", targeted=True)
    expected, _ = reference_best(model, iterates, target, targeted=True)
    got = attacks.mifgsm(model, x, target, 0.2, alpha=0.04, steps=6, targeted=True, return_info=True)
    torch.testing.assert_close(got.x_adv, expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(got.success, model(got.x_adv).argmax(1) == target)


@pytest.mark.parametrize("setting", ["linf", "l2_inside"])
def test_decay_is_used_decay_0_and_1_differ_and_each_is_algorithm_1_with_its_own_decay(setting: str) -> None:
    norm, eps, alpha, (low, high), atol = SETTINGS[setting]
    model, x, y = tanh_mlp(), images(low, high), torch.arange(8) % 3
    got, ref = {}, {}
    for decay in (0.0, 1.0):
        got[decay] = attacks.mifgsm(model, x, y, eps, alpha=alpha, steps=10, decay=decay, norm=norm)
        ref[decay], _ = reference_best(model, reference_iterates(model, x, y, eps, alpha, 10, decay, norm), y)
        torch.testing.assert_close(got[decay], ref[decay], rtol=0, atol=atol)
    # Momentum changes where the attack goes on a non-linear model, for most samples and by much more than atol.
    moved = (got[0.0] - got[1.0]).flatten(1).abs().amax(dim=1)
    assert int((moved > 1e-3).sum()) >= 6, moved
    # So each result is the reference with its own decay and not with the other one.
    for decay, other in ((0.0, 1.0), (1.0, 0.0)):
        assert float((got[decay] - ref[other]).abs().max()) > 1e-3


def test_on_a_linear_model_every_step_follows_sign_w() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = Linear(torch.stack([torch.zeros_like(w), w]), torch.zeros(2, dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    # The CE gradient is a positive multiple of w at every step, so the momentum keeps sign(w) and
    # T steps of eps / T add up to x + eps sign(w).
    x_adv = attacks.mifgsm(model, x, y, 0.05, steps=5)
    torch.testing.assert_close(x_adv.flatten(1), x.flatten(1) + 0.05 * torch.sign(w), rtol=0, atol=1e-12)


def test_momentum_accumulates_normalised_gradients() -> None:
    """With decay 0 MI-FGSM is BIM (same alpha); with decay > 0 it differs on a non-linear model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = torch.arange(6) % 3
    no_momentum = attacks.mifgsm(model, x, y, 0.2, alpha=0.05, steps=8, decay=0.0, return_info=True)
    bim = attacks.bim(model, x, y, 0.2, alpha=0.05, steps=8, return_info=True)
    torch.testing.assert_close(no_momentum.x_adv, bim.x_adv, rtol=0, atol=1e-12)
    batch = attacks.mifgsm(model, x, y, 0.2, alpha=0.05, steps=8)
    for i in range(6):
        torch.testing.assert_close(
            batch[i : i + 1], attacks.mifgsm(model, x[i : i + 1], y[i : i + 1], 0.2, alpha=0.05, steps=8)
        )
    assert float((batch - x).abs().max()) <= 0.2 + 1e-12 and float(batch.min()) >= 0 and float(batch.max()) <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mifgsm_is_at_least_as_strong_as_fgsm_on_the_digits_cnn(norm: str, digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    eps = 0.1 if norm == "linf" else 0.8
    fg = attacks.fgsm(model, x, y, eps, norm=norm, return_info=True)
    mi = attacks.mifgsm(model, x, y, eps, steps=10, norm=norm, return_info=True)
    assert float(mi.success.float().mean()) >= float(fg.success.float().mean())
    size = (mi.x_adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    assert bool((size <= eps + 1e-5).all())


def test_bad_decay_raises() -> None:
    model = Linear(torch.randn(3, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="decay"):
        attacks.mifgsm(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), 0.1, decay=-1.0)
