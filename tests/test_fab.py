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


def sorted_reference(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, p: str) -> torch.Tensor:
    """FAB's projection the plain way, every coordinate of every row sorted (advlab's before the search from
    the first breakpoints): the oracle of the tests below, independent of the search's code."""
    s = c.sign()
    ws = w * s[:, None]
    target = c.abs()
    room = torch.where(ws > 0, 1 - x, x)
    gain = ws.abs() * room
    if p == "l1":
        order = w.abs().argsort(dim=1, descending=True)
        cum = gain.gather(1, order).cumsum(dim=1)
        k = (cum < target[:, None]).sum(dim=1, keepdim=True)
        before = torch.where(k > 0, cum.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(target[:, None]))
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        weight = ws.abs().gather(1, order).gather(1, k.clamp(max=x.shape[1] - 1))
        last = ((target[:, None] - before) / weight.clamp_min(1e-30)).clamp_min(0)
        amount = torch.where(rank < k, room, torch.where(rank == k, last.minimum(room), torch.zeros_like(room)))
        return amount * ws.sign() * (c != 0)[:, None]
    v = ws if p == "l2" else ws.sign()
    speed = v.abs()
    t_sat = torch.where(speed > 0, room / speed.clamp_min(1e-30), torch.full_like(room, float("inf")))
    order = t_sat.argsort(dim=1)
    t_sorted = t_sat.gather(1, order)
    saturated = gain.gather(1, order).cumsum(dim=1)
    slope = (ws.abs() * speed).gather(1, order)
    free = (slope.sum(dim=1, keepdim=True) - slope.cumsum(dim=1)).clamp_min(0)
    reached = torch.where(torch.isfinite(t_sorted), saturated + t_sorted * free, saturated)
    k = (reached < target[:, None]).sum(dim=1, keepdim=True)
    sat_before = torch.where(k > 0, saturated.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(k, dtype=x.dtype))
    free_before = torch.where(k > 0, free.gather(1, (k - 1).clamp_min(0)), slope.sum(dim=1, keepdim=True))
    t = (target[:, None] - sat_before) / free_before.clamp_min(1e-30)
    t = torch.where(k >= x.shape[1], torch.full_like(t, float("inf")), t)
    return torch.minimum(t * speed, room).nan_to_num(0.0) * v.sign() * (c != 0)[:, None]


def reachable_c(x: torch.Tensor, w: torch.Tensor, sign: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """c = sign * reach * (the largest |<w, d>| the box allows in that direction): reach < 1 puts the crossing
    that far along the order, reach > 1 out of reach."""
    room = torch.where(w * sign[:, None] > 0, 1 - x, x)
    return sign * reach * (w.abs() * room).sum(dim=1)


@settings(max_examples=80, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    rows=st.integers(1, 5),
    n=st.integers(1, 300),
    first=st.integers(1, 40),
    growth=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
    at_bounds=st.booleans(),
    double=st.booleans(),
)
def test_the_search_from_the_first_breakpoints_gives_the_full_sorts_step(
    norm: str, rows: int, n: int, first: int, growth: int, seed: int, at_bounds: bool, double: bool
) -> None:
    """The projection from the ``first`` breakpoints, deepening by ``growth`` for the rows whose crossing lies
    further, is the step of the full sort (first = n) bit for bit where the order has no ties (to rounding where
    it has), for crossings from the first breakpoint to out of reach, rows already on their plane (c = 0) and
    rows with w = 0 included; and, to float64 rounding, the step of the plain sort of every coordinate
    (:func:`sorted_reference`)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    x = torch.rand(rows, n, generator=g, dtype=dtype)
    if at_bounds:  # pixels at their bounds: no room on one side
        x[:, : n // 3] = (x[:, : n // 3] > 0.5).to(dtype)
    w = torch.randn(rows, n, generator=g, dtype=dtype)
    sign = torch.where(torch.rand(rows, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    reach = torch.rand(rows, generator=g, dtype=dtype) ** 3 * 1.3  # mostly shallow crossings, some out of reach
    c = reachable_c(x, w, sign, reach)
    c[-1] = 0.0 if rows > 2 else c[-1]  # on its plane already
    w[0] = 0.0 if rows > 3 else w[0]  # no gradient: out of reach unless c = 0
    full = hyperplane_box_step(x, w, c, norm, first=n)
    searched = hyperplane_box_step(x, w, c, norm, first=first, growth=growth)
    if at_bounds and norm == "linf":  # t_i = room_i = 1 ties: a top-k may order them otherwise than the sort
        torch.testing.assert_close(searched, full, atol=1e-12 if double else 1e-6, rtol=0)
    else:
        assert torch.equal(searched, full)
    if double:  # in float32 either rounds near full saturation far beyond float64's
        torch.testing.assert_close(full, sorted_reference(x, w, c, norm), atol=1e-9, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_the_shipped_search_gives_the_full_sorts_step_on_image_sized_rows(norm: str) -> None:
    """Rows of 20,000 coordinates with the default depths (1,024 breakpoints, then 4,096, then the sort), the
    crossings spread from the first breakpoint to out of reach: the step of the full sort, bit for bit, and
    the plain sort's to float64 rounding."""
    g = torch.Generator().manual_seed(7)
    rows, n = 12, 20000
    x = torch.rand(rows, n, generator=g)
    x[:, ::7] = 0.0  # no room downwards
    w = torch.randn(rows, n, generator=g)
    sign = torch.where(torch.arange(rows) % 2 == 0, -1.0, 1.0)
    reach = torch.tensor([0.0, 1e-6, 1e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.7, 0.999, 1.5])
    c = reachable_c(x, w, sign, reach)
    assert torch.equal(hyperplane_box_step(x, w, c, norm), hyperplane_box_step(x, w, c, norm, first=n))
    x, w, c = x.double(), w.double(), c.double()  # float32's rounding near full saturation is 1e-4 either way
    torch.testing.assert_close(hyperplane_box_step(x, w, c, norm), sorted_reference(x, w, c, norm), atol=1e-9, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_with_ties_in_the_order_the_search_still_finds_a_smallest_step(norm: str) -> None:
    """Ties (quantised pixels, so equal t_i; blocks of equal |w_i|, as an average-pooled input gives) may be
    ordered otherwise by a top-k than by the sort: the step is then another minimiser (L1) or the same to
    rounding; feasible either way, with the full sort's size."""
    g = torch.Generator().manual_seed(11)
    rows, n = 6, 6000
    x = torch.randint(0, 256, (rows, n), generator=g).double() / 255
    w = torch.randn(rows, n // 4, generator=g, dtype=torch.float64).repeat_interleave(4, dim=1)
    c = reachable_c(x, w, torch.ones(rows, dtype=torch.float64), torch.tensor([1e-4, 1e-3, 0.01, 0.05, 0.2, 0.6]))
    searched, full = hyperplane_box_step(x, w, c, norm, first=16), hyperplane_box_step(x, w, c, norm, first=n)
    torch.testing.assert_close((w * searched).sum(1), c, atol=1e-9, rtol=1e-9)
    assert float((x + searched).min()) >= 0 and float((x + searched).max()) <= 1
    size = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[norm]
    torch.testing.assert_close(searched.norm(p=size, dim=1), full.norm(p=size, dim=1), atol=1e-9, rtol=1e-9)


def test_the_search_depths_and_the_norm_are_checked() -> None:
    x, w, c = torch.rand(2, 5), torch.randn(2, 5), torch.randn(2)
    for first, growth in ((0, 4), (8, 1), (2.5, 4)):
        with pytest.raises(ValueError, match=r"(first|growth) must be an int >= [12]"):
            hyperplane_box_step(x, w, c, "linf", first=first, growth=growth)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown norm 'l0'"):
        hyperplane_box_step(x, w, c, "l0")


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_leaves_an_exact_tie_of_two_logits(norm: str, targeted: bool, dtype: torch.dtype) -> None:
    # x exactly on the boundary of a linear model, in exact (dyadic) arithmetic: both logits 1, argmax takes
    # class 0, so x is not adversarial for y = 0 (nor classified as target 1). Any move along w crosses: the
    # minimal distance is 0+, and FAB must not sit on the tie (its projection onto the boundary is x itself).
    g = torch.Generator().manual_seed(0)
    d = 16
    w1 = torch.randint(-3, 4, (d,), generator=g).to(dtype)
    x = torch.full((2, 1, 4, 4), 0.5, dtype=dtype)
    weight = torch.stack([torch.zeros(d, dtype=dtype), w1])
    bias = torch.tensor([1.0, 1.0 - 0.5 * float(w1.sum())], dtype=dtype)
    model = Linear(weight, bias)
    with torch.no_grad():
        z = model(x)
    assert bool((z[:, 0] == z[:, 1]).all()) and bool((z.argmax(1) == 0).all())
    labels = torch.ones(2, dtype=torch.long) if targeted else torch.zeros(2, dtype=torch.long)
    res = attacks.fab(model, x, labels, norm=norm, steps=10, targeted=targeted, return_info=True)
    assert bool(res.success.all())
    with torch.no_grad():
        margin_after = (model(res.x_adv) @ torch.tensor([-1.0, 1.0], dtype=dtype))
    assert bool((margin_after > 0).all())
    # Just past the tie: the rounding slack (1e-4 of the largest |logit|) over ||w1||_dual, with room to spare.
    assert bool((res.extras["distance"] < 1e-3).all()), res.extras["distance"]


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
