"""DeepFool (Moosavi-Dezfooli et al. 2016): exact on linear models (the step lands on the nearest boundary
times 1 + overshoot), minimal on a real model compared with a bounded attack, independence, hygiene, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab import attacks
from tests.conftest import Linear


def linear(classes: int, d: int, seed: int) -> Linear:
    g = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(classes, d, generator=g, dtype=torch.float64), torch.randn(classes, generator=g).double())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_one_step_reaches_the_nearest_boundary_of_a_linear_classifier(norm: str) -> None:
    model = linear(6, 16, seed=1)
    g = torch.Generator().manual_seed(2)
    x = 0.4 + 0.2 * torch.rand(10, 1, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w, overshoot = model.weight.detach(), 0.02
    # Exact distance to the boundary with class k: |z_k - z_y| / ||w_k - w_y||_q, q the dual norm.
    diff = w[None] - w[y][:, None]  # (N, K, d)
    dual = diff.norm(p=2 if norm == "l2" else 1, dim=2)
    f = (z - z.gather(1, y[:, None])).abs()
    ratio = torch.where(torch.arange(6)[None] == y[:, None], float("inf"), f / dual)
    nearest = ratio.argmin(1, keepdim=True)
    distance = ((f.gather(1, nearest) + 1e-4) / dual.gather(1, nearest)).squeeze(1)
    res = attacks.deepfool(model, x, y, norm=norm, overshoot=overshoot, return_info=True)
    assert res.success.all()
    size = res.extras["norm"]
    # For a linear model one step lands exactly on the nearest linear boundary; the overshoot pushes past it.
    torch.testing.assert_close(size, (1 + overshoot) * distance, rtol=1e-7, atol=1e-12)
    p = 2 if norm == "l2" else float("inf")
    torch.testing.assert_close(size, (res.x_adv - x).flatten(1).norm(p=p, dim=1))


def test_deepfool_is_minimal_compared_with_a_bounded_attack(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    res = attacks.deepfool(model, x, y, return_info=True)
    correct = model(x).argmax(1) == y
    assert bool(res.success[correct].float().mean() >= 0.95)
    assert torch.equal(
        model(res.x_adv).argmax(1)[res.success] != y[res.success], torch.ones_like(y[res.success]).bool()
    )
    # Samples APGD cannot break within L2 radius r must need more than r for DeepFool too.
    r = 0.4
    apgd = attacks.apgd(model, x, y, r, norm="l2", steps=30, seed=0, return_info=True)
    assert bool((res.extras["norm"][correct & ~apgd.success] > r).all())
    # Misclassified samples need no perturbation.
    assert bool((res.extras["norm"][~correct] == 0).all())


def test_failed_samples_come_back_unchanged_and_sizes_are_inf() -> None:
    model = linear(4, 16, seed=3)
    model.bias.data[0] = 1e4  # class 0 cannot be left within the box
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    res = attacks.deepfool(model, x, y, steps=3, return_info=True)
    assert not res.success.any() and torch.equal(res.x_adv, x)
    assert bool(torch.isinf(res.extras["norm"]).all())


def test_each_sample_gets_what_it_gets_alone_and_model_is_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10), nn.Dropout(0.3)).double()
    model.train()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(5)
    batch = attacks.deepfool(model, x, y, candidates=4)
    for i in range(5):
        alone = attacks.deepfool(model, x[i : i + 1], y[i : i + 1], candidates=4)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-12)
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"candidates": 1}, "candidates"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"norm": "l1"}, "norm"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        attacks.deepfool(linear(3, 16, 0), torch.rand(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1]), **kwargs)
