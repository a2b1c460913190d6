"""The L1 and L0 geometries: exact projections onto ball ∩ box, random starts, steps, sizes and budget checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.attacks.checks import validate
from advlab.attacks.noise import Noise
from advlab.attacks.norms import ALL_NORM_NAMES, L1, NORM_NAMES, Ball, get_norm
from tests.conftest import Linear

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores

TOL = 1e-9


def reference_l1_projection(x: torch.Tensor, p: torch.Tensor, eps: float) -> torch.Tensor:
    """min ||z - p||^2 s.t. ||z - x||_1 <= eps, 0 <= z <= 1, for one flat sample: bisection on the multiplier
    of the soft-thresholded, box-clipped step (200 halvings, float64)."""
    d = p - x
    lo_b, hi_b = -x, 1 - x

    def step(lam: float) -> torch.Tensor:
        soft = d.sign() * (d.abs() - lam).clamp_min(0)
        return torch.minimum(torch.maximum(soft, lo_b), hi_b)

    if float(step(0.0).abs().sum()) <= eps:
        return x + step(0.0)
    lo, hi = 0.0, float(d.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(step(mid).abs().sum()) > eps:
            lo = mid
        else:
            hi = mid
    return x + step(hi)


def _sample(seed: int, n: int, d: int, edge: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    at_edge = torch.rand(n, d, generator=g) < edge
    x = torch.where(at_edge, (x > 0.5).double(), x)
    p = x + torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return x, p


@pytest.mark.parametrize("seed", range(4))
def test_l1_projection_matches_a_bisection_reference(seed: int) -> None:
    x, p = _sample(seed, 6, 40)
    eps = torch.rand(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
    eps[0] = 0.0
    z = get_norm("l1").ball(x, eps).project_(p.clone())
    for i in range(6):
        ref = reference_l1_projection(x[i], p[i], float(eps[i]))
        torch.testing.assert_close(z[i], ref, atol=1e-9, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 30), st.floats(0.0, 5.0))
def test_l1_projection_is_feasible_idempotent_and_nearest(seed: int, n: int, d: int, eps: float) -> None:
    x, p = _sample(seed, n, d)
    ball = get_norm("l1").ball(x, torch.full((n,), eps, dtype=torch.float64))
    z = ball.project_(p.clone())
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert bool(((z - x).abs().sum(1) <= eps + TOL).all())
    torch.testing.assert_close(ball.project_(z.clone()), z, atol=1e-12, rtol=0)
    # No farther from p than other feasible points: x itself, the clipped rescaled step, and random ones.
    g = torch.Generator().manual_seed(seed + 1)
    dist = (z - p).norm(dim=1)
    rescaled = (p - x) * (eps / (p - x).abs().sum(1, keepdim=True).clamp_min(1e-30)).clamp(max=1)
    others = [x, (x + rescaled).clamp(0, 1)]
    for _ in range(5):
        r = torch.randn(n, d, generator=g, dtype=torch.float64)
        r = r * (eps * torch.rand(n, 1, generator=g, dtype=torch.float64) / r.abs().sum(1, keepdim=True))
        others.append((x + r).clamp(0, 1))
    for other in others:
        assert bool((dist <= (other - p).norm(dim=1) + 1e-9).all())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 60), st.floats(0.0, 8.0), st.integers(1, 9),
    st.integers(2, 4), st.booleans(), st.sampled_from([torch.float32, torch.float64]),
)  # fmt: skip
def test_l1_projection_top_k_path_equals_the_full_sort(
    seed: int, n: int, d: int, eps: float, topk: int, growth: int, grid: bool, dtype: torch.dtype
) -> None:
    """The projection's multiplier from the k largest breakpoints (then ``growth`` times as many, and so on up
    to all of them, for the rows whose crossing lies lower) is the one from all 2n of them, bit for bit, ties
    included (``grid`` puts the points on a coarse grid, where many breakpoints coincide)."""
    x, p = _sample(seed, n, d)
    if grid:
        x, p = (x * 4).round() / 4, (p * 4).round() / 4
    x, p = x.to(dtype), p.to(dtype)
    eps_t = torch.full((n,), eps, dtype=dtype)
    eps_t[0] = eps / 7  # rows of the same batch whose crossings lie at different depths
    full = L1(projection_topk=2 * d).project_(p.clone(), Ball(get_norm("l1"), x, eps_t, None))
    fast = L1(projection_topk=topk, projection_growth=growth).project_(p.clone(), Ball(get_norm("l1"), x, eps_t, None))
    assert torch.equal(fast, full)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_projection_equals_the_full_sort_for_crossings_at_every_depth(dtype: torch.dtype) -> None:
    """Rows of one batch whose crossings lie from the first breakpoints to over 1,000 of 2n = 4,000 down (a
    search from 1 breakpoint growing by 2 goes through up to 10 top-k depths, then the sort): the same projection,
    bit for bit, as from all breakpoints at once."""
    x, p = _sample(7, 8, 2000)
    x, p = x.to(dtype), p.to(dtype)
    phi0 = torch.minimum((p - x).abs(), torch.where(p > x, 1 - x, x)).sum(dim=1)  # the L1 size with lambda = 0
    eps = phi0 * torch.tensor([1e-5, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.8, 0.99], dtype=dtype)
    ball = Ball(get_norm("l1"), x, eps, None)
    full = L1(projection_topk=4000).project_(p.clone(), ball)
    fast = L1(projection_topk=1, projection_growth=2).project_(p.clone(), ball)
    assert torch.equal(fast, full)
    # The rows' crossings do lie at many depths: the coordinates the projection moves span 1 to over 1,000.
    moved = ((full - x).abs() > 0).sum(dim=1)
    assert int(moved.min()) <= 2 and int(moved.max()) > 1000


def test_l1_projection_with_the_default_search_equals_the_full_sort_on_large_rows() -> None:
    """The shipped search (128 breakpoints, then 32 times as many) on rows of 8,192 coordinates, where the second
    depth (4,096) is a top-k and rows below it go on to the sort: the full sort's projection, bit for bit."""
    x, p = _sample(11, 4, 8192)
    x, p = x.float(), p.float()
    phi0 = torch.minimum((p - x).abs(), torch.where(p > x, 1 - x, x)).sum(dim=1)
    eps = phi0 * torch.tensor([1e-4, 0.02, 0.3, 0.95])  # crossings within 128, within 4,096 and below
    ball = Ball(get_norm("l1"), x, eps, None)
    full = L1(projection_topk=2 * 8192).project_(p.clone(), ball)
    assert torch.equal(L1().project_(p.clone(), ball), full)
    moved = ((full - x).abs() > 0).sum(dim=1)
    assert int(moved.min()) < 128 and 128 < int(moved[1]) < 2048 and int(moved.max()) > 4096


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"projection_topk": 0}, "projection_topk must be an int >= 1"),
     ({"projection_topk": True}, "projection_topk must be an int >= 1"),
     ({"projection_growth": 1}, "projection_growth must be an int >= 2"),
     ({"projection_growth": 2.5}, "projection_growth must be an int >= 2")],
)  # fmt: skip
def test_l1_geometry_rejects_bad_projection_search_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        L1(**kwargs)  # type: ignore[arg-type]


def test_l1_geometry_takes_numpy_integers_for_its_search_parameters() -> None:
    np = pytest.importorskip("numpy")
    geometry = L1(projection_topk=np.int64(16), projection_growth=np.int32(4))
    assert (geometry.projection_topk, geometry.projection_growth) == (16, 4)


def test_l0_projection_breaks_ties_per_row_whatever_the_batch_mates_budget() -> None:
    """Row 0's 784 coordinates all have the same gain and it may keep 3: the first 3, alone or next to a row
    that keeps 600 (a batch-wide top-k(600) used to order the ties differently, review 2 F13)."""
    x = torch.full((2, 784), 0.5)
    p = x.clone()
    p[0] += 0.25
    p[1] += torch.linspace(0.01, 0.3, 784)
    l0 = get_norm("l0")
    alone = l0.ball(x[:1], torch.tensor([3.0])).project_(p[:1].clone())
    both = l0.ball(x, torch.tensor([3.0, 600.0])).project_(p.clone())
    assert torch.equal(both[:1], alone)
    assert (alone[0] != x[0]).nonzero().view(-1).tolist() == [0, 1, 2]
    assert int((both[1] != x[1]).sum()) == 600 and bool((both[1, -600:] != x[1, -600:]).all())
    # Ties at the k-th gain with gains above it: the larger ones first, then the tied in index order.
    q = x[:1].clone()
    q[0, [5, 9, 20, 31]] += 0.1
    q[0, 700] += 0.2
    kept = l0.ball(x[:1], torch.tensor([3.0])).project_(q.clone())
    assert (kept[0] != x[0]).nonzero().view(-1).tolist() == [5, 9, 700]


def test_l0_projection_keeps_ties_that_fill_the_room_and_everything_at_a_full_budget() -> None:
    """Row 0's gains tie at its k-th with exactly as many as it has room for (no tie to break); row 1 may keep
    all its coordinates (k = n, no (k + 1)-th gain); row 2 keeps none (k = 0)."""
    x = torch.full((3, 784), 0.5)
    q = x.clone()
    q[:, [5, 9, 20, 31]] += 0.1
    q[:, 700] += 0.2
    q[1] += torch.linspace(-0.9, 0.9, 784)  # half of it past the box
    z = get_norm("l0").ball(x, torch.tensor([5.0, 784.0, 0.0])).project_(q.clone())
    assert (z[0] != x[0]).nonzero().view(-1).tolist() == [5, 9, 20, 31, 700]
    assert torch.equal(z[1], q[1].clamp(0, 1))
    assert torch.equal(z[2], x[2])


def test_l0_projection_keeps_nothing_at_a_zero_budget_even_an_infinite_move() -> None:
    """A row with k = 0 next to one with k > 0 (so that the batch's top-k runs): not even a coordinate whose
    move is infinite or overflows 2 d, whose gain is inf, is kept."""
    x = torch.full((3, 3), 0.5)
    q = torch.tensor([[float("inf"), 0.6, 0.5], [3e38, 0.6, 0.5], [0.7, 0.6, 0.5]])
    z = get_norm("l0").ball(x, torch.tensor([0.0, 0.0, 1.0])).project_(q.clone())
    assert torch.equal(z[:2], x[:2])
    assert z[2].tolist() == pytest.approx([0.7, 0.5, 0.5])


def test_l0_projection_tells_a_tie_that_overflows_the_room_by_the_next_gain() -> None:
    """Row 0's two largest gains tie and it may keep 1, beside a row that keeps 3 (so the batch's top-k is
    deeper than row 0's k + 1): the first of the tied only. Row 0's (k + 1)-th gain is what says the tie
    overflows; its (k + 2)-th does not."""
    x = torch.full((2, 4), 0.5)
    p = x + torch.tensor([[0.2, 0.2, 0.1, 0.0], [0.3, 0.2, 0.1, 0.05]])
    z = get_norm("l0").ball(x, torch.tensor([1.0, 3.0])).project_(p.clone())
    assert (z[0] != x[0]).nonzero().view(-1).tolist() == [0]
    assert (z[1] != x[1]).nonzero().view(-1).tolist() == [0, 1, 2]


def _l0_reference(x: torch.Tensor, p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The L0 ball ∩ box projection by a stable descending sort of each row's gains: the first k are kept. A
    reference for which coordinates are kept; the arithmetic is the projection's (d = p - x, the kept
    coordinate's move clip(x + d) - x added back to x), so that in float32 the values agree bit for bit too."""
    d = p - x
    u = (x + d).clamp(0, 1) - x
    gain = u.abs() * (2 * d.abs() - u.abs())
    z = x.clone()
    for i in range(x.shape[0]):
        kept = gain[i].sort(descending=True, stable=True).indices[: int(k[i])]
        z[i, kept] = (x[i, kept] + u[i, kept]).clamp(0, 1)
    return z


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 24), st.integers(0, 3),
       st.sampled_from([torch.float32, torch.float64]))
def test_l0_projection_matches_a_sort_reference_ties_included(
    seed: int, n: int, d: int, grid: int, dtype: torch.dtype
) -> None:
    """Against :func:`_l0_reference` on points rounded to a grid of 2^-grid (grid 0-2: many equal gains, so
    the tie rule decides), every budget from 0 to past d."""
    x, p = _sample(seed, n, d)
    if grid < 3:
        x, p = (x * 2**grid).round() / 2**grid, (p * 2**grid).round() / 2**grid
    x, p = x.to(dtype), p.to(dtype)
    k = torch.randint(0, d + 2, (n,), generator=torch.Generator().manual_seed(seed)).to(dtype)
    z = get_norm("l0").ball(x, k).project_(p.clone())
    assert torch.equal(z, _l0_reference(x, p, k.clamp(max=d)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 30), st.integers(0, 30))
def test_l0_projection_is_feasible_idempotent_and_nearest(seed: int, n: int, d: int, k: int) -> None:
    x, p = _sample(seed, n, d)
    ball = get_norm("l0").ball(x, torch.full((n,), float(k), dtype=torch.float64))
    z = ball.project_(p.clone())
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert bool(((z != x).sum(1) <= k).all())
    torch.testing.assert_close(ball.project_(z.clone()), z, atol=0, rtol=0)
    # Against brute force over which coordinates to keep, for small d: the best keeps the largest gains.
    clipped = p.clamp(0, 1)
    dist = (z - p).norm(dim=1)
    if d <= 8:
        for i in range(n):
            best = min(
                float((torch.where(torch.tensor([(m >> j) & 1 for j in range(d)], dtype=torch.bool),
                                   clipped[i], x[i]) - p[i]).norm())
                for m in range(2**d)
                if bin(m).count("1") <= k
            )
            assert float(dist[i]) <= best + 1e-12
    # Keeping the k largest |p - x| (clipped) is feasible, so never nearer.
    top = (p - x).abs().argsort(dim=1, descending=True).argsort(dim=1) < k
    naive = torch.where(top, clipped, x)
    assert bool((dist <= (naive - p).norm(dim=1) + 1e-12).all())


@pytest.mark.parametrize("norm, start", [("l1", "random_start"), ("l0", "random_start"), ("l0", "box_start")])
def test_random_starts_lie_in_box_and_ball_and_follow_their_own_seed(norm: str, start: str) -> None:
    x, _ = _sample(0, 5, 50)
    x = x.view(5, 2, 5, 5)
    eps = torch.tensor([0.0, 1.0, 3.0, 7.0, 20.0], dtype=torch.float64)
    geometry = get_norm(norm)
    draw = getattr(geometry, start)
    point = draw(x, eps, Noise(10, 5))
    assert float(point.min()) >= 0 and float(point.max()) <= 1
    assert bool((geometry.size(point - x) <= eps + TOL).all())
    torch.testing.assert_close(point[0], x[0])
    # Sample 3 alone with its own seed draws what it drew in the batch.
    alone = draw(x[3:4], eps[3:4], Noise(13, 1))
    torch.testing.assert_close(alone, point[3:4], atol=0, rtol=0)


def test_the_two_l0_starts_differ_in_which_coordinates_they_move() -> None:
    """Croce & Hein's start (a uniform point of the box, projected: the k coordinates drawn farthest from x)
    and a uniform point of the ball (k coordinates drawn uniformly): on images with a black background the
    first moves background pixels (room 1) far more often than the second, which moves each coordinate alike."""
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(200, 100, generator=g) < 0.5, 0.0, 0.2 + 0.6 * torch.rand(200, 100, generator=g))
    eps = torch.full((200,), 5.0)
    geometry = get_norm("l0")
    moved = [start(x, eps, Noise(0, 200)) != x for start in (geometry.box_start, geometry.random_start)]
    assert all(bool(((m.sum(dim=1) <= 5) & (m.sum(dim=1) >= 4)).all()) for m in moved)
    background = [float((m & (x == 0)).sum() / m.sum()) for m in moved]
    assert background[0] > 0.8 and 0.35 < background[1] < 0.65, background


def test_the_l0_step_follows_the_gradient_with_an_l1_length_of_alpha() -> None:
    grad = torch.randn(3, 1, 20, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad[2] = 0  # no gradient: no step
    alpha = torch.tensor([0.5, 120.0, 3.0], dtype=torch.float64)
    step = get_norm("l0").ascent_step_(grad.clone(), alpha).flatten(1)
    torch.testing.assert_close(step.abs().sum(1)[:2], alpha[:2])
    torch.testing.assert_close(step[:2] / alpha[:2, None], grad.flatten(1)[:2] / grad.flatten(1)[:2].abs().sum(1, True))
    assert not bool(step[2].any())


def test_l1_step_is_sparse_with_size_alpha_along_the_largest_gradients() -> None:
    grad = torch.randn(3, 1, 20, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    step = get_norm("l1").ascent_step_(grad.clone(), alpha).flatten(1)
    torch.testing.assert_close(step.abs().sum(1), alpha)
    assert bool(((step != 0).sum(1) == 2).all())  # 1% of 200 coordinates
    assert bool(((step * grad.flatten(1)) >= 0).all())
    top = grad.flatten(1).abs().topk(2, dim=1).indices
    assert bool((step.gather(1, top) != 0).all())


def test_sizes_count_l0_per_coordinate_and_l1_as_the_sum() -> None:
    delta = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    delta[0, :, 0, 0] = 0.5  # one pixel, three channels: three coordinates
    delta[1, 0, 1, 1] = -0.25
    torch.testing.assert_close(get_norm("l0").size(delta), torch.tensor([3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(get_norm("l1").size(delta), torch.tensor([1.5, 0.25], dtype=torch.float64))


def test_l0_budget_must_be_a_whole_count_and_fixed_budget_attacks_keep_linf_l2() -> None:
    x = torch.rand(2, 1, 3, 3)
    model = Linear(torch.randn(3, 9), torch.zeros(3))
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"eps for norm 'l0'.*whole number"):
        validate(model, x, y, eps=2.5, norm="l0", norms=ALL_NORM_NAMES)
    with pytest.raises(ValueError, match="eps for norm 'l0'"):
        get_norm("l0").ball(x, torch.tensor([1.0, 0.5]))
    assert validate(model, x, y, eps=3, norm="l0", norms=ALL_NORM_NAMES).eps.tolist() == [3.0, 3.0]
    assert NORM_NAMES == ("linf", "l2")
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        validate(model, x, y, eps=1.0, norm="l1")
    with pytest.raises(ValueError, match="no dual"):
        get_norm("l0").dual_size(x)
