"""FAB (Croce & Hein 2020): the hyperplane ∩ box projections, exact distances on linear models, returned points."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab import attacks
from advlab.attacks.fab import nearest_boundary
from advlab.attacks.hyperplane import hyperplane_box_step
from advlab.attacks.norms import get_norm
from advlab.attacks.objectives import margin, rounding_slack
from tests.conftest import Linear
from tests.test_fmn import linear_problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores

P = {"l2": 2.0, "linf": float("inf"), "l1": 1.0}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_box_step_is_feasible_and_no_larger_than_other_feasible_steps(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 12, generator=g, dtype=torch.float64)
    x[:, :3] = 1.0  # saturated pixels, where the box binds
    w = torch.randn(6, 12, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    c[0], c[1] = 100.0, 0.0  # out of reach (every helpful coordinate at its bound), and already on the plane
    d = hyperplane_box_step(x, w, c, norm)
    assert float((x + d).min()) >= 0 and float((x + d).max()) <= 1 + 1e-12
    torch.testing.assert_close((w * d).sum(1)[1:], c[1:], atol=1e-12, rtol=0)
    assert torch.equal(d[1], torch.zeros(12, dtype=torch.float64))
    helps = torch.where(w[0] > 0, 1 - x[0], -x[0])  # row 0: every coordinate at its helpful bound
    torch.testing.assert_close(d[0], helps)
    size = d.norm(p=P[norm], dim=1)
    for _ in range(300):  # random feasible steps on the plane, inside the box: never smaller
        r = torch.randn(6, 12, generator=g, dtype=torch.float64) * torch.rand(6, 1, generator=g, dtype=torch.float64)
        r = r + (c - (w * r).sum(1))[:, None] * w / (w * w).sum(1, keepdim=True)
        ok = ((x + r) >= 0).all(1) & ((x + r) <= 1).all(1)
        ok[0] = False
        assert bool((size[ok] <= r.norm(p=P[norm], dim=1)[ok] + 1e-12).all())


def reachable_c(x: torch.Tensor, w: torch.Tensor, sign: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """c = sign * reach * (the largest |<w, d>| the box allows in that direction): reach < 1 puts the crossing
    that far along the order, reach > 1 out of reach."""
    room = torch.where(w * sign[:, None] > 0, 1 - x, x)
    return sign * reach * (w.abs() * room).sum(dim=1)


@settings(max_examples=80, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    rows=st.integers(1, 4),
    n=st.integers(1, 300),
    first=st.integers(1, 40),
    growth=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
    at_bounds=st.booleans(),
)
def test_the_search_from_the_first_breakpoints_gives_the_full_sorts_step(
    norm: str, rows: int, n: int, first: int, growth: int, seed: int, at_bounds: bool
) -> None:
    """The projection from the ``first`` breakpoints, deepening by ``growth`` for the rows whose crossing lies
    further, is the step of the full sort (first = n), for crossings from the first breakpoint to out of reach;
    bit for bit without ties, to rounding where pixels at their bounds tie at t_i = 0 (their order differs)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = torch.rand(rows, n, generator=g, dtype=f64)
    if at_bounds:
        x[:, : n // 3] = (x[:, : n // 3] > 0.5).to(f64)
    w = torch.randn(rows, n, generator=g, dtype=f64)
    sign = torch.where(torch.rand(rows, generator=g) < 0.5, -1.0, 1.0).to(f64)
    reach = torch.rand(rows, generator=g, dtype=f64) ** 3 * 1.3  # mostly shallow crossings, some out of reach
    c = reachable_c(x, w, sign, reach)
    full = hyperplane_box_step(x, w, c, norm, first=n)
    searched = hyperplane_box_step(x, w, c, norm, first=first, growth=growth)
    if at_bounds and norm != "l1":
        torch.testing.assert_close(searched, full, atol=1e-12, rtol=0)
    else:
        assert torch.equal(searched, full)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_the_shipped_search_gives_the_full_sorts_step_on_image_sized_rows(norm: str) -> None:
    """Rows of 8,192 coordinates with the default depths (1,024 breakpoints, then 4,096, then the sort), the
    crossings spread from the first breakpoint to out of reach: the step of the full sort, bit for bit."""
    g = torch.Generator().manual_seed(7)
    rows, n = 12, 8192
    x = torch.rand(rows, n, generator=g)
    w = torch.randn(rows, n, generator=g)
    sign = torch.where(torch.arange(rows) % 2 == 0, -1.0, 1.0)
    reach = torch.tensor([0.0, 1e-6, 1e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.7, 0.999, 1.5])
    c = reachable_c(x, w, sign, reach)
    assert torch.equal(hyperplane_box_step(x, w, c, norm), hyperplane_box_step(x, w, c, norm, first=n))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_nearest_boundary_is_the_nearest_linearised_class_with_one_backward_per_other_class(norm: str) -> None:
    """On a linear model grad (z_j - z_y) = W_j - W_y exactly: FAB's choice is argmin_j |f_j| / ||W_j - W_y||_q
    over j != y, computed with K - 1 backward passes."""
    g = torch.Generator().manual_seed(1)
    k, n, d = 6, 9, 12
    f64 = torch.float64
    model = Linear(torch.randn(k, d, generator=g, dtype=f64), torch.randn(k, generator=g, dtype=f64))
    x = torch.rand(n, d, generator=g, dtype=f64).requires_grad_(True)
    y = torch.randint(0, k, (n,), generator=g)
    backwards = []
    x.register_hook(lambda grad: backwards.append(1))
    z = model(x)
    w, f = nearest_boundary(z, x, y, get_norm(norm))
    assert len(backwards) == k - 1
    weight, logits = model.weight.detach(), z.detach()
    for i in range(n):
        others = [j for j in range(k) if j != int(y[i])]
        diff = torch.stack([weight[j] - weight[y[i]] for j in others])
        fs = torch.stack([logits[i, j] - logits[i, y[i]] for j in others])
        dual = diff.norm(p={"linf": 1.0, "l2": 2.0, "l1": float("inf")}[norm], dim=1)
        s = int((fs.abs() / dual).argmin())
        torch.testing.assert_close(w[i], diff[s], atol=1e-12, rtol=0)
        torch.testing.assert_close(f[i], fs[s], atol=1e-12, rtol=0)


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_finds_the_exact_distance_to_a_linear_boundary(norm: str, targeted: bool) -> None:
    model, x, y, exact = linear_problem(1)
    labels = 1 - y if targeted else y
    res = attacks.fab(model, x, labels, norm=norm, steps=30, targeted=targeted, return_info=True)
    assert bool(res.success.all())
    distance = res.extras["distance"]
    torch.testing.assert_close(distance, (res.x_adv - x).flatten(1).norm(p=P[norm], dim=1))
    assert bool((distance >= exact[norm] * (1 - 1e-9)).all())
    assert bool((distance <= exact[norm] * 1.01).all()), distance / exact[norm]


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_points_are_in_the_box_and_success_agrees_with_the_model(norm: str, digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:16], y[:16]
    for targeted, labels in ((False, y), (True, (y + 3) % 10)):
        res = attacks.fab(model, x, labels, norm=norm, steps=10, targeted=targeted, return_info=True)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        assert torch.equal(res.success, pred == labels if targeted else pred != labels)
        assert int(res.success.sum()) > 8
        assert torch.equal(res.x_adv[~res.success], x[~res.success])
        assert bool(torch.isinf(res.extras["distance"][~res.success]).all())


@pytest.mark.parametrize("norm", ["l1", "linf", "l2"])
def test_every_returned_fab_point_is_past_the_boundary_by_the_slack_on_fresh_forward_passes(norm: str, digits_model):
    """FAB counts a point once the top-1 changes (the paper's rule), so its best points lie just past the
    boundary; settle must leave each returned point past it by the rounding slack on any fresh forward pass: the
    batch of all returned points, each point alone, and the batch reversed (another float rounding)."""
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    runs = [
        (attacks.fab(model, x, y, norm=norm, steps=20, return_info=True), y, False),
        (attacks.fab(model, x, (y + 3) % 10, norm=norm, steps=20, targeted=True, return_info=True), (y + 3) % 10, True),
        (attacks.fab_t(model, x, y, norm=norm, steps=10, n_target_classes=2, return_info=True), y, False),
    ]
    for res, labels, targeted in runs:
        ok = res.success
        assert int(ok.sum()) >= 12
        with torch.no_grad():
            alone = torch.cat([model(p[None]) for p in res.x_adv])
            passes = [model(res.x_adv), alone, model(res.x_adv.flip(0)).flip(0)]
        for z in passes:
            past = (-margin(z, labels) if targeted else margin(z, labels)) - rounding_slack(z)
            assert bool((past[ok] > 0).all()), past[ok].min()
        torch.testing.assert_close(res.extras["distance"][ok], (res.x_adv - x)[ok].flatten(1).norm(p=P[norm], dim=1))


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"norm": "l0"}, ValueError, "unknown norm 'l0'"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"eta": 0.0}, ValueError, "eta"),
        ({"beta": 1.5}, ValueError, "beta"),
    ],
)
def test_fab_bad_parameters_raise_clear_errors(kwargs: dict, error: type, fragment: str) -> None:
    model, x, y, _ = linear_problem(0, n=2)
    with pytest.raises(error) as info:
        attacks.fab(model, x, y, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_t_finds_the_exact_distance_to_a_linear_boundary(norm: str) -> None:
    model, x, y, exact = linear_problem(1)
    res = attacks.fab_t(model, x, y, norm=norm, steps=30, return_info=True)
    assert bool(res.success.all())
    distance = res.extras["distance"]
    assert bool((distance >= exact[norm] * (1 - 1e-9)).all()) and bool((distance <= exact[norm] * 1.01).all())


def test_fab_t_keeps_the_smallest_of_its_targeted_runs(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:10], y[:10].clone()
    with torch.no_grad():
        logits = model(x)
    y[0] = (logits[0].argmax() + 1) % 10  # misclassified from the start: distance 0, x itself
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    res = attacks.fab_t(model, x, y, norm="l2", steps=6, n_target_classes=2, return_info=True)
    runs = [attacks.fab(model, x, ranked[:, r], norm="l2", steps=6, targeted=True, return_info=True) for r in (0, 1)]
    expected = torch.minimum(runs[0].extras["distance"], runs[1].extras["distance"])
    assert float(res.extras["distance"][0]) == 0 and torch.equal(res.x_adv[0], x[0])
    torch.testing.assert_close(res.extras["distance"][1:], expected[1:])
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert bool((pred[res.success] != y[res.success]).all())


def test_fab_restarts_never_lose_the_first_run_and_are_seeded_per_sample(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:8], y[:8]
    one = attacks.fab(model, x, y, norm="linf", steps=5, return_info=True)
    seeds = torch.arange(40, 48)
    three = attacks.fab(model, x, y, norm="linf", steps=5, restarts=3, seed=seeds, return_info=True)
    assert bool((three.extras["distance"] <= one.extras["distance"]).all())
    assert bool((three.success >= one.success).all())
    with torch.no_grad():
        assert bool((model(three.x_adv).argmax(1)[three.success] != y[three.success]).all())
    alone = attacks.fab(model, x[2:3], y[2:3], norm="linf", steps=5, restarts=3, seed=seeds[2:3], return_info=True)
    torch.testing.assert_close(alone.x_adv, three.x_adv[2:3], rtol=0, atol=1e-6)


class _ThirdClassFirst(torch.nn.Module):
    """Three classes on one pixel p: z = (0, 10 (p - 0.35), 20 (p - 0.3)). From p = 0.2 (label 0) the class the
    clean logits rank first, 1, is never the top-1 anywhere: moving towards its boundary with the label (p = 0.35)
    crosses into class 2 at p = 0.3 first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)[:, :1]
        return torch.cat([torch.zeros_like(p), 10 * (p - 0.35), 20 * (p - 0.3)], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_t_counts_a_misclassification_on_the_way_to_its_target_as_autoattack_does(norm: str) -> None:
    # AutoAttack's FAB-T linearises target against the true label and counts any misclassification; a run that
    # counted only points classified as the target would find nothing here (distance inf).
    model = _ThirdClassFirst().eval()
    x, y = torch.full((1, 1, 1, 2), 0.2, dtype=torch.float64), torch.tensor([0])
    res = attacks.fab_t(model.double(), x, y, norm=norm, steps=50, n_target_classes=1, return_info=True)
    assert bool(res.success[0]) and int(model(res.x_adv).argmax(dim=1)[0]) != 0
    # At most the distance to the linearised target boundary (p = 0.35) it was aimed at, plus FAB's overshoot.
    assert 0.1 - 1e-9 <= float(res.extras["distance"][0]) <= 0.15 * 1.06
