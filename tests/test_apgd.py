"""APGD-CE / APGD-DLR / APGD-T (Croce & Hein 2020): checkpoints, analytic optima on linear models, the exact
robust accuracy of a linear classifier, per-sample independence, model hygiene, strength on a real model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import attacks
from advlab.attacks.apgd import checkpoints, dlr_loss, targeted_dlr_loss
from tests.conftest import Linear, digits_cnn


def logistic(d: int, seed: int = 0) -> tuple[Linear, torch.Tensor]:
    """Two classes with logits (0, w.x + b), float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    model = Linear(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, 0.3], dtype=torch.float64))
    return model, w


def linear(classes: int, d: int, seed: int) -> Linear:
    g = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(classes, d, generator=g, dtype=torch.float64), torch.randn(classes, generator=g).double())


def exact_breakable(model: Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For a linear classifier the largest z_k - z_y over the Linf ball intersected with the box is attained at
    the vertex delta_i = hi_i where (w_k - w_y)_i > 0, else lo_i. Returns (breakable, best margin) per sample."""
    xf = x.flatten(1)
    lo, hi = (xf - eps).clamp(0, 1) - xf, (xf + eps).clamp(0, 1) - xf
    w, b = model.weight.detach(), model.bias.detach()
    diff = w[None, :, :] - w[y][:, None, :]  # (N, K, d): w_k - w_y
    gain = torch.where(diff > 0, diff * hi[:, None, :], diff * lo[:, None, :]).sum(2)
    z = xf @ w.T + b
    best = z - z.gather(1, y[:, None]) + gain
    best.scatter_(1, y[:, None], float("-inf"))
    top = best.amax(1)
    return top > 0, top


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoints_follow_the_papers_schedule() -> None:
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (steps shrink by 0.03, never below 0.06).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    for n in range(1, 300):
        w = checkpoints(n)
        assert w == sorted(set(w)) and w[0] >= 1 and w[-1] <= n


def test_dlr_losses_match_their_definitions() -> None:
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0, 2.0]])
    y = torch.tensor([0])
    # Sorted: 3, 2, 1, 0.5, -1. DLR = -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3) = -(3 - 2) / (3 - 1).
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5]), rtol=0, atol=1e-6)
    # Targeted towards class 4: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(3 - 2) / (3 - 0.75).
    torch.testing.assert_close(targeted_dlr_loss(z, y, torch.tensor([4])), torch.tensor([-1 / 2.25]))
    # Both are invariant to shifting and (positively) scaling the logits.
    torch.testing.assert_close(dlr_loss(7 * z + 3, y), dlr_loss(z, y))
    torch.testing.assert_close(targeted_dlr_loss(7 * z + 3, y, torch.tensor([4])), torch.tensor([-1 / 2.25]))


# ------------------------------------------------------------------------------------- analytic optima


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_linf_reaches_the_optimal_vertex_of_a_linear_model(loss: str) -> None:
    if loss == "dlr":
        g = torch.Generator().manual_seed(3)
        model = Linear(torch.randn(3, 16, generator=g, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
        model.weight.data[0] += 10  # class 0 cannot be left: the optimum of every loss is the far vertex
    else:
        model, _ = logistic(16)
    g = torch.Generator().manual_seed(1)
    x = 0.1 + 0.8 * torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.05
    res = attacks.apgd(model, x, y, eps, steps=50, loss=loss, seed=0, return_info=True)
    if loss == "ce":
        # CE grows with w.x: the optimum is x + eps sign(w), inside the box here.
        expected = x.flatten(1) + eps * torch.sign(model.weight[1].detach())
        torch.testing.assert_close(res.x_adv.flatten(1), expected, rtol=0, atol=1e-12)
    else:
        _, top = exact_breakable(model, x, y, eps)
        z = model(res.x_adv)
        reached = (z[:, 1:] - z[:, :1]).amax(1)
        assert not res.success.any()
        # DLR's denominator also moves, so the vertex is optimal for the margin, not for the ratio; the margin
        # must still come close to its exact maximum.
        assert bool((reached <= top + 1e-9).all()) and bool((reached >= top - 0.25 * top.abs()).all())


def test_apgd_l2_reaches_the_optimum_of_a_linear_model() -> None:
    model, w = logistic(16)
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.long)
    eps = 0.2  # the optimum x + eps w / ||w|| stays inside the box
    x_adv = attacks.apgd(model, x, y, eps, norm="l2", steps=100, seed=0)
    expected = x.flatten(1) + eps * w / w.norm()
    torch.testing.assert_close(x_adv.flatten(1), expected, rtol=0, atol=1e-6)


def test_apgd_t_finds_the_exact_robust_accuracy_of_a_linear_classifier() -> None:
    model = linear(10, 24, seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(64, 1, 4, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correctly classified
    eps = 0.04
    breakable, top = exact_breakable(model, x, y, eps)
    assert 0.2 < breakable.float().mean() < 0.8, "the test needs both robust and breakable samples"
    res = attacks.apgd_t(model, x, y, eps, steps=30, seed=torch.arange(64), return_info=True)
    clear = top.abs() > 1e-6  # leave out samples exactly on the boundary
    assert torch.equal(res.success[clear], breakable[clear])
    # Non-robust samples are misclassified at x_adv, which is inside the ball and the box.
    assert torch.equal(model(res.x_adv).argmax(1) != y, res.success)
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-12
    ranks = res.extras["target_rank"]
    assert bool((ranks[res.success] >= 1).all()) and bool((ranks[~res.success] == -1).all())


# ------------------------------------------------------------------------------------ independence


def _cnn64() -> nn.Module:
    torch.manual_seed(0)
    return digits_cnn().double()


CASES = {
    "apgd_ce": lambda m, x, y, s: attacks.apgd(m, x, y, 0.1, steps=12, restarts=2, seed=s, return_info=True),
    "apgd_dlr_l2": lambda m, x, y, s: attacks.apgd(
        m, x, y, 0.5, norm="l2", loss="dlr", steps=12, seed=s, return_info=True
    ),
    "apgd_targeted": lambda m, x, y, s: attacks.apgd(
        m, x, (y + 1) % 10, 0.1, loss="dlr", targeted=True, steps=12, seed=s, return_info=True
    ),
    "apgd_t": lambda m, x, y, s: attacks.apgd_t(m, x, y, 0.1, steps=10, n_target_classes=3, seed=s, return_info=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_sample_gets_what_it_gets_alone_and_order_does_not_matter(name: str) -> None:
    model = _cnn64()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    seeds = torch.tensor([21, 22, 23, 24, 25])
    batch = CASES[name](model, x, y, seeds)
    for i in range(5):
        alone = CASES[name](model, x[i : i + 1], y[i : i + 1], seeds[i : i + 1])
        torch.testing.assert_close(batch.x_adv[i : i + 1], alone.x_adv, rtol=0, atol=1e-12)
        assert bool(batch.success[i]) == bool(alone.success[0])
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = CASES[name](model, x[perm], y[perm], seeds[perm])
    torch.testing.assert_close(batch.x_adv[perm], permuted.x_adv, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- hygiene, errors


def test_model_is_left_as_it_was_and_input_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    model.train()
    model[1].eval()
    stats = model[1].running_mean.clone()
    x = torch.rand(4, 1, 8, 8)
    x0 = x.clone()
    attacks.apgd(model, x, torch.arange(4), 0.1, steps=5, seed=0)
    attacks.apgd_t(model, x, torch.arange(4), 0.1, steps=5, n_target_classes=2, seed=0)
    assert model.training and not model[1].training and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, stats) and torch.equal(x, x0)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"norm": "l1"}, ValueError, "norm"),
        ({"loss": "hinge"}, ValueError, "loss"),
        ({"rho": 1.5}, ValueError, "rho"),
        ({"steps": 0}, ValueError, "steps"),
        ({"restarts": 0}, ValueError, "restarts"),
        ({"eps": -0.1}, ValueError, "eps"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs: dict, error: type, fragment: str) -> None:
    model = linear(5, 16, 0)
    x, y = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    args = {"eps": 0.1, **kwargs}
    with pytest.raises(error, match=fragment):
        attacks.apgd(model, x, y, args.pop("eps"), **args)


def test_dlr_needs_enough_classes_and_targets_are_capped_by_the_model() -> None:
    x, y = torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.apgd(logistic(16)[0], x, y, 0.1, loss="dlr")
    with pytest.raises(ValueError, match="at least 4 classes"):
        attacks.apgd_t(linear(3, 16, 0), x, y, 0.1)
    # More targets than other classes (AutoAttack's 9 on a 5-class model) is capped at classes - 1.
    model = linear(5, 16, 0)
    capped = attacks.apgd_t(model, x, y, 0.1, steps=5, n_target_classes=9, seed=0, return_info=True)
    every = attacks.apgd_t(model, x, y, 0.1, steps=5, n_target_classes=4, seed=0, return_info=True)
    assert torch.equal(capped.x_adv, every.x_adv)
    assert torch.equal(capped.extras["target_rank"], every.extras["target_rank"])


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    eps=st.floats(0.0, 0.6),
    norm=st.sampled_from(["linf", "l2"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31),
)
def test_result_stays_in_box_and_ball(n: int, c: int, eps: float, norm: str, dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(4, c * 9, generator=g).to(dtype), torch.randn(4, generator=g).to(dtype))
    x = torch.rand(n, c, 3, 3, generator=g).to(dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    for x_adv in (
        attacks.apgd(model, x, y, eps, norm=norm, steps=6, seed=seed),
        attacks.apgd_t(model, x, y, eps, norm=norm, steps=6, n_target_classes=2, seed=seed),
    ):
        assert x_adv.shape == x.shape and x_adv.dtype == dtype
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        size = (x_adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
        assert bool((size <= eps + 1e-6).all())


# ------------------------------------------------------------------------------------ on a real model


def test_apgd_is_strong_on_the_digits_cnn(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:120], y[:120]
    eps = 0.1
    pgd = attacks.pgd(model, x, y, eps, steps=40, seed=0, return_info=True)
    ce = attacks.apgd(model, x, y, eps, steps=40, seed=0, return_info=True)
    t = attacks.apgd_t(model, x, y, eps, steps=40, n_target_classes=9, seed=0, return_info=True)
    acc = {k: 1 - float(r.success.float().mean()) for k, r in {"pgd": pgd, "ce": ce, "t": t}.items()}
    assert acc["ce"] <= acc["pgd"] + 0.02, acc  # at least as strong as PGD with Madry's step, up to chance
    assert acc["t"] <= acc["ce"] + 0.02, acc
    # The loss trace starts finite and the loss rises for the samples APGD works on.
    trace = ce.extras["loss_trace"]
    assert trace.shape == (41, 120) and bool(torch.isfinite(trace[0]).all())
    later = torch.nan_to_num(trace[1:], nan=-float("inf")).amax(0)
    assert float((later > trace[0]).float().mean()) > 0.9
    # Targeted APGD reaches its targets.
    target = (y + 1) % 10
    hit = attacks.apgd(model, x, target, 0.3, steps=40, targeted=True, loss="dlr", seed=0, return_info=True)
    assert float(hit.success.float().mean()) >= 0.9
    assert torch.equal(model(hit.x_adv).argmax(1)[hit.success], target[hit.success])
