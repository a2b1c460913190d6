"""The attack core: analytic optima on linear models, per-sample independence, model hygiene, real-model strength."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import attacks
from tests.conftest import Linear, digits_cnn

Attack = Callable[..., torch.Tensor]

# Every attack with a budget that makes it do real work; each takes (model, x, y, **extra).
ATTACKS: dict[str, Callable[..., object]] = {
    "fgsm": lambda m, x, y, **k: attacks.fgsm(m, x, y, 0.1, **k),
    "bim": lambda m, x, y, **k: attacks.bim(m, x, y, 0.1, 0.02, 8, **k),
    "pgd_linf": lambda m, x, y, **k: attacks.pgd(m, x, y, 0.1, 0.02, 8, restarts=2, seed=k.pop("seed", 0), **k),
    "pgd_l2": lambda m, x, y, **k: attacks.pgd(m, x, y, 0.8, 0.2, 8, norm="l2", restarts=2, seed=k.pop("seed", 0), **k),
    # CW's early abort is a batch decision (the reference's rule); the CW tests below check it on its own.
    "cw_l2": lambda m, x, y, **k: attacks.cw_l2(
        m, x, y, c=0.1, steps=20, binary_search_steps=3, lr=0.05, abort_early=False, **k
    ),
    # The minimal-norm attacks (no randomness: each sample's run is its own by construction).
    **{
        f"fmn_{norm}": functools.partial(lambda norm, m, x, y, **k: attacks.fmn(m, x, y, norm=norm, steps=8, **k), norm)
        for norm in ("l0", "l1", "l2", "linf")
    },
    "ddn": lambda m, x, y, **k: attacks.ddn(m, x, y, steps=8, **k),
    "fab_linf": lambda m, x, y, **k: attacks.fab(m, x, y, norm="linf", steps=4, **k),
    "fab_l1": lambda m, x, y, **k: attacks.fab(m, x, y, norm="l1", steps=4, **k),
    "fab_l2": lambda m, x, y, **k: attacks.fab(m, x, y, norm="l2", steps=4, **k),
    "fab_l2_targeted": lambda m, x, y, **k: attacks.fab(m, x, y, norm="l2", steps=4, targeted=True, **k),
    "fab_t_l2": lambda m, x, y, **k: attacks.fab_t(m, x, y, norm="l2", steps=3, n_target_classes=2, **k),
    "minimal_l1": lambda m, x, y, **k: attacks.minimal(m, x, y, norm="l1", steps=4, **k),
    "pgd_l1": lambda m, x, y, **k: attacks.pgd(m, x, y, 2.0, 0.5, 8, norm="l1", restarts=2, seed=k.pop("seed", 0), **k),
    "apgd_l1": lambda m, x, y, **k: attacks.apgd_l1(m, x, y, 2.0, steps=8, restarts=2, seed=k.pop("seed", 0), **k),
    "pgd_l0": lambda m, x, y, **k: attacks.pgd(m, x, y, 5, steps=8, norm="l0", restarts=2, seed=k.pop("seed", 0), **k),
    "sigma_zero": lambda m, x, y, **k: attacks.sigma_zero(m, x, y, steps=8, **k),
}
SEEDED = {"pgd_linf", "pgd_l2", "pgd_l1", "apgd_l1", "pgd_l0"}


def logistic(d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Linear, torch.Tensor, float]:
    """Two-class linear model with logits (0, w.x + b); returns it, w, b."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=dtype)
    b = float(torch.randn((), generator=g, dtype=dtype))
    weight = torch.stack([torch.zeros_like(w), w])
    bias = torch.tensor([0.0, b], dtype=dtype)
    return Linear(weight, bias), w, b


def logistic_problem(
    seed: int, n: int, data_seed: int
) -> tuple[Linear, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logistic model on 16 pixels with n images in [0.4, 0.6], labelled by the model: (model, w, x, z, y)."""
    model, w, b = logistic(16, seed)
    g = torch.Generator().manual_seed(data_seed)
    x = 0.4 + 0.2 * torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    z = x.flatten(1) @ w + b
    return model, w, x, z, (z > 0).long()


# ---------------------------------------------------------------------------------------- analytic checks


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (3, 3, 2, 5), (7, 2, 3, 3), (16, 1, 8, 8)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_on_logistic_model_is_eps_sign_w(shape: tuple[int, ...], targeted: bool) -> None:
    model, w, _ = logistic(int(torch.tensor(shape[1:]).prod()))
    g = torch.Generator().manual_seed(1)
    x = 0.25 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)  # eps below keeps it in the box
    eps = 0.05
    # Class 0 has logit 0, class 1 has w.x + b: moving away from 0 (or towards target 1) means +sign(w).
    y = torch.zeros(shape[0], dtype=torch.long) if not targeted else torch.ones(shape[0], dtype=torch.long)
    x_adv = attacks.fgsm(model, x, y, eps, targeted=targeted)
    expected = eps * torch.sign(w).expand(shape[0], -1)
    torch.testing.assert_close((x_adv - x).flatten(1), expected, rtol=0, atol=1e-12)
    # The other class direction flips the sign.
    x_adv = attacks.fgsm(model, x, 1 - y, eps, targeted=targeted)
    torch.testing.assert_close((x_adv - x).flatten(1), -expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cw_l2_finds_the_exact_distance_to_a_linear_boundary(seed: int) -> None:
    model, w, x, z, y = logistic_problem(seed, 6, seed + 10)
    # The nearest point of the boundary w.x + b = 0 is at |z| / ||w||; keep it inside the box.
    distance = z.abs() / w.norm()
    res = attacks.cw_l2(model, x, y, c=1e-1, steps=300, lr=5e-3, binary_search_steps=12, return_info=True)
    assert res.success.all()
    l2 = (res.x_adv - x).flatten(1).norm(dim=1)
    assert bool((l2 >= distance * (1 - 1e-6)).all()), "an adversarial point closer than the boundary is impossible"
    assert bool((l2 <= distance * 1.01).all()), f"CW L2 {l2} vs exact {distance}"
    torch.testing.assert_close(res.extras["l2"], l2)


@pytest.mark.parametrize("classes", [2, 5])
def test_pgd_loss_is_never_below_fgsm_on_linear_model(classes: int) -> None:
    g = torch.Generator().manual_seed(classes)
    model = Linear(torch.randn(classes, 12, generator=g), torch.randn(classes, generator=g))
    x = torch.rand(32, 3, 2, 2, generator=g)
    y = torch.randint(0, classes, (32,), generator=g)
    eps = 0.1
    loss = nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        loss_fgsm = loss(model(attacks.fgsm(model, x, y, eps)), y)
        loss_pgd = loss(model(attacks.pgd(model, x, y, eps, alpha=eps / 4, steps=20, seed=0)), y)
    assert bool((loss_pgd >= loss_fgsm - 1e-5).all())


# ----------------------------------------------------------------------------------- per-sample independence


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_sample_gets_what_it_gets_alone(name: str) -> None:
    torch.manual_seed(0)
    model = digits_cnn().double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 10
    seeds = torch.tensor([11, 12, 13, 14, 15, 16])
    kwargs = {"seed": seeds} if name in SEEDED else {}
    batch = ATTACKS[name](model, x, y, return_info=True, **kwargs)
    for i in range(6):
        kw = {"seed": seeds[i : i + 1]} if name in SEEDED else {}
        alone = ATTACKS[name](model, x[i : i + 1], y[i : i + 1], return_info=True, **kw)
        torch.testing.assert_close(batch.x_adv[i : i + 1], alone.x_adv, rtol=0, atol=1e-12)
        assert bool(batch.success[i]) == bool(alone.success[0])


def test_batch_order_does_not_change_seeded_pgd() -> None:
    torch.manual_seed(0)
    model = digits_cnn().double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(5)
    seeds = torch.arange(100, 105)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = attacks.pgd(model, x, y, 0.1, 0.02, 5, restarts=3, seed=seeds)
    b = attacks.pgd(model, x[perm], y[perm], 0.1, 0.02, 5, restarts=3, seed=seeds[perm])
    torch.testing.assert_close(a[perm], b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------- model hygiene


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_is_left_as_it_was(name: str) -> None:
    torch.manual_seed(0)
    model = WithBatchNorm()
    model.train()
    model.body[1].eval()  # a mixed-mode model must come back mixed
    model.head.bias.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 1, 8, 8)
    ATTACKS[name](model, x, torch.arange(4))
    assert model.training and model.body[0].training and not model.body[1].training and model.body[3].training
    assert model.head.weight.requires_grad and not model.head.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():  # BatchNorm running stats untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


@pytest.mark.parametrize("name", list(ATTACKS))
def test_works_inside_no_grad_and_returns_same_dtype_and_device(name: str) -> None:
    torch.manual_seed(0)
    model = digits_cnn()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        x_adv = ATTACKS[name](model, x, torch.arange(3))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad


# ------------------------------------------------------------------------------------------ returned points


def test_per_sample_eps_zero_leaves_the_sample_unchanged(digits_model) -> None:
    model, x, y = digits_model
    eps = torch.tensor([0.0, 0.2, 0.0, 0.2])
    for x_adv in (
        attacks.fgsm(model, x[:4], y[:4], eps),
        attacks.bim(model, x[:4], y[:4], eps, 0.05, 5),
        attacks.pgd(model, x[:4], y[:4], eps, 0.05, 5, seed=0),
        attacks.pgd(model, x[:4], y[:4], eps * 5, 0.5, 5, norm="l2", seed=0),
    ):
        assert torch.equal(x_adv[0], x[0]) and torch.equal(x_adv[2], x[2])
        assert not torch.equal(x_adv[1], x[1])


@pytest.mark.parametrize("name", ["pgd", "apgd_l1"])
def test_l1_attacks_give_each_sample_its_own_eps(name: str, digits_model) -> None:
    """A per-sample L1 eps: each sample's perturbation within its own eps (0: unchanged), and each gets what it
    gets alone with that eps as a number."""
    model, x, y = digits_model
    x, y = x[:4].double(), y[:4]
    model = copy.deepcopy(model).double()
    eps = torch.tensor([0.0, 2.0, 5.0, 1.0], dtype=torch.float64)
    kwargs = {"norm": "l1", "steps": 8, "seed": 3} if name == "pgd" else {"steps": 8, "seed": 3}
    batch = getattr(attacks, name)(model, x, y, eps, **kwargs)
    size = (batch - x).flatten(1).abs().sum(1)
    assert torch.equal(batch[0], x[0]) and bool((size <= eps * (1 + 1e-9)).all()), size
    for i in range(4):
        alone = getattr(attacks, name)(model, x[i : i + 1], y[i : i + 1], float(eps[i]), **{**kwargs, "seed": 3 + i})
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-12)


def test_success_flags_match_the_model(digits_model) -> None:
    model, x, y = digits_model
    target = (y + 1) % 10
    cases = [
        (attacks.fgsm(model, x, y, 0.1, return_info=True), y, False),
        (attacks.pgd(model, x, y, 0.1, 0.02, 10, seed=0, return_info=True), y, False),
        (attacks.pgd(model, x, target, 0.2, 0.02, 20, seed=0, targeted=True, return_info=True), target, True),
        (
            attacks.cw_l2(model, x[:50], y[:50], steps=30, binary_search_steps=3, lr=0.05, return_info=True),
            y[:50],
            False,
        ),
    ]
    for res, labels, targeted in cases:
        with torch.no_grad():
            pred = model(res.x_adv).argmax(1)
        assert torch.equal(res.success, pred == labels if targeted else pred != labels)
        assert 0 < int(res.success.sum()) < len(labels) or targeted


def test_pgd_restarts_never_lose_a_success(digits_model) -> None:
    model, x, y = digits_model
    one = attacks.pgd(model, x, y, 0.06, 0.01, 5, restarts=1, seed=3, return_info=True)
    five = attacks.pgd(model, x, y, 0.06, 0.01, 5, restarts=5, seed=3, return_info=True)
    assert bool((five.success | ~one.success).all())
    assert five.success.sum() >= one.success.sum()


def test_cw_unsuccessful_samples_come_back_unchanged(digits_model) -> None:
    model, x, y = digits_model
    res = attacks.cw_l2(model, x[:20], y[:20], c=1e-6, steps=2, lr=1e-4, binary_search_steps=1, return_info=True)
    with torch.no_grad():
        correct = model(x[:20]).argmax(1) == y[:20]
    failed = ~res.success
    assert bool((failed & correct).any())
    assert torch.equal(res.x_adv[failed], x[:20][failed])
    assert bool(torch.isinf(res.extras["l2"][failed]).all())


def critical_c(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The smallest c for which CW's objective has an adversarial minimiser on the logistic model.

    Along the best direction (-sign(z) w), at distance r the margin is |z| - ||w|| r, so CW minimises
    r^2 + c max(|z| - ||w|| r, 0): its minimiser is r = c ||w|| / 2, short of the boundary d = |z| / ||w|| while
    c < c* = 2 |z| / ||w||^2, and the boundary point itself from c* on.
    """
    return 2 * z.abs() / w.norm() ** 2


# The logistic problems below: 6 images each, boundaries at L2 0.2-0.6, far enough that Adam at lr 5e-3 does not
# cross them in its first steps whatever c is. c starts at 1e-3, two decades below c*: the first rounds' objectives
# rise from their first iterate on, so with abort_early those rounds stop after a few iterations.
CW_ANALYTIC = dict(c=1e-3, steps=200, lr=5e-3, binary_search_steps=12, return_info=True)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", [0, 5])
def test_cw_abort_early_finds_the_boundary_as_well_as_running_every_step(seed: int) -> None:
    model, w, x, z, y = logistic_problem(seed, 6, seed + 10)
    distance = z.abs() / w.norm()
    full = attacks.cw_l2(model, x, y, abort_early=False, **CW_ANALYTIC)
    aborted = attacks.cw_l2(model, x, y, abort_early=True, **CW_ANALYTIC)
    for res in (full, aborted):
        assert res.success.all()
        l2 = (res.x_adv - x).flatten(1).norm(dim=1)
        torch.testing.assert_close(res.extras["l2"], l2)
        assert bool((l2 >= distance * (1 - 1e-6)).all()), "an adversarial point closer than the boundary"
        assert bool((l2 <= distance * 1.01).all()), f"CW L2 {l2} vs exact {distance}"
    # The rounds the abort cuts short are the hopeless ones: the result is as good as the full schedule's.
    assert bool((aborted.extras["l2"] <= full.extras["l2"] * (1 + 1e-3)).all())
    torch.testing.assert_close(aborted.extras["c"], full.extras["c"], rtol=0.05, atol=0)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", [0, 5])
def test_cw_binary_search_brackets_the_critical_c(seed: int) -> None:
    model, w, x, z, y = logistic_problem(seed, 6, seed + 10)
    c_star = critical_c(w, z)
    res = attacks.cw_l2(model, x, y, **CW_ANALYTIC)
    assert res.success.all()
    # From 1e-3 the search passes 1e-1 (below every c*, ~0.16-0.27 here) and succeeds at 1, then bisects
    # [0.1, 1] eight times: the smallest c that succeeded is within 0.0035 of c*, up to how close to c* a
    # 200-step round can tell success from failure.
    c = res.extras["c"]
    assert bool((c >= 0.9 * c_star).all() and (c <= 1.15 * c_star).all()), (c / c_star).tolist()
    # The bracket, one round each: c well below c* never succeeds, the c found does (at the boundary).
    one_round = dict(steps=200, lr=5e-3, binary_search_steps=1, return_info=True)
    below = attacks.cw_l2(model, x, y, c=0.8 * c_star, **one_round)
    at = attacks.cw_l2(model, x, y, c=c, **one_round)
    assert not below.success.any()
    assert torch.equal(below.x_adv, x)
    assert at.success.all()
    assert bool((at.extras["l2"] <= z.abs() / w.norm() * 1.01).all())


def tanh_mlp_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded non-linear model (16-12-4 tanh MLP, float64) with 6 images labelled by it (classes 0-3)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("problem", ["logistic", "tanh_mlp"])
def test_cw_more_search_rounds_never_give_a_larger_l2(problem: str) -> None:
    if problem == "logistic":
        model, _, x, _, y = logistic_problem(4, 6, 14)
    else:
        model, x, y = tanh_mlp_problem()
    # Without the line search, round k of a longer search is round k of a shorter one, and the result is the
    # smallest adversarial point met in all rounds: its L2 can only fall as the budget grows.
    l2 = [
        attacks.cw_l2(
            model, x, y, c=0.02, steps=60, lr=1e-2, binary_search_steps=k, refine_steps=0, return_info=True
        ).extras["l2"]
        for k in range(1, 7)
    ]
    for k in range(1, 6):
        assert bool((l2[k] <= l2[k - 1]).all()), f"{k + 1} rounds: {l2[k]} vs {k} rounds: {l2[k - 1]}"
    # Not vacuous: round 1 (c = 0.02) finds nothing, later rounds find every sample and then keep improving.
    assert bool(torch.isinf(l2[0]).all()) and bool(torch.isfinite(l2[-1]).all())
    assert int((l2[-1] < l2[2]).sum()) >= 2


@pytest.mark.usefixtures("one_thread")
def test_cw_line_search_only_shrinks_and_keeps_every_success(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    kwargs = dict(c=0.1, steps=30, lr=0.05, binary_search_steps=3, return_info=True)
    raw = attacks.cw_l2(model, x, y, refine_steps=0, **kwargs)
    refined = attacks.cw_l2(model, x, y, **kwargs)  # the default line search
    assert torch.equal(refined.success, raw.success) and int(raw.success.sum()) >= 16
    with torch.no_grad():
        for res in (raw, refined):
            assert torch.equal(model(res.x_adv).argmax(1) != y, res.success)
            torch.testing.assert_close(
                res.extras["l2"][res.success], (res.x_adv - x)[res.success].flatten(1).norm(dim=1)
            )
    ok = raw.success
    assert bool((refined.extras["l2"][ok] <= raw.extras["l2"][ok]).all())
    # Adam overshoots the boundary on a real model too: most successful points get strictly closer.
    assert int((refined.extras["l2"][ok] < raw.extras["l2"][ok] * 0.99).sum()) >= int(ok.sum()) // 2
    assert torch.equal(refined.x_adv[~ok], x[~ok])


# Per-sample starting c from far too small to large: the samples' searches take different paths.
CW_COMPANIONS = dict(
    c=torch.tensor([0.01, 0.1, 1.0, 0.05, 0.5, 3.0], dtype=torch.float64),
    steps=25,
    lr=0.05,
    binary_search_steps=3,
    abort_early=False,
    return_info=True,
)


@functools.cache
def cw_on_the_whole_batch() -> attacks.AttackResult:
    model, x, y = tanh_mlp_problem()
    return attacks.cw_l2(model, x, y, **CW_COMPANIONS)


@pytest.mark.usefixtures("one_thread")
@settings(max_examples=12, deadline=None)
@given(order=st.permutations(range(6)), keep=st.integers(1, 6))
def test_cw_sample_result_does_not_depend_on_its_batch_companions(order: list[int], keep: int) -> None:
    """With abort_early=False each sample runs its own search: any sub-batch, in any order, gets the same rows."""
    model, x, y = tanh_mlp_problem()
    whole = cw_on_the_whole_batch()
    assert 0 < int(whole.success.sum()) < 6, "the test needs samples that succeed and one that does not"
    idx = torch.tensor(order[:keep])
    part = attacks.cw_l2(model, x[idx], y[idx], **{**CW_COMPANIONS, "c": CW_COMPANIONS["c"][idx]})
    torch.testing.assert_close(part.x_adv, whole.x_adv[idx], rtol=0, atol=1e-12)
    assert torch.equal(part.success, whole.success[idx])
    torch.testing.assert_close(part.extras["l2"], whole.extras["l2"][idx], rtol=0, atol=1e-12)
    torch.testing.assert_close(part.extras["c"], whole.extras["c"][idx], rtol=0, atol=0)


def test_cw_rounds_reusing_the_first_iterate_match_fresh_single_rounds(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:12].double(), y[:12]
    model.double()
    try:
        kwargs = dict(steps=15, lr=0.05, abort_early=False, refine_steps=0, return_info=True)
        c0 = torch.full((12,), 0.05, dtype=torch.float64)
        both = attacks.cw_l2(model, x, y, c=c0, binary_search_steps=2, **kwargs)
        first = attacks.cw_l2(model, x, y, c=c0, binary_search_steps=1, **kwargs)
        # Round 2's c by the search rule: halved (bisected towards 0) where round 1 succeeded, else times ten.
        c1 = torch.where(first.success, c0 / 2, c0 * 10)
        second = attacks.cw_l2(model, x, y, c=c1, binary_search_steps=1, **kwargs)
        assert bool(first.success.any()) and bool((~first.success).any()), "the test needs both branches"
        # Round 2 of the two-round run reused round 1's first forward and gradients; a fresh run computed them.
        take_second = second.extras["l2"] < first.extras["l2"]
        expected = torch.where(take_second[:, None, None, None], second.x_adv, first.x_adv)
        torch.testing.assert_close(both.x_adv, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(both.extras["l2"], torch.minimum(first.extras["l2"], second.extras["l2"]))
    finally:
        model.float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cw_line_search_finds_the_boundary_along_the_found_direction(seed: int) -> None:
    model, w, x, z0, y = logistic_problem(seed, 8, seed + 20)
    b = float(model.bias.detach()[1])
    # Few Adam steps with a large c: the points found overshoot the boundary.
    kwargs = dict(c=10.0, steps=3, lr=0.5, binary_search_steps=1, abort_early=False, return_info=True)
    raw = attacks.cw_l2(model, x, y, refine_steps=0, **kwargs)
    refine_steps = 10
    ref = attacks.cw_l2(model, x, y, refine_steps=refine_steps, **kwargs)
    assert raw.success.all() and ref.success.all()
    delta = (raw.x_adv - x).flatten(1)
    # The logit w.x + b is linear along delta, so the boundary lies at s* = z0 / (z0 - z1) of it.
    z1 = raw.x_adv.flatten(1) @ w + b
    s_star = z0 / (z0 - z1)
    s = (ref.x_adv - x).flatten(1).norm(dim=1) / delta.norm(dim=1)
    torch.testing.assert_close((ref.x_adv - x).flatten(1), s[:, None] * delta)  # same direction, shrunk
    assert bool((s >= s_star).all()), "a point short of the boundary is not adversarial"
    assert bool((s <= s_star + 2.0**-refine_steps).all()), f"bisection left s {s} far above s* {s_star}"
    # Not vacuous: every point Adam found overshoots, so the line search has to move each of them.
    assert bool((s_star < 0.99).all()) and int((s_star < 0.9).sum()) >= 2
    torch.testing.assert_close(ref.extras["l2"], (ref.x_adv - x).flatten(1).norm(dim=1))


def test_targeted_cw_reaches_targets_with_small_l2(digits_model) -> None:
    model, x, y = digits_model
    target = (y[:40] + 3) % 10
    # lr 0.1: digit backgrounds sit at exactly 0, where tanh-space CW needs large w steps to move at all.
    res = attacks.cw_l2(
        model, x[:40], target, targeted=True, c=0.1, steps=100, lr=0.1, binary_search_steps=5, return_info=True
    )
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert res.success.float().mean() >= 0.95
    assert torch.equal(pred[res.success], target[res.success])
    # kappa: a confident attack leaves a logit margin of at least kappa on its successes.
    res_k = attacks.cw_l2(
        model,
        x[:40],
        target,
        targeted=True,
        kappa=2.0,
        c=0.1,
        steps=100,
        lr=0.1,
        binary_search_steps=5,
        return_info=True,
    )
    with torch.no_grad():
        logits = model(res_k.x_adv)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    z_other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
    assert bool((z_t - z_other >= 2.0 - 1e-4)[res_k.success].all())
    assert res_k.extras["l2"][res_k.success].median() > res.extras["l2"][res.success].median()


# ------------------------------------------------------------------------------------------ real-model strength


def test_pgd_is_at_least_as_strong_as_fgsm_and_targeted_pgd_reaches_targets(digits_model) -> None:
    model, x, y = digits_model
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
        assert clean > 0.9
        for eps in (0.05, 0.1, 0.2):
            acc_fgsm = (model(attacks.fgsm(model, x, y, eps)).argmax(1) == y).float().mean()
            acc_pgd = (model(attacks.pgd(model, x, y, eps, 2.5 * eps / 10, 10, seed=0)).argmax(1) == y).float().mean()
            assert acc_pgd <= acc_fgsm, (eps, acc_pgd, acc_fgsm)
        target = (y + 1) % 10
        x_t = attacks.pgd(model, x, target, 0.3, 0.03, 30, targeted=True, seed=0)
        reached = (model(x_t).argmax(1) == target).float().mean()
    assert reached >= 0.9


def test_margin_loss_and_l2_pgd_break_the_model(digits_model) -> None:
    model, x, y = digits_model
    with torch.no_grad():
        acc_margin = (model(attacks.pgd(model, x, y, 0.2, 0.02, 20, loss="margin", seed=0)).argmax(1) == y).float()
        acc_l2 = (model(attacks.pgd(model, x, y, 2.0, 0.25, 20, norm="l2", seed=0)).argmax(1) == y).float()
    assert acc_margin.mean() < 0.2 and acc_l2.mean() < 0.2


# ------------------------------------------------------------------------------------------------ bad input


def _one_pixel(value: float) -> torch.Tensor:
    """Valid images but for one pixel of the second (what a corrupted decode gives)."""
    x = torch.rand(2, 1, 8, 8)
    x[1, 0, 3, 5] = value
    return x


def _bad_inputs() -> list[tuple[str, dict, type[Exception], str]]:
    return [
        ("x above 1", {"x": torch.full((2, 1, 8, 8), 1.5)}, ValueError, "[0, 1]"),
        ("x below 0", {"x": torch.full((2, 1, 8, 8), -0.1)}, ValueError, "[0, 1]"),
        ("x NaN", {"x": torch.full((2, 1, 8, 8), float("nan"))}, ValueError, "NaN"),
        ("x inf", {"x": torch.full((2, 1, 8, 8), float("inf"))}, ValueError, "NaN or inf"),
        ("x one NaN", {"x": _one_pixel(float("nan"))}, ValueError, "NaN or inf"),
        ("x one -inf", {"x": _one_pixel(-float("inf"))}, ValueError, "NaN or inf"),
        ("x int", {"x": torch.zeros((2, 1, 8, 8), dtype=torch.uint8)}, TypeError, "float32 or float64"),
        ("x half", {"x": torch.zeros((2, 1, 8, 8), dtype=torch.float16)}, TypeError, "autocast"),
        ("x double", {"x": torch.zeros((2, 1, 8, 8), dtype=torch.float64)}, TypeError, "x.to(torch.float32)"),
        ("y length", {"y": torch.tensor([1, 2, 3])}, ValueError, "shape (2,)"),
        ("x one image", {"x": torch.rand(3, 8, 8), "y": torch.tensor([1])}, ValueError, "x[None]"),
        ("y float", {"y": torch.tensor([1.0, 2.0])}, TypeError, "integer"),
        ("y too big", {"y": torch.tensor([1, 10])}, ValueError, "10 classes"),
        ("y negative", {"y": torch.tensor([-1, 0])}, ValueError, ">= 0"),
    ]


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_inputs_raise_clear_errors(name: str, case) -> None:
    _, override, error, fragment = case
    model = digits_cnn()
    args = {"x": torch.rand(2, 1, 8, 8), "y": torch.tensor([1, 2]), **override}
    with pytest.raises(error) as info:
        ATTACKS[name](model, args["x"], args["y"])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda m, x, y: attacks.fgsm(m, x, y, -0.1), ValueError, "eps must be >= 0"),
        (lambda m, x, y: attacks.fgsm(m, x, y, float("inf")), ValueError, "eps must be finite, got inf"),
        (lambda m, x, y: attacks.pgd(m, x, y, 1e39, norm="l2"), ValueError,
         "eps 1e+39 overflows x's dtype torch.float32 (largest 3.4e+38)"),
        (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.0, 5), ValueError, "alpha must be > 0"),
        (lambda m, x, y: attacks.bim(m, x, y, 0.1, -1.0, 5), ValueError, "alpha must be > 0"),
        (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, 0), ValueError, "steps must be >= 1"),
        (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, 2.5), TypeError, "steps must be an int"),
        (lambda m, x, y: attacks.pgd(m, x, y, 0.1, norm="l3"), ValueError, "unknown norm 'l3'"),
        (lambda m, x, y: attacks.pgd(m, x, y, 2.5, norm="l0"), ValueError, "must be a whole number, got 2.5"),
        (lambda m, x, y: attacks.apgd(m, x, y, 0.1, norm="l0"), ValueError, "unknown norm 'l0'"),
        (lambda m, x, y: attacks.fgsm(m, x, y, 0.1, loss="hinge"), ValueError, "unknown loss 'hinge'"),
        (lambda m, x, y: attacks.pgd(m, x, y, torch.tensor([0.1, 0.2, 0.3])), ValueError, "shape (2,)"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, steps=0), ValueError, "steps must be >= 1"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, c=0.0), ValueError, "c must be > 0"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, lr=-1.0), ValueError, "lr must be a finite number > 0"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, binary_search_steps=0), ValueError, "binary_search_steps"),
        (lambda m, x, y: attacks.cw_l2(m, x, y, refine_steps=-1), ValueError, "refine_steps must be an integer >= 0"),
        (lambda m, x, y: attacks.pgd(m, x, y, 0.1, seed=torch.tensor([1.0, 2.0])), ValueError, "seed tensor"),
        (lambda m, x, y: attacks.fgsm("model", x, y, 0.1), TypeError, "torch.nn.Module"),
    ],
)
def test_bad_parameters_raise_clear_errors(call, error, fragment) -> None:
    with pytest.raises(error) as info:
        call(digits_cnn(), torch.rand(2, 1, 8, 8), torch.tensor([1, 2]))
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("output", ["flat", "3d", "one_class"])
def test_model_with_wrong_output_shape_is_rejected(name: str, output: str) -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.lin(x.flatten(1))
            return {"flat": z.sum(1), "3d": z[:, None, :], "one_class": z[:, :1]}[output]

    with pytest.raises(ValueError, match="logits"):
        ATTACKS[name](Bad(), torch.rand(2, 1, 8, 8), torch.tensor([0, 0]))


def test_input_is_never_modified(digits_model) -> None:
    model, x, y = digits_model
    x0 = x.clone()
    for name in ATTACKS:
        ATTACKS[name](model, x[:8], y[:8])
    assert torch.equal(x, x0)


# Every public attack, at a small budget, on (model, x, y) with extra keyword arguments.
EVERY_ATTACK: dict[str, Callable[..., object]] = {
    **ATTACKS,
    "mifgsm": lambda m, x, y, **k: attacks.mifgsm(m, x, y, 0.1, steps=4, **k),
    "apgd": lambda m, x, y, **k: attacks.apgd(m, x, y, 0.1, steps=4, seed=0, **k),
    "apgd_t": lambda m, x, y, **k: attacks.apgd_t(m, x, y, 0.1, steps=4, n_target_classes=2, seed=0, **k),
    "square": lambda m, x, y, **k: attacks.square(m, x, y, 0.1, queries=8, seed=0, **k),
    "deepfool": lambda m, x, y, **k: attacks.deepfool(m, x, y, steps=4, **k),
}


@pytest.mark.parametrize("name", list(EVERY_ATTACK))
def test_inputs_inside_a_graph_give_the_same_detached_result(name: str, digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:6], y[:6]
    plain = EVERY_ATTACK[name](model, x, y, return_info=True)
    leaf = x.clone().requires_grad_(True)
    graphed = EVERY_ATTACK[name](model, leaf * 1.0, y, return_info=True)  # x computed by the caller's graph
    assert not graphed.x_adv.requires_grad and graphed.x_adv.grad_fn is None
    assert torch.equal(graphed.x_adv, plain.x_adv) and torch.equal(graphed.success, plain.success)
    assert leaf.grad is None


@pytest.mark.parametrize("name", list(EVERY_ATTACK))
def test_inference_mode_is_refused_and_inference_tensors_are_taken(name: str, digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:4], y[:4]
    with torch.inference_mode():
        frozen_x = x.clone()  # an inference tensor, e.g. from a data pipeline run under inference_mode
        with pytest.raises(RuntimeError, match="inference_mode"):
            EVERY_ATTACK[name](model, x, y)
    assert torch.equal(EVERY_ATTACK[name](model, frozen_x, y), EVERY_ATTACK[name](model, x, y))


def test_budgets_take_numpy_and_graph_tensors_and_warn_about_255_scale(digits_model) -> None:
    import warnings

    import numpy as np

    model, x, y = digits_model
    x, y = x[:4], y[:4]
    want = attacks.fgsm(model, x, y, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a budget that needs grad or a numpy scalar
        single = np.float32(0.1)
        assert torch.equal(attacks.fgsm(model, x, y, single), attacks.fgsm(model, x, y, float(single)))
        eps = torch.full((4,), 0.1, requires_grad=True)
        assert torch.equal(attacks.fgsm(model, x, y, eps * 1.0), want)
        attacks.pgd(model, x, y, 3.0, norm="l2", steps=2)  # an L2 budget above 1 is common
    for attack in (lambda e: attacks.pgd(model, x, y, e, steps=2), lambda e: attacks.bim(model, x, y, e, steps=2)):
        with pytest.warns(UserWarning, match="8/255") as record:
            attack(8.0)
        assert [w.filename for w in record] == [__file__]  # the warning names the caller's line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; runs where a GPU exists")
@pytest.mark.parametrize("name", list(ATTACKS))
def test_runs_on_cuda(name: str, digits_model) -> None:
    model, x, y = digits_model
    model = copy.deepcopy(model).cuda()
    x_adv = ATTACKS[name](model, x[:16].cuda(), y[:16].cuda())
    assert x_adv.is_cuda and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
