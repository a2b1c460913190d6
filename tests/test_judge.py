"""engine.Judge on a subset of a batch's rows (review finding F5): it forwards the rows it judges, not the whole
batch, unless the model draws from torch's global generator, and its judgement of a subset is the judgement of
the whole batch restricted to that subset."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.defenses import GaussianNoise, RandomResizePad, defended
from advlab.evaluate.engine import Judge

pytestmark = pytest.mark.usefixtures("one_thread")


class GlobalNoise(nn.Module):
    """A user's random layer: noise from torch's global generator, drawn for the batch's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.randn_like(x)


class Rows(nn.Module):
    """Counts the rows the wrapped model is given (the cost of a judgement)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.model(x)


def models(model: nn.Module) -> dict[str, nn.Module]:
    return {
        "deterministic": model,
        "gaussian_noise": defended(model, GaussianNoise(0.3)),
        "random_resize_pad": defended(model, RandomResizePad(0.75)),
        "global_noise": defended(model, GlobalNoise()),
    }


@pytest.mark.parametrize("kind", ["deterministic", "gaussian_noise", "random_resize_pad", "global_noise"])
def test_a_subset_costs_its_rows_unless_the_model_draws_from_the_global_generator(digits_model, kind):
    model, x, _ = digits_model
    counted = Rows(models(model)[kind])
    judge = Judge(counted, x[:16], 0, list(range(16)), 3)
    judge.logits(x[:16])  # the clean judgement: the whole batch, K draws
    assert counted.seen == 16 * 3
    rows = torch.tensor([4, 9])
    judge.logits(x[16:18], rows)
    # Before: the whole batch (16 rows) per draw for every model; now only a model whose draws need the whole
    # batch's shape (torch.randn_like) gets it.
    assert counted.seen - 16 * 3 == 3 * (16 if kind == "global_noise" else 2)
    assert judge.global_draws is (kind == "global_noise")


def test_before_the_clean_judgement_a_subset_is_judged_in_the_whole_batch(digits_model):
    model, x, _ = digits_model
    counted = Rows(model)
    judge = Judge(counted, x[:8], 0, list(range(8)), 1)
    judge.logits(x[8:10], torch.tensor([1, 2]))
    assert counted.seen == 8 and judge.global_draws is False
    judge.logits(x[8:10], torch.tensor([1, 2]))
    assert counted.seen == 10


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["deterministic", "gaussian_noise", "random_resize_pad", "global_noise"]),
    rows=st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**20),
)
def test_the_judgement_of_a_subset_is_the_whole_batchs_restricted_to_it(digits_model, kind, rows, k, seed):
    model, x, _ = digits_model
    net = models(model)[kind]
    clean, moved = x[:12], x[12:24]
    sel = torch.tensor(rows)
    judge = Judge(net, clean, seed, list(range(100, 112)), k)
    judge.logits(clean)
    full = clean.clone()
    full[sel] = moved[sel]
    whole = Judge(net, clean, seed, list(range(100, 112)), k).logits(full)[sel]
    subset = judge.logits(moved[sel], sel)
    if kind == "global_noise":  # judged in the whole batch, as before: bit for bit
        assert torch.equal(subset, whole)
    else:  # the same draws per row; a smaller batch may round the model's arithmetic differently
        torch.testing.assert_close(subset, whole, rtol=1e-5, atol=1e-5)
        assert torch.equal(subset.argmax(1), whole.argmax(1))
