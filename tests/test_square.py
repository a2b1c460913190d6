"""Square Attack (Andriushchenko et al. 2020): schedule and pattern, counter-based randomness, the geometry of
its proposals (Linf corners, L2 sphere), convergence to the optimum of a linear model, independence, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advlab import attacks
from advlab.attacks.noise import CounterRandom
from advlab.attacks.square import p_schedule, square_pattern
from tests.conftest import Linear


def unbreakable_linear(c: int, h: int, w: int, seed: int = 0) -> Linear:
    """Two classes; class 0 wins by a mile everywhere, so the attack never succeeds and keeps optimising
    the margin w.x, whose optimum over a Linf ball is x + eps sign(w)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.stack([torch.zeros(c * h * w), torch.randn(c * h * w, generator=g)]).double()
    return Linear(weight, torch.tensor([1e3, 0.0], dtype=torch.float64))


def test_p_schedule_halves_at_the_papers_iterations() -> None:
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 10, 10000) == 0.8 and p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 51, 10000) == 0.2 and p_schedule(0.8, 9000, 10000) == 0.8 / 512
    # Rescaled to a 1,000-query budget: iteration 6 plays the role of iteration 60.
    assert p_schedule(0.8, 6, 1000) == 0.2
    assert p_schedule(0.8, 6, 1000, rescale=False) == 0.8


@pytest.mark.parametrize("s", [1, 3, 5, 8, 11])
def test_l2_pattern_is_two_opposite_centred_bumps(s: int) -> None:
    eta = square_pattern(s)
    torch.testing.assert_close(eta.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((eta[s // 2 :] < 0).all()) and bool((eta[: s // 2] > 0).all())
    if s % 2:  # the attack uses odd sides, whose centre column is a pixel: symmetric left-right
        torch.testing.assert_close(eta, eta.flip(1))
    bottom = eta[s // 2 :].abs()
    centre = ((s - s // 2) // 2, s // 2)
    assert float(bottom[centre]) == float(bottom.max())  # largest at the centre of its half


def test_counter_random_is_a_function_of_seed_and_counter() -> None:
    a = CounterRandom(torch.tensor([5, 6, 7]), 3, torch.device("cpu"))
    b = CounterRandom(torch.tensor([7, 5]), 2, torch.device("cpu"))
    torch.testing.assert_close(a.bits(9, 4)[[2, 0]], b.bits(9, 4), rtol=0, atol=0)
    assert not torch.equal(a.bits(9, 4), a.bits(10, 4))
    torch.testing.assert_close(a.take(torch.tensor([1])).bits(3, 2), a.bits(3, 2)[1:2], rtol=0, atol=0)
    # Roughly uniform: 10 equal bins over 200,000 draws.
    u = CounterRandom(0, 1000, torch.device("cpu")).uniform(17, 200)
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert bool(((counts - 20000).abs() < 600).all()), counts
    signs = CounterRandom(1, 1000, torch.device("cpu")).signs(3, 100, torch.float64)
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.02


def test_linf_square_converges_to_the_optimal_vertex_of_a_linear_margin() -> None:
    model = unbreakable_linear(2, 4, 4)
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    eps = 0.1
    res = attacks.square(model, x, y, eps, queries=500, p_init=0.3, seed=0, return_info=True)
    assert not res.success.any() and bool((res.extras["queries"] == 500).all())
    # Every Square iterate sits on a corner of the ball (the box does not bind here) ...
    torch.testing.assert_close((res.x_adv - x).abs(), torch.full_like(x, eps), rtol=0, atol=1e-12)
    # ... and random search over windows ends at the optimum x + eps sign(w).
    expected = x.flatten(1) + eps * torch.sign(model.weight[1].detach())
    torch.testing.assert_close(res.x_adv.flatten(1), expected, rtol=0, atol=1e-12)


def test_l2_square_stays_on_the_sphere_and_improves_the_margin() -> None:
    model = unbreakable_linear(3, 10, 10)
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(4, 3, 10, 10, generator=g, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    eps = 0.5
    short = attacks.square(model, x, y, eps, norm="l2", queries=1, seed=0, return_info=True)
    long = attacks.square(model, x, y, eps, norm="l2", queries=400, seed=0, return_info=True)
    for r in (short, long):
        size = (r.x_adv - x).flatten(1).norm(dim=1)
        torch.testing.assert_close(size, torch.full_like(size, eps), rtol=0, atol=1e-9)
    optimum = eps * model.weight[1].detach().norm()  # w.delta at delta = eps w / ||w||
    gain_short = (short.x_adv - x).flatten(1) @ model.weight[1].detach()
    gain_long = (long.x_adv - x).flatten(1) @ model.weight[1].detach()
    assert bool((gain_long > gain_short).all()) and bool((gain_long > 0.3 * optimum).all())
    assert bool((gain_long <= optimum + 1e-9).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_each_sample_gets_what_it_gets_alone(norm: str, digits_model) -> None:
    model = copy.deepcopy(digits_model[0]).double()
    x, y = digits_model[1][:5].double(), digits_model[2][:5]
    eps = 0.15 if norm == "linf" else 1.0
    seeds = torch.tensor([40, 41, 42, 43, 44])
    batch = attacks.square(model, x, y, eps, norm=norm, queries=120, seed=seeds, return_info=True)
    assert batch.success.any() and not batch.success.all(), "want both outcomes in the batch"
    for i in range(5):
        alone = attacks.square(model, x[i : i + 1], y[i : i + 1], eps, norm=norm, queries=120, seed=seeds[i : i + 1])
        torch.testing.assert_close(batch.x_adv[i : i + 1], alone, rtol=0, atol=1e-12)
    # A broken sample stops querying; the others use the whole budget.
    used = batch.extras["queries"]
    assert bool((used[~batch.success] == 120).all()) and bool((used[batch.success] < 120).all())
    assert torch.equal(model(batch.x_adv).argmax(1) != y, batch.success)


def test_square_breaks_the_digits_cnn_and_respects_the_budget(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:100], y[:100]
    res = attacks.square(model, x, y, 0.2, queries=300, seed=0, return_info=True)
    clean = (model(x).argmax(1) == y).float().mean()
    assert float((~res.success).float().mean()) < float(clean) - 0.5
    assert float((res.x_adv - x).abs().max()) <= 0.2 + 1e-6 and float(res.x_adv.min()) >= 0
    targeted = attacks.square(model, x, (y + 1) % 10, 0.3, queries=300, targeted=True, seed=0, return_info=True)
    assert float(targeted.success.float().mean()) > 0.5
    assert torch.equal(model(targeted.x_adv).argmax(1)[targeted.success], ((y + 1) % 10)[targeted.success])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_samples_adversarial_at_x_come_back_as_x_without_queries(norm: str, digits_model) -> None:
    # Labels no image of the batch has: every clean image is already "broken". A search from the stripes could
    # land back in class y; the attack must not spend queries there and must report x, successful.
    model, x, y = digits_model
    x, y = x[:40], digits_model[0](x[:40]).argmax(1)
    wrong = (y + 1) % 10
    labels = torch.where(torch.arange(40) % 2 == 0, wrong, y)  # half already adversarial, half to attack
    eps = 0.3 if norm == "linf" else 3.0
    res = attacks.square(model, x, labels, eps, norm=norm, queries=10, seed=0, return_info=True)
    clean = torch.arange(40) % 2 == 0
    assert bool(res.success[clean].all())
    assert torch.equal(res.x_adv[clean], x[clean]) and bool((res.extras["queries"][clean] == 0).all())
    assert bool((res.extras["queries"][~clean] >= 1).all())
    # Targeted: x already classified as the target is the answer too.
    res_t = attacks.square(model, x, y, eps, norm=norm, queries=10, targeted=True, seed=0, return_info=True)
    assert bool(res_t.success.all()) and torch.equal(res_t.x_adv, x)
    # The samples to attack get what they would get in a batch of their own.
    alone = attacks.square(model, x[~clean], labels[~clean], eps, norm=norm, queries=10,
                           seed=torch.arange(40)[~clean], return_info=True)  # fmt: skip
    mixed = attacks.square(model, x, labels, eps, norm=norm, queries=10, seed=torch.arange(40), return_info=True)
    torch.testing.assert_close(mixed.x_adv[~clean], alone.x_adv, rtol=0, atol=0)


def test_a_sample_adversarial_at_x_only_within_the_rounding_slack_is_searched() -> None:
    # x's top-1 leaves y by 1e-7 of a logit of 1, below the slack (1e-4 of it) that another batch's rounding could
    # undo: a suite that judged x standing must get Square's search there, not x back unsearched.
    w = torch.zeros(2, 16, dtype=torch.float64)
    w[1, :8] = 1.0  # moving the first 8 pixels up raises class 1's lead
    model = Linear(w, torch.tensor([1.0, 1.0 + 1e-7], dtype=torch.float64))
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    res = attacks.square(model, x, torch.tensor([0]), 0.1, queries=20, seed=0, return_info=True)
    assert int(res.extras["queries"][0]) >= 1 and bool(res.success[0])


def test_model_left_as_it_was_and_no_gradient_needed() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.5))
    model.train()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        attacks.square(model, x, torch.arange(3), 0.1, queries=20, seed=0)
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"p_init": 1.5}, "p_init"),
        ({"queries": 0}, "queries"),
        ({"norm": "l1"}, "norm"),
        ({"loss": "dlr"}, "loss"),
        ({"seed": torch.tensor([1.0, 2.0])}, "seed"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=fragment):
        attacks.square(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1, **kwargs)


def test_square_needs_image_batches() -> None:
    model = nn.Linear(8, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attacks.square(model, torch.rand(2, 8), torch.tensor([0, 1]), 0.1)
