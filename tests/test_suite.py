"""The worst-case suite: exact robust accuracy of a linear classifier, per-sample bookkeeping, batching
independence, strength against single attacks on a real model, errors."""

from __future__ import annotations

import json

import pytest
import torch

from advlab import attacks
from advlab.evaluate.suite import SUITES, SuiteResult, run_suite, suite_stages
from tests.conftest import Linear
from tests.test_apgd import exact_breakable, linear


def test_strong_suite_finds_the_exact_robust_accuracy_of_a_linear_classifier() -> None:
    model = linear(10, 24, seed=11)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(48, 1, 4, 6, generator=g, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    y[:4] = (y[:4] + 1) % 10  # four clean mistakes
    eps = 0.04
    breakable, top = exact_breakable(model, x, y, eps)
    res = run_suite(model, x, y, eps, seed=torch.arange(48), square_queries=50)
    clear = top.abs() > 1e-6
    assert torch.equal(res.robust[clear], (~breakable & res.clean_correct)[clear])
    assert 0.2 < res.robust_accuracy < 0.8
    # Bookkeeping: clean mistakes are "clean"; broken samples are misclassified at x_adv inside the ball.
    assert bool((res.broken_by[:4] == 0).all()) and not res.clean_correct[:4].any()
    broken = ~res.robust
    assert torch.equal(model(res.x_adv).argmax(1)[broken & res.clean_correct] != y[broken & res.clean_correct],
                       torch.ones(int((broken & res.clean_correct).sum()), dtype=torch.bool))  # fmt: skip
    assert torch.equal(res.x_adv[res.robust], x[res.robust])
    assert float((res.x_adv - x).abs().max()) <= eps + 1e-12
    names = res.broken_by_names()
    assert names[:4] == ["clean"] * 4 and all((n is None) == bool(r) for n, r in zip(names, res.robust, strict=True))
    # Each stage attacks what the previous one left.
    left = int(res.clean_correct.sum())
    for stage in res.stages:
        assert stage.attacked == left
        left -= stage.broken
    assert left == int(res.robust.sum())
    after = res.accuracy_after()
    assert list(after) == ["clean", "apgd-ce", "apgd-t", "square"] and after["square"] == res.robust_accuracy
    json.dumps(res.to_dict())


def test_batching_does_not_change_any_sample(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    index = torch.arange(100, 124)
    stages = suite_stages("fast")
    whole = run_suite(model, x, y, 0.1, seed=index, stages=stages)
    parts = SuiteResult.concat(
        [run_suite(model, x[s], y[s], 0.1, seed=index[s], stages=stages) for s in (slice(0, 7), slice(7, 24))]
    )
    assert torch.equal(whole.robust, parts.robust) and torch.equal(whole.broken_by, parts.broken_by)
    torch.testing.assert_close(whole.x_adv, parts.x_adv, rtol=0, atol=1e-6)
    assert [s.attacked for s in whole.stages] == [s.attacked for s in parts.stages]


def test_suite_is_at_least_as_strong_as_its_parts_and_pgd(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:80], y[:80]
    eps = 0.1
    res = run_suite(model, x, y, eps, seed=0, square_queries=100)
    pgd = attacks.pgd(model, x, y, eps, steps=50, restarts=2, seed=7, return_info=True)
    fg = attacks.fgsm(model, x, y, eps, return_info=True)
    correct = res.clean_correct
    for other in (pgd, fg):
        assert res.robust_accuracy <= float((correct & ~other.success).float().mean()) + 1e-9
    assert res.robust_accuracy < res.clean_accuracy - 0.2


def test_zero_eps_leaves_clean_accuracy_and_everything_is_broken_at_large_eps(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:16], y[:16]
    res = run_suite(model, x, y, 0.0, stages=suite_stages("fast"))
    assert torch.equal(res.robust, res.clean_correct) and torch.equal(res.x_adv, x)
    big = run_suite(model, x, y, 0.5, stages=suite_stages("fast"))
    assert not big.robust.any()
    assert big.stages[-1].attacked == 0 or big.stages[-1].broken == big.stages[-1].attacked


def test_per_sample_eps() -> None:
    model = Linear(torch.randn(4, 16, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    res = run_suite(model, x, y, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), stages=suite_stages("fast"))
    assert bool(res.robust[0]) and bool(res.robust[2]) and not bool(res.robust[1])


def test_bad_arguments_raise_clear_errors() -> None:
    model = Linear(torch.randn(4, 16), torch.zeros(4))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="suite"):
        run_suite(model, x, y, 0.1, suite="weak")
    with pytest.raises(ValueError, match="seed"):
        run_suite(model, x, y, 0.1, seed=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="norm"):
        run_suite(model, x, y, 0.1, norm="l0")
    with pytest.raises(ValueError, match="concat"):
        SuiteResult.concat([])
    assert set(SUITES) == {"strong", "fast"}


def test_square_focus_adds_breaks_only_where_the_first_run_came_closest(digits_model) -> None:
    """The strong suite's Square stage: the second, longer run goes to the closest share of the samples left
    and can only add breaks; every output stays in the ball and the box; a sample outside the focus share is
    returned exactly as the plain run returned it."""
    from advlab.evaluate.suite import square_stage

    model, x, y = digits_model
    x, y = x[:96], y[:96]
    eps, seeds = torch.full((96,), 0.08), torch.arange(96)
    plain = square_stage(30)(model, x, y, eps, "linf", seeds)
    focus = square_stage(30, 300, 0.5)(model, x, y, eps, "linf", seeds)
    assert torch.equal(plain.success & focus.success, plain.success)  # nothing lost
    gained = focus.success & ~plain.success
    assert int(gained.sum()) >= 1
    left = (~plain.success).nonzero().view(-1)
    assert plain.loss is not None
    closest = left[torch.argsort(plain.loss[left], descending=True, stable=True)[: (left.numel() + 1) // 2]]
    in_focus = torch.zeros(96, dtype=torch.bool)
    in_focus[closest] = True
    assert not (gained & ~in_focus).any()
    assert torch.equal(focus.x_adv[~in_focus], plain.x_adv[~in_focus])
    assert float((focus.x_adv - x).abs().max()) <= 0.08 + 1e-6 and focus.x_adv.min() >= 0 and focus.x_adv.max() <= 1
    with torch.no_grad():
        assert bool((model(focus.x_adv[gained]).argmax(1) != y[gained]).all())
