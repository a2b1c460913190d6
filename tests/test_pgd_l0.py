"""PGD_0 (Croce & Hein 2019), ``pgd(norm="l0")``: the exact L0 optimum of linear models, points on a trained
network, the evaluation layer's L0 specs."""

from __future__ import annotations

import pytest
import torch

from advlab import attacks
from advlab.attacks.noise import Noise
from advlab.attacks.norms import get_norm
from advlab.evaluate.specs import SpecError, make_spec
from tests.boxed_linear import boxed_problems
from tests.test_fmn import linear_problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores


def changed(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv != x).flatten(1).sum(dim=1)


@pytest.mark.parametrize("random_start", [False, True])
def test_a_step_past_the_box_finds_the_fewest_coordinates_that_break_a_boxed_linear_model(random_start: bool):
    """Where every coordinate has its own room in the box (0.01 to 0.31), the fewest coordinates that reach the
    boundary are those of largest |w_i| room_i (a greedy count, tests/boxed_linear.py). A step s_i past the
    box's edge gives coordinate i the gain room_i (2 s_i - room_i) = 2 alpha |w_i| room_i / ||w||_1 - room_i^2,
    which orders the coordinates by |w_i| room_i once alpha is large against room_i^2 (0.1 at most here):
    PGD_0 breaks every problem with that many coordinates, and none with one fewer (where no point of the
    ball is adversarial: the ball and the box hold)."""
    problems = boxed_problems(seed=0, n=30)
    for model, x, y, exact in problems:
        k = exact["l0"]
        at = attacks.pgd(model, x, y, k, 100.0, 5, norm="l0", random_start=random_start, seed=0, return_info=True)
        assert bool(at.success.all()), exact
        assert int(changed(at.x_adv, x).max()) <= k and float(at.x_adv.min()) >= 0 and float(at.x_adv.max()) <= 1
        below = attacks.pgd(model, x, y, k - 1, 100.0, 5, norm="l0", random_start=random_start, seed=0)
        assert int(changed(below, x).max()) <= k - 1
        assert bool((model(below).argmax(1) == y).all())


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("restarts", [1, 2])
def test_the_default_step_breaks_a_linear_model_at_its_exact_l0_distance(targeted: bool, restarts: int):
    """With the authors' step on images away from the box's edges, PGD_0 breaks every sample of a two-class
    linear model with exactly its minimal number of coordinates (untargeted, and targeted at the other
    class): from the clean image, and within two restarts of ``l0_start="box_with_clean"``, the authors'
    random start and the clean image (their start alone can leave a sample stuck: a coordinate it drew far
    from x gains more by staying than the best one does by its first step, and on a linear model the
    gradient never changes)."""
    for seed in (0, 1):
        model, x, y, exact = linear_problem(seed)
        labels = 1 - y if targeted else y
        res = attacks.pgd(model, x, labels, exact["l0"], steps=5, norm="l0", targeted=targeted, seed=0,
                          random_start=restarts > 1, restarts=restarts, l0_start="box_with_clean",
                          return_info=True)  # fmt: skip
        assert bool(res.success.all()), (seed, exact["l0"])
        assert bool((changed(res.x_adv, x) <= exact["l0"]).all())
        assert bool((model(res.x_adv).argmax(1) != y).all())


def test_points_on_a_trained_network_change_at_most_k_coordinates_and_success_is_the_models(digits_model):
    model, x, y = digits_model
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right][:40], y[right][:40]
    k = torch.arange(40).remainder(8).double()  # per-sample budgets 0..7, as a tensor
    res = attacks.pgd(model, x, y, k.to(x.dtype), steps=10, norm="l0", restarts=2, seed=0, return_info=True)
    assert bool((changed(res.x_adv, x) <= k).all())
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    assert not bool(res.success[k == 0].any())  # k = 0: the image itself, which the model gets right
    assert 0 < int(res.success.sum()) < 40
    # More coordinates break more samples (the budgets are nested: every point of k is one of k + 1).
    more = attacks.pgd(model, x, y, (k + 4).to(x.dtype), steps=10, norm="l0", restarts=2, seed=0, return_info=True)
    assert int(more.success.sum()) > int(res.success.sum())


def test_l0_specs_take_whole_counts_only():
    assert make_spec("pgd", {"eps": 12, "norm": "l0"}).params["eps"] == 12
    assert make_spec("pgd", {"eps": "8", "norm": "l0"}).params["eps"] == 8
    # Large counts keep every digit in their labels: two budgets never share an id.
    ids = {make_spec("pgd", {"eps": float(k), "norm": "l0"}).id for k in (12345, 12346)}
    assert ids == {"pgd(eps=12345, norm=l0)", "pgd(eps=12346, norm=l0)"}
    with pytest.raises(
        SpecError, match=r"pgd: an L0 eps counts changed coordinates and must be a whole number, got 2\.5"
    ):
        make_spec("pgd", {"eps": 2.5, "norm": "l0"})
    with pytest.raises(SpecError, match="pgd: an L0 eps counts changed coordinates"):
        make_spec("pgd", {"eps": "1/2", "norm": "l0"})


def test_l0_starts_the_papers_from_the_box_and_box_with_clean_also_from_the_clean_image(digits_model):
    """By default (``l0_start="box"``) every restart starts as Croce & Hein's do; ``"box_with_clean"`` starts
    the second restart (index 1) from the clean image instead, so its first is the paper's attack and its
    second PGD_0 without a random start; ``"ball"`` starts elsewhere."""
    model, x, y = digits_model
    x, y = x[:30], y[:30]
    runs = {
        start: attacks.pgd(model, x, y, 6, steps=4, norm="l0", l0_start=start, seed=3, return_info=True)
        for start in ("box_with_clean", "box", "ball")
    }
    default = attacks.pgd(model, x, y, 6, steps=4, norm="l0", seed=3)
    assert torch.equal(default, runs["box"].x_adv) and torch.equal(runs["box_with_clean"].x_adv, default)
    assert not torch.equal(runs["ball"].x_adv, runs["box"].x_adv)
    standing = ~runs["box"].success
    assert bool(standing.any())
    # Restart 1 attacks the samples restart 0 left standing, from the clean image: PGD_0 with no random start.
    two = attacks.pgd(model, x, y, 6, steps=4, norm="l0", restarts=2, seed=3, l0_start="box_with_clean",
                      return_info=True)  # fmt: skip
    clean = attacks.pgd(model, x[standing], y[standing], 6, steps=4, norm="l0", random_start=False, return_info=True)
    assert torch.equal(two.success[standing], clean.success) and bool(clean.success.any())
    assert torch.equal(two.x_adv[standing][clean.success], clean.x_adv[clean.success])
    with pytest.raises(ValueError, match="unknown l0_start 'pixels'; expected one of 'box', 'box_with_clean', 'ball'"):
        attacks.pgd(model, x, y, 6, norm="l0", l0_start="pixels")


class Constant(torch.nn.Module):
    """Logits (0, 1) whatever the input, with a zero input gradient: every point is adversarial for label 0 and
    PGD never moves from its start, so the returned point is the start itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1, keepdim=True) * 0 + torch.tensor([0.0, 1.0], dtype=x.dtype)


@pytest.mark.parametrize("l0_start, draw", [("box", "box_start"), ("ball", "random_start")])
def test_each_l0_start_option_starts_from_its_own_draw(l0_start: str, draw: str):
    x = torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(6, dtype=torch.long)
    eps = torch.tensor([0.0, 1.0, 2.0, 5.0, 9.0, 25.0])
    out = attacks.pgd(Constant(), x, y, eps, steps=2, norm="l0", l0_start=l0_start, seed=7)
    torch.testing.assert_close(out, getattr(get_norm("l0"), draw)(x, eps, Noise(7, 6)), atol=0, rtol=0)
    assert bool((changed(out, x) <= eps).all()) and bool((changed(out, x)[1:] > 0).all())
