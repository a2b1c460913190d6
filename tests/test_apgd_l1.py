"""L1-APGD (Croce & Hein 2021, "Mind the box") and PGD with the sparse L1 step: exact budgets on linear models
where the box binds and where it does not, the contract (box, ball, per-sample independence), bad input."""

from __future__ import annotations

import pytest
import torch

from advlab import attacks
from advlab.evaluate import SpecError, make_spec
from tests.conftest import Linear
from tests.test_fmn import linear_problem

pytestmark = pytest.mark.usefixtures("one_thread")

ROOM = 0.03  # how far each coordinate may move in the direction that helps the attack


def boxed_problem(seed: int, n: int = 4, d: int = 100) -> list[tuple[Linear, torch.Tensor, torch.Tensor, float]]:
    """Two-class linear models (float64) with one image each where the box binds: every coordinate can move
    only ROOM in its helpful direction, so the smallest L1 perturbation spreads over many coordinates. Its
    exact size: fill the coordinates of largest |w| first (each up to ROOM) until the margin is crossed."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    mags = w.abs().sort(descending=True).values
    reach = (ROOM * mags).cumsum(0)
    out = []
    for i in range(n):
        y = i % 2
        helps_up = w > 0 if y == 0 else w < 0  # class 0 gains by raising z = w.x + b, class 1 by lowering it
        x = torch.where(helps_up, 1 - ROOM, ROOM).double()
        part = 0.3 + 0.4 * float(torch.rand(1, generator=g, dtype=torch.float64))
        margin = float(reach[8 + 3 * i]) + part * ROOM * float(mags[9 + 3 * i])  # 9 to 18 coordinates, and a part
        b = (margin if y == 1 else -margin) - float(x @ w)
        model = Linear(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, b], dtype=torch.float64))
        k = int((reach < margin).sum())
        exact = ROOM * k + (margin - float(reach[k - 1])) / float(mags[k])
        out.append((model, x.view(1, 1, 10, 10), torch.tensor([y]), exact))
    return out


def test_apgd_l1_reaches_the_exact_budget_where_the_box_binds_and_pgd_l1_does_not():
    for model, x, y, exact in boxed_problem(0):
        assert model(x).argmax(1).item() == y.item()
        for scale, broken in ((1.02, True), (0.98, False)):  # below the optimum nothing can succeed
            eps = exact * scale
            res = attacks.apgd_l1(model, x, y, eps, steps=100, seed=0, return_info=True)
            delta = res.x_adv - x
            assert float(delta.abs().sum()) <= eps * (1 + 1e-9) and 0 <= float(res.x_adv.min()) <= 1
            assert float(res.x_adv.max()) <= 1
            assert bool(res.success.item()) is broken
            with torch.no_grad():
                assert (model(res.x_adv).argmax(1) != y).item() is broken
        # One coordinate per step, already at its bound: plain sparse PGD stalls where L1-APGD does not.
        assert not attacks.pgd(model, x, y, exact * 1.02, steps=100, norm="l1", seed=0, return_info=True).success


@pytest.mark.parametrize("name", ["pgd", "apgd_l1"])
def test_l1_attacks_break_exactly_the_samples_within_reach_when_the_box_does_not_bind(name):
    model, x, y, exact = linear_problem(0)
    fn = getattr(attacks, name)
    kwargs = {"norm": "l1", "steps": 50} if name == "pgd" else {"steps": 200}
    for scale in (1.02, 0.98):
        res = fn(model, x, y, exact["l1"] * scale, seed=0, return_info=True, **kwargs)
        assert bool((res.x_adv - x).flatten(1).abs().sum(1).le(exact["l1"] * scale * (1 + 1e-9)).all())
        if scale < 1:
            assert not bool(res.success.any())
        elif name == "pgd":  # d = 20: the 1% step is one coordinate, the exact L1 steepest ascent
            assert bool(res.success.all())


def test_apgd_l1_samples_are_independent_of_their_batch(digits_model):
    model, x, y = digits_model
    x, y = x[:6], y[:6]
    seeds = torch.arange(100, 106)
    batch = attacks.apgd_l1(model, x, y, 2.0, steps=12, seed=seeds)
    for i in (0, 3, 5):
        alone = attacks.apgd_l1(model, x[i : i + 1], y[i : i + 1], 2.0, steps=12, seed=seeds[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-6)
    assert bool((batch - x).flatten(1).abs().sum(1).le(2.0 + 1e-5).all())


def test_l1_specs_and_bad_input():
    assert make_spec("pgd", {"eps": 1.0, "norm": "l1"}).params["norm"] == "l1"
    assert make_spec("apgd_l1", {"eps": 1.0, "loss": "dlr"}).params["loss"] == "dlr"
    with pytest.raises(SpecError, match="apgd: unknown norm 'l1'; expected one of 'linf', 'l2'"):
        make_spec("apgd", {"eps": 3, "norm": "l1"})
    with pytest.raises(SpecError, match="apgd_l1 attacks in l1 only, got norm='l2'"):
        make_spec("apgd_l1", {"eps": 1.0, "norm": "l2"})
    with pytest.raises(ValueError, match="eps"):
        attacks.apgd_l1(torch.nn.Flatten(), torch.rand(2, 4), torch.zeros(2, dtype=torch.long), -1.0)
