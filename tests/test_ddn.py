"""DDN (Rony et al. 2019): the exact L2 distance on linear models, returned points, quantisation, bad input."""

from __future__ import annotations

import pytest
import torch

from advlab import attacks
from tests.test_fmn import linear_problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ddn_finds_the_exact_l2_distance_to_a_linear_boundary(seed: int, targeted: bool) -> None:
    model, x, y, exact = linear_problem(seed)
    labels = 1 - y if targeted else y
    res = attacks.ddn(model, x, labels, steps=200, targeted=targeted, return_info=True)
    assert bool(res.success.all())
    distance = res.extras["distance"]
    torch.testing.assert_close(distance, (res.x_adv - x).flatten(1).norm(dim=1))
    assert bool((distance >= exact["l2"] * (1 - 1e-9)).all())
    assert bool((distance <= exact["l2"] * 1.01).all()), distance / exact["l2"]


def test_ddn_points_are_in_the_box_and_success_agrees_with_the_model(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    for targeted, labels in ((False, y), (True, (y + 3) % 10)):
        res = attacks.ddn(model, x, labels, steps=20, targeted=targeted, return_info=True)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        assert torch.equal(res.success, pred == labels if targeted else pred != labels)
        assert int(res.success.sum()) > 12
        assert torch.equal(res.x_adv[~res.success], x[~res.success])
        assert bool(torch.isinf(res.extras["distance"][~res.success]).all())


def test_ddn_quantised_points_lie_on_the_grid(digits_model) -> None:
    model, x, y = digits_model
    x = (x[:16] * 255).round() / 255  # 8-bit images
    res = attacks.ddn(model, x, y[:16], steps=20, levels=256, return_info=True)
    assert int(res.success.sum()) > 8
    scaled = res.x_adv.double() * 255
    torch.testing.assert_close(scaled, scaled.round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"norm": "l1"}, TypeError, "norm"),  # DDN is L2 only: no norm argument
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"gamma": 1.0}, ValueError, "gamma must be < 1"),
        ({"init_norm": -1.0}, ValueError, "init_norm"),
        ({"levels": 1}, ValueError, "levels must be None (no quantisation) or an int >= 2"),
        ({"levels": 0}, ValueError, "an int >= 2, got 0"),
        ({"levels": True}, TypeError, "an int >= 2, got True"),
        ({"levels": 2.5}, TypeError, "an int >= 2, got 2.5"),
    ],
)
def test_ddn_bad_parameters_raise_clear_errors(kwargs: dict, error: type, fragment: str) -> None:
    model, x, y, _ = linear_problem(0, n=2)
    with pytest.raises(error) as info:
        attacks.ddn(model, x, y, **kwargs)
    assert fragment in str(info.value)
