"""Property-based checks (hypothesis): every attack's output stays in the [0, 1] box and the eps-ball."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab import attacks
from tests.conftest import Linear

TOL = 1e-6  # the contract: no more than 1e-6 beyond the ball, whatever float rounding does


@st.composite
def problems(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 5))
    shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    classes = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    d = shape[1] * shape[2] * shape[3]
    # Pixels drawn from a mix of interior values and the box's own edges, where clipping matters most.
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    edge = torch.rand(shape, generator=g) < 0.3
    x = torch.where(edge, (x > 0.5).double(), x).to(dtype)
    model = Linear(
        torch.randn(classes, d, generator=g, dtype=dtype) * 5, torch.randn(classes, generator=g, dtype=dtype)
    )
    y = torch.randint(0, classes, (n,), generator=g)
    per_sample = draw(st.booleans())
    if per_sample:
        eps = torch.rand(n, generator=g, dtype=dtype) * draw(st.floats(0.0, 2.0))
    else:
        eps = draw(st.floats(0.0, 2.0))
    return {"model": model, "x": x, "y": y, "eps": eps, "targeted": draw(st.booleans()), "seed": seed}


def _check(x: torch.Tensor, x_adv: torch.Tensor, eps: float | torch.Tensor, norm: str) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    e = torch.as_tensor(eps, dtype=torch.float64).expand(x.shape[0])
    delta = (x_adv - x).double().flatten(1)
    dist = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l1": delta.abs().sum(1),
            "l0": (delta != 0).sum(1).double()}[norm]  # fmt: skip
    assert bool((dist <= e + TOL).all()), (dist, e)


@pytest.mark.filterwarnings("ignore:Linf eps:UserWarning")  # eps up to 2 on purpose: the box must hold
@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(["linf", "l2"]), st.sampled_from(["ce", "margin"]))
def test_fgsm_stays_in_box_and_ball(p: dict, norm: str, loss: str) -> None:
    x_adv = attacks.fgsm(p["model"], p["x"], p["y"], p["eps"], norm=norm, loss=loss, targeted=p["targeted"])
    _check(p["x"], x_adv, p["eps"], norm)


@pytest.mark.filterwarnings("ignore:Linf eps:UserWarning")  # eps up to 2 on purpose: the box must hold
@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 6))
def test_bim_stays_in_box_and_ball(p: dict, steps: int) -> None:
    x_adv = attacks.bim(p["model"], p["x"], p["y"], p["eps"], 0.05, steps, targeted=p["targeted"])
    _check(p["x"], x_adv, p["eps"], "linf")


@pytest.mark.filterwarnings("ignore:Linf eps:UserWarning")  # eps up to 2 on purpose: the box must hold
@settings(max_examples=80, deadline=None)
@given(problems(), st.sampled_from(["linf", "l2", "l1", "l0"]), st.integers(1, 5), st.integers(1, 3), st.booleans())
def test_pgd_stays_in_box_and_ball(p: dict, norm: str, steps: int, restarts: int, random_start: bool) -> None:
    if norm == "l0":  # a count of coordinates, up to all of them; the default step (an L1 length)
        p["eps"] = (torch.as_tensor(p["eps"]) * p["x"][0].numel() / 2).round()
    x_adv = attacks.pgd(
        p["model"],
        p["x"],
        p["y"],
        p["eps"],
        None if norm == "l0" else 0.3,
        steps,
        norm=norm,
        restarts=restarts,
        random_start=random_start,
        targeted=p["targeted"],
        seed=p["seed"],
    )
    _check(p["x"], x_adv, p["eps"], norm)


@settings(max_examples=30, deadline=None)
@given(problems())
def test_cw_returns_box_points_and_unchanged_failures(p: dict) -> None:
    res = attacks.cw_l2(
        p["model"], p["x"], p["y"], steps=5, binary_search_steps=2, targeted=p["targeted"], return_info=True
    )
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    failed = ~res.success
    assert torch.equal(res.x_adv[failed], p["x"][failed])
    l2 = (res.x_adv - p["x"]).flatten(1).norm(dim=1)
    torch.testing.assert_close(l2[res.success], res.extras["l2"][res.success].to(l2.dtype), rtol=1e-4, atol=1e-6)
    # The line search only ever shrinks a success along its own direction: same successes, never a larger L2.
    raw = attacks.cw_l2(
        p["model"],
        p["x"],
        p["y"],
        steps=5,
        binary_search_steps=2,
        targeted=p["targeted"],
        refine_steps=0,
        return_info=True,
    )
    assert torch.equal(raw.success, res.success)
    assert bool((res.extras["l2"][res.success] <= raw.extras["l2"][res.success]).all())


def _exact_l2_projection(p: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Reference: clip(x + t (p - x)) with the largest feasible t in [0, 1], by bisection in float64."""
    d = (p - x).double()
    xd = x.double()

    def reached(t: torch.Tensor) -> torch.Tensor:
        return (xd + t.view(-1, *[1] * (x.dim() - 1)) * d).clamp(0, 1).sub(xd).flatten(1).norm(dim=1)

    lo, hi = torch.zeros(x.shape[0], dtype=torch.float64), torch.ones(x.shape[0], dtype=torch.float64)
    lo = torch.where(reached(hi) <= eps.double(), hi, lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        ok = reached(mid) <= eps.double()
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return (xd + lo.view(-1, *[1] * (x.dim() - 1)) * d).clamp(0, 1)


@settings(max_examples=100, deadline=None)
@given(problems(), st.floats(0.0, 4.0))
def test_l2_projection_is_feasible_and_no_farther_than_scale_then_clip(p: dict, reach: float) -> None:
    from advlab.attacks.norms import L2

    x = p["x"]
    eps = torch.as_tensor(p["eps"], dtype=x.dtype).expand(x.shape[0]).clone()
    g = torch.Generator().manual_seed(p["seed"])
    direction = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    target = x + direction * (reach * eps).view(-1, 1, 1, 1)
    z = L2().ball(x, eps).project_(target.clone())
    _check(x, z, eps, "l2")
    # The usual shortcut: scale the step to the ball, then clip. The projection is never farther from target.
    delta = target - x
    scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
    shortcut = (x + delta * scale.view(-1, 1, 1, 1)).clamp(0, 1)
    farther = (z - target).flatten(1).norm(dim=1) - (shortcut - target).flatten(1).norm(dim=1)
    assert bool((farther <= 1e-5).all()), farther


def test_l2_projection_matches_the_exact_projection_on_images_with_saturated_pixels() -> None:
    """On digits (8 x 8, many pixels at 0) with steps twice eps, the fixed point lands within 0.5% of the exact
    projection's distance to the target and on the sphere, where scale-then-clip stops well inside the ball."""
    from sklearn.datasets import load_digits

    from advlab.attacks.norms import L2

    x = torch.from_numpy(load_digits().images[:200] / 16.0).float().unsqueeze(1)
    g = torch.Generator().manual_seed(0)
    eps = torch.full((x.shape[0],), 1.5)
    direction = torch.randn(x.shape, generator=g)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    target = x + direction * 2 * eps.view(-1, 1, 1, 1)
    z = L2().ball(x, eps).project_(target.clone())
    exact = _exact_l2_projection(target, x, eps)
    to_target = (z.double() - target.double()).flatten(1).norm(dim=1)
    exact_to_target = (exact - target.double()).flatten(1).norm(dim=1)
    assert float((to_target / exact_to_target).max()) <= 1.005
    assert float((z - x).flatten(1).norm(dim=1).min()) >= 0.99 * 1.5
    shortcut = (x + (target - x) / 2).clamp(0, 1)
    assert float((shortcut - x).flatten(1).norm(dim=1).median()) < 0.85 * 1.5
