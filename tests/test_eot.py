"""EOT (Athalye et al. 2018) in the gradient attacks: the estimate, the optimum it reaches, the expected-prediction
success test, eot_samples=1 as the plain attack, and bad values.

The randomized model is linear with Gaussian noise on its weights, so the expected gradient is known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab import attacks
from advlab.attacks.eot import Expected, decisive, expected_logits
from advlab.attacks.objectives import margin

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores

GRADIENT_ATTACKS = {
    "fgsm": lambda m, x, y, **kw: attacks.fgsm_result(m, x, y, 0.05, **kw),
    "bim": lambda m, x, y, **kw: attacks.bim_result(m, x, y, 0.05, steps=3, **kw),
    "pgd": lambda m, x, y, **kw: attacks.pgd_result(m, x, y, 0.05, steps=3, seed=0, restarts=2, **kw),
    "mifgsm": lambda m, x, y, **kw: attacks.mifgsm_result(m, x, y, 0.05, steps=3, **kw),
    "apgd": lambda m, x, y, **kw: attacks.apgd_result(m, x, y, 0.05, steps=5, seed=0, **kw),
    "apgd_t": lambda m, x, y, **kw: attacks.apgd_t_result(m, x, y, 0.05, steps=5, seed=0, n_target_classes=2, **kw),
}


class NoisyLinear(nn.Module):
    """Two classes, logits (0, z) with z = (w + s n) . (x - x0) + w . x0 + b and n ~ N(0, I) drawn per sample and
    per call from torch's global generator.

    The margin of class 1 over class 0 has gradient w + s n, whose mean is w, and expected value w . x + b; the
    noise on the value stays small near x0 (the clean batch), so scores are not dominated by it. A row's x0 is
    the clean point nearest to it, so that the model is the same for a subset of the batch (APGD confirms its
    claims on the claimed rows only); the attacks' perturbations are smaller than the clean points' spacing.
    """

    def __init__(self, w: torch.Tensor, b: float, s: float, x0: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b, self.s, self.x0 = w, b, s, x0.flatten(1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.flatten(1)
        n = torch.randn(flat.shape, dtype=x.dtype)
        x0 = self.x0[torch.cdist(flat, self.x0).argmin(dim=1)]
        z = flat @ self.w + self.s * (n * (flat - x0)).sum(1) + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def _setup(d_side: int, n: int, b: float, s: float, seed: int = 0) -> tuple[NoisyLinear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, 1, d_side, d_side, generator=g, dtype=torch.float64)
    w = torch.randint(0, 2, (d_side * d_side,), generator=g).to(torch.float64) * 2 - 1
    return NoisyLinear(w, b, s, x), x, torch.zeros(n, dtype=torch.long)


def test_eot_gradient_converges_like_one_over_sqrt_k() -> None:
    """||g_K - w|| = s ||mean of K normals|| ~ s sqrt(d / K): at K = 4 and 64 within 15% of it (the chi
    distribution with d = 768 has a relative spread of ~2.5%), so the error falls by sqrt(16) = 4."""
    model, x, y = _setup(16, 3, b=0.0, s=2.0)
    d = x[0].numel()
    torch.manual_seed(0)
    errors = {}
    for k in (4, 64):
        _, _, grad = Expected(model, k, y_max=0).value_and_grad(x, lambda z: margin(z, y))
        err = (grad.flatten(1) - model.w).norm(dim=1)
        expected = model.s * math.sqrt(d / k)
        assert torch.allclose(err, torch.full_like(err, expected), rtol=0.15), (k, err, expected)
        errors[k] = err
    ratio = errors[4] / errors[64]
    assert bool(((ratio > 3.2) & (ratio < 5.0)).all()), ratio


def test_expected_logits_is_the_log_of_the_mean_softmax() -> None:
    draws = [torch.randn(5, 4, dtype=torch.float64) for _ in range(3)]
    mean = torch.stack([d.softmax(1) for d in draws]).mean(0)
    assert torch.allclose(expected_logits(draws).exp(), mean, atol=1e-12)
    assert expected_logits(draws[:1]) is draws[0]  # K = 1: the logits themselves


def test_eot_pgd_reaches_the_expected_margin_optimum() -> None:
    """The expected margin w . x + b is maximised over the Linf ball at x + eps sign(w) (x is far from the box
    edges); a single draw's gradient has the right sign on only ~63% of the pixels (s = 3, |w_i| = 1)."""
    model, x, y = _setup(8, 4, b=-1000.0, s=3.0)  # b: never successful, so the best point is the highest score
    eps = 0.1
    optimum = eps * model.w.abs().sum()
    gains = {}
    for k in (1, 64):
        torch.manual_seed(1)
        res = attacks.pgd_result(
            model, x, y, eps, alpha=eps / 4, steps=10, random_start=False, loss="margin", eot_samples=k
        )
        gains[k] = (res.x_adv - x).flatten(1) @ model.w
    assert bool((gains[64] >= 0.97 * optimum).all()), gains[64] / optimum
    assert bool((gains[1] <= 0.85 * optimum).all()), gains[1] / optimum
    corner = (x + eps * model.w.sign().view_as(x[0])).clamp(0, 1)
    assert (res.x_adv - corner).abs().amax() <= eps / 4 + 1e-12


class Coin(nn.Module):
    """z = c + 4 n for n ~ N(0, 1), barely dependent on x. With c = -1 (default) one draw in ~40% says class 1,
    the mean softmax (E[sigmoid(-1 + 4 n)] ~ 0.41) never does, so no break of the expected prediction exists;
    with c = 1.5 the mean softmax says class 1 everywhere: a real break, which the draws resolve slowly."""

    def __init__(self, c: float = -1.0) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c + 4 * torch.randn(x.shape[0], dtype=x.dtype) + 1e-3 * x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_success_is_judged_on_the_expected_prediction() -> None:
    """z = -1 + 4 n (the input barely matters): one draw in ~40% says class 1, the mean softmax never does."""

    x = torch.full((16, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(16, dtype=torch.long)
    torch.manual_seed(0)
    plain = attacks.pgd_result(Coin(), x, y, 1e-3, steps=3, seed=0)
    eot = attacks.pgd_result(Coin(), x, y, 1e-3, steps=3, seed=0, eot_samples=256)
    assert int(plain.success.sum()) >= 8  # one lucky draw among 4 scored iterates breaks most samples
    assert not bool(eot.success.any())


@pytest.mark.parametrize(("k", "most"), [(4, 10), (8, 4)])
def test_apgd_does_not_stop_at_a_break_its_draws_made_by_chance(k: int, most: int) -> None:
    """The optimizer's curse (eot.py): z = -1 + 4 n barely depends on x, so the mean softmax gives class 1
    E[sigmoid(-1 + 4 n)] ~ 0.41 everywhere in the ball and no break exists; 8 draws put the mean past 0.5 about
    one evaluation in four, so APGD, testing each of its 101 iterates, claimed every sample broken with the plain
    test on the mean of its draws. The margin of K draws alone still let most samples stop over 100 steps (31 and
    19 of 32 at K = 4 and 8); confirming each claim on fresh draws leaves few (over 20 seeds at most 7 and 1)."""

    x = torch.full((32, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(32, dtype=torch.long)
    torch.manual_seed(0)
    res = attacks.apgd_result(Coin(), x, y, 1e-3, steps=100, seed=0, eot_samples=k)
    assert int(res.success.sum()) <= most, int(res.success.sum())
    torch.manual_seed(0)
    res_t = attacks.apgd_t_result(Coin(), x, y, 1e-3, steps=100, n_target_classes=1, loss="ce", seed=0, eot_samples=k)
    assert int(res_t.success.sum()) <= most, int(res_t.success.sum())


def test_apgd_confirms_the_claims_made_after_its_last_checkpoint() -> None:
    """APGD's checkpoints confirm the claims made before them; 395 steps end 3 iterates after the last checkpoint
    (392), and the claims of those iterates are confirmed at the end of the run. On the coin model (no break
    exists), K = 4, 1,024 samples, the reported breaks over 5 seeds were 188-199; left unconfirmed, those 3
    iterates' claims add about 75 (266-281). The bound lies about 3 binomial standard deviations from both."""
    x = torch.full((1024, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(1024, dtype=torch.long)
    torch.manual_seed(0)
    res = attacks.apgd_result(Coin(), x, y, 1e-3, steps=395, seed=0, eot_samples=4)
    assert int(res.success.sum()) <= 230, int(res.success.sum())


class Coin10(nn.Module):
    """Ten classes, z = 4 n + 2 e_0 (n ~ N(0, I)), barely dependent on x: class 0 has the highest mean softmax
    (0.19 against at most 0.09 for each other class) everywhere, so no break exists, but with nine rivals one of
    them often wins the mean of a few draws."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 4 * torch.randn(x.shape[0], 10, dtype=x.dtype) + 1e-3 * x.flatten(1).sum(1, keepdim=True)
        return z + torch.nn.functional.one_hot(torch.zeros_like(z[:, 0], dtype=torch.long), 10) * 2.0


def test_apgd_t_over_nine_targets_rarely_confirms_a_break_that_does_not_exist() -> None:
    """Nine targets x checkpoints are many chances. A confirmation whose rival class is chosen by the draws that
    test it is the largest of nine noisy means (32-41 of 64 samples falsely broken at K = 4 over 10 seeds; 64 of
    64 with the margin alone); the rival chosen on other draws leaves 7-14 of 64."""
    x = torch.full((64, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    torch.manual_seed(0)
    res = attacks.apgd_t_result(Coin10(), x, y, 1e-3, steps=100, seed=0, eot_samples=4)
    assert int(res.success.sum()) <= 24, int(res.success.sum())


def test_a_confirmed_break_is_kept_when_the_attack_goes_on() -> None:
    """With stop_on_success=False a sample stays in the batch after its break is confirmed; a later iterate whose
    draws happen to score higher must not replace the confirmed point (its claim would be a new, unconfirmed one,
    and a failed confirmation would then lose a break already made). On a real break that K = 8 draws resolve
    slowly, going on must keep about as many breaks as stopping (52 and 53 of 64; 12 when confirmed points could
    be replaced)."""
    x = torch.full((64, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    found = {}
    for stop in (True, False):
        torch.manual_seed(0)
        res = attacks.apgd_result(Coin(1.5), x, y, 1e-3, steps=100, seed=0, eot_samples=8, stop_on_success=stop)
        found[stop] = int(res.success.sum())
    assert found[True] >= 32 and found[False] >= 0.8 * found[True], found


def test_apgd_t_confirms_a_clean_misclassification_before_it_skips_the_sample() -> None:
    """APGD-T counts a sample misclassified from the start as done (target rank 0) and never attacks it. With K = 2
    draws the clean test alone claims that for 8-21 of 128 samples of the coin model (no break exists); confirmed
    on fresh draws, for 1-4 over 5 seeds."""
    x = torch.full((128, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(128, dtype=torch.long)
    torch.manual_seed(0)
    res = attacks.apgd_t_result(Coin(), x, y, 1e-3, steps=10, n_target_classes=1, loss="ce", seed=0, eot_samples=2)
    assert int((res.extras["target_rank"] == 0).sum()) <= 6


def test_eot_apgd_breaks_with_or_without_early_stops() -> None:
    """Clean expected margin -2, optimal +3.4: every sample breaks on average whether broken samples leave at the
    checkpoints or the attack goes on with them."""
    model, x, y = _setup(8, 3, b=0.0, s=3.0)
    model.b = float(-(x.flatten(1) @ model.w).max()) - 2.0
    for stop in (True, False):
        torch.manual_seed(0)
        res = attacks.apgd_result(model, x, y, 0.1, steps=20, loss="ce", seed=0, eot_samples=16, stop_on_success=stop)
        assert bool(res.success.all()), stop
        assert bool(((res.x_adv.flatten(1) @ model.w + model.b) > 0).all()), stop


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(3, 6),
    st.booleans(),
    st.floats(0.0, 3.0),
    st.integers(0, 2**31 - 1),
)
def test_a_decisive_break_is_a_break_of_the_mean_and_needs_no_margin_without_spread(k, c, targeted, z, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(k, 5, c, generator=g, dtype=torch.float64).mul(3).log_softmax(2)
    y = torch.randint(0, c, (5,), generator=g)
    pred = expected_logits(list(log_probs)).argmax(1)
    plain = pred == y if targeted else pred != y
    assert not bool((decisive(log_probs, y, targeted, z) & ~plain).any())  # decisive implies the plain test
    same = log_probs[:1].expand(k, -1, -1)  # K equal draws: no spread, so decisive is the plain test
    pred1 = log_probs[0].argmax(1)
    top2 = log_probs[0].exp().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-9
    plain1 = pred1 == y if targeted else pred1 != y
    assert torch.equal(decisive(same, y, targeted, z)[clear], plain1[clear])


def test_each_step_draws_k_forwards_and_seeding_torch_repeats_the_run() -> None:
    model, x, y = _setup(4, 2, b=0.0, s=1.0)
    runs = []
    for _ in range(2):
        model.calls = 0
        torch.manual_seed(5)
        runs.append(attacks.pgd_result(model, x, y, 0.05, steps=3, seed=0, eot_samples=5))
        assert model.calls == 5 * (3 + 1)  # K per step, K to score the last iterate
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].success, runs[1].success)


@pytest.mark.parametrize("name", ["apgd", "apgd_targeted", "apgd_t"])
def test_eot_apgd_breaks_what_the_expected_model_loses(name: str) -> None:
    """Clean expected margin -2, optimal +3.4 (eps 0.1, d = 64 with |w_i| = 1, minus 2 for b's offset). With two
    classes, reaching target 1 is leaving class 0: the targeted attack must report the same breaks (its success
    test and its confirmation read the labels as targets)."""
    model, x, y = _setup(8, 3, b=0.0, s=3.0)
    model.b = float(-(x.flatten(1) @ model.w).max()) - 2.0
    torch.manual_seed(0)
    if name == "apgd_targeted":
        res = attacks.apgd_result(model, x, 1 - y, 0.1, steps=20, loss="ce", targeted=True, seed=0, eot_samples=16)
    else:
        fn = attacks.apgd_result if name == "apgd" else attacks.apgd_t_result
        res = fn(model, x, y, 0.1, steps=20, loss="ce", seed=0, eot_samples=16)
    assert bool(res.success.all())
    assert bool(((res.x_adv.flatten(1) @ model.w + model.b) > 0).all())  # broken on average, not by a lucky draw


@pytest.mark.parametrize("name", sorted(GRADIENT_ATTACKS))
def test_k_draws_of_a_deterministic_model_are_one_draw(name: str) -> None:
    # The mean of K equal gradients is that gradient and the mean of K equal softmaxes is that softmax, so on a
    # model without randomness EOT must change nothing but float rounding: a sum instead of a mean, a score taken
    # on one draw only, or the loss of the wrong prediction would show here.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    one, three = GRADIENT_ATTACKS[name](model, x, y, eot_samples=1), GRADIENT_ATTACKS[name](model, x, y, eot_samples=3)
    torch.testing.assert_close(three.x_adv, one.x_adv, rtol=0, atol=1e-9)
    assert torch.equal(three.success, one.success)
    assert one.loss is not None and three.loss is not None
    torch.testing.assert_close(three.loss, one.loss, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GRADIENT_ATTACKS))
@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_eot_samples_is_one_clear_error(name: str, value: object, error: type[Exception]) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
    x, y = torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(error, match="eot_samples must be"):
        GRADIENT_ATTACKS[name](model, x, y, eot_samples=value)


def test_public_wrappers_take_eot_samples() -> None:
    model, x, y = _setup(4, 2, b=0.0, s=0.5)
    for fn, kw in [
        (attacks.fgsm, {}), (attacks.bim, {"steps": 2}), (attacks.pgd, {"steps": 2}),
        (attacks.mifgsm, {"steps": 2}), (attacks.apgd, {"steps": 2, "loss": "ce"}),
        (attacks.apgd_t, {"steps": 2, "loss": "ce"}),
    ]:
        model.calls = 0
        x_adv = fn(model, x, y, 0.05, eot_samples=3, **kw)
        assert x_adv.shape == x.shape and model.calls % 3 == 0 and model.calls >= 3
