"""Every attack on the inputs and models users actually bring: channels-last and transposed image batches, and
models that autocast to bfloat16 inside their forward (what advlab tells half-precision users to do).

The checks are outcomes, not internals: the attack runs, its points are in the box (and the ball, for the fixed-eps
attacks), a channels-last or transposed batch gives the points the same images give in row-major layout (attacks
keep the layout they are given: the model sees it), and the success flags of ``return_info=True`` agree with a
fresh forward pass of the model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from advlab import attacks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)
    ).eval()


class Autocast(nn.Module):
    """``inner`` run under CPU autocast to bfloat16: its logits come back in bfloat16."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(x)


def _minimal_norm(attack: Callable, norm: str) -> Callable:
    return lambda m, x, y: attack(m, x, y, norm=norm, steps=10, return_info=True)


# name -> (attack(model, x, y) -> AttackResult, norm and eps of its ball or None for a minimal-norm attack)
Run = Callable[[nn.Module, torch.Tensor, torch.Tensor], attacks.AttackResult]
ATTACKS: dict[str, tuple[Run, tuple[str, float] | None]] = {
    "fgsm": (lambda m, x, y: attacks.fgsm(m, x, y, 0.03, return_info=True), ("linf", 0.03)),
    "bim": (lambda m, x, y: attacks.bim(m, x, y, 0.03, steps=5, return_info=True), ("linf", 0.03)),
    "pgd linf": (lambda m, x, y: attacks.pgd(m, x, y, 0.03, steps=5, seed=0, return_info=True), ("linf", 0.03)),
    "pgd l2": (lambda m, x, y: attacks.pgd(m, x, y, 0.5, norm="l2", steps=5, seed=0, return_info=True), ("l2", 0.5)),
    "pgd l1": (lambda m, x, y: attacks.pgd(m, x, y, 4.0, norm="l1", steps=5, seed=0, return_info=True), ("l1", 4.0)),
    "pgd l0": (
        lambda m, x, y: attacks.pgd(m, x, y, 6, norm="l0", steps=5, random_start=False, return_info=True),
        ("l0", 6),
    ),
    "mifgsm": (lambda m, x, y: attacks.mifgsm(m, x, y, 0.03, steps=5, return_info=True), ("linf", 0.03)),
    "apgd": (lambda m, x, y: attacks.apgd(m, x, y, 0.03, steps=10, seed=0, return_info=True), ("linf", 0.03)),
    "apgd l2": (lambda m, x, y: attacks.apgd(m, x, y, 0.5, norm="l2", steps=10, seed=0, return_info=True), ("l2", 0.5)),
    "apgd dlr": (
        lambda m, x, y: attacks.apgd(m, x, y, 0.03, loss="dlr", steps=10, seed=0, return_info=True),
        ("linf", 0.03),
    ),
    "apgd_t": (lambda m, x, y: attacks.apgd_t(m, x, y, 0.03, steps=10, seed=0, return_info=True), ("linf", 0.03)),
    "apgd_l1": (lambda m, x, y: attacks.apgd_l1(m, x, y, 4.0, steps=10, seed=0, return_info=True), ("l1", 4.0)),
    "square linf": (
        lambda m, x, y: attacks.square(m, x, y, 0.03, queries=30, seed=0, return_info=True),
        ("linf", 0.03),
    ),
    "square l2": (
        lambda m, x, y: attacks.square(m, x, y, 0.5, norm="l2", queries=30, seed=0, return_info=True),
        ("l2", 0.5),
    ),
    "cw_l2": (lambda m, x, y: attacks.cw_l2(m, x, y, steps=10, binary_search_steps=2, return_info=True), None),
    "deepfool": (lambda m, x, y: attacks.deepfool(m, x, y, return_info=True), None),
    "ddn": (lambda m, x, y: attacks.ddn(m, x, y, steps=10, return_info=True), None),
    "sigma_zero": (lambda m, x, y: attacks.sigma_zero(m, x, y, steps=10, return_info=True), None),
    **{f"fmn {norm}": (_minimal_norm(attacks.fmn, norm), None) for norm in ("l0", "l1", "l2", "linf")},
    **{f"fab {norm}": (_minimal_norm(attacks.fab, norm), None) for norm in ("l1", "l2", "linf")},
    "fab_t": (lambda m, x, y: attacks.fab_t(m, x, y, norm="linf", steps=5, return_info=True), None),
    "minimal l0": (lambda m, x, y: attacks.minimal(m, x, y, norm="l0", steps=5, return_info=True), None),
    "minimal l1": (lambda m, x, y: attacks.minimal(m, x, y, norm="l1", steps=5, return_info=True), None),
}


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _cnn()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _check_contract(
    res: attacks.AttackResult, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ball: tuple[str, float] | None
) -> None:
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    if ball is not None:
        norm, eps = ball
        delta = (res.x_adv - x).double().flatten(1)
        size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l1": delta.abs().sum(1),
                "l0": (delta != 0).sum(1).double()}[norm]  # fmt: skip
        assert bool((size <= eps + 1e-6).all()), size
    with torch.no_grad():
        fresh = model(res.x_adv).argmax(1) != y
    assert bool((res.success <= fresh).all()), "a point reported adversarial is not, on a fresh forward pass"


class RowMajor(nn.Module):
    """``inner`` on a row-major copy of its input: the same logits, to the bit, whatever the input's layout (a
    convolution on channels-last input rounds differently), so that only the attack's handling of it shows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous())


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_accept_any_memory_layout_and_give_the_row_major_points(name: str, layout: str, problem: tuple) -> None:
    model, x, y = problem
    model, x = RowMajor(copy.deepcopy(model).double()), x.double()  # float64: the attack's own sums in another
    run, ball = ATTACKS[name]  # order differ by 1e-16, not enough to send a run elsewhere
    if layout == "channels_last":
        x_in = x.to(memory_format=torch.channels_last)
    else:  # the same values, stored with H and W swapped
        x_in = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_in.is_contiguous() and torch.equal(x_in, x)
    res = run(model, x_in, y)
    _check_contract(res, model, x, y, ball)
    reference = run(model, x, y)
    torch.testing.assert_close(res.x_adv, reference.x_adv, rtol=0, atol=1e-9)
    assert torch.equal(res.success, reference.success)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_run_on_a_model_that_autocasts_to_bfloat16(name: str, problem: tuple) -> None:
    model, x, _ = problem
    autocast = Autocast(model)
    with torch.no_grad():
        y = autocast(x).argmax(1)  # the labels the bfloat16 model gives
    run, ball = ATTACKS[name]
    res = run(autocast, x, y)
    _check_contract(res, autocast, x, y, ball)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_told_to_come_up_to_x(dtype: torch.dtype, problem: tuple) -> None:
    _, x, y = problem
    half = _cnn().to(dtype)
    for run in (ATTACKS["pgd linf"][0], ATTACKS["fmn l2"][0], ATTACKS["square linf"][0]):
        with pytest.raises(TypeError) as info:
            run(half, x, y)
        message = str(info.value)  # x cannot be half (check_images): the advice must not be x.to(half)
        assert "model.to(torch.float32)" in message and "autocast" in message and "x.to(" not in message


class NoGraph(nn.Module):
    """``inner`` behind a preprocessor run without a graph (a NumPy or OpenCV round trip): no input gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = (x * 15).round() / 15
        return self.inner(x)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_run_on_a_model_without_an_input_gradient(name: str, problem: tuple) -> None:
    # Review (session 20): autograd raised on such a model, the very case the gradient-masking checks and BPDA
    # exist for; a masked gradient must give a masked (zero-gradient) result that the checks can report.
    model, x, _ = problem
    masked = NoGraph(model).eval()
    with torch.no_grad():
        y = masked(x).argmax(1)
    run, ball = ATTACKS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(masked, x, y)
    _check_contract(res, masked, x, y, ball)
    said = any("no graph back to its input" in str(w.message) for w in caught)
    # Square takes no gradient; sigma-zero's objective has its own sparsity term, whose gradient is not zero.
    assert said == (not name.startswith(("square", "sigma_zero"))), [str(w.message) for w in caught]
