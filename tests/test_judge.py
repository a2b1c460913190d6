"""engine.Judge on a subset of a batch's rows: the judgement of a subset is the judgement of the whole batch
restricted to it, bit for bit, for every kind of model. The suite decides "broken at this stage" on a subset and
the records on the whole batch; a subset forwarded alone would be rounded differently (another batch size) and
the two verdicts could differ on points next to the boundary (review 5, F2)."""

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


def models(model: nn.Module) -> dict[str, nn.Module]:
    return {
        "deterministic": model,
        "gaussian_noise": defended(model, GaussianNoise(0.3)),
        "random_resize_pad": defended(model, RandomResizePad(0.75)),
        "global_noise": defended(model, GlobalNoise()),
    }


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
    assert torch.equal(judge.logits(moved[sel], sel), whole)


def test_a_point_on_the_boundary_gets_one_verdict_in_a_subset_and_in_the_whole_batch(digits_model):
    """Points within float rounding of the decision boundary (bisected along a segment that crosses it): each
    is judged alone (a subset of one row) and in the whole batch, and the two predictions agree."""
    model, x, _ = digits_model
    clean = x[:32]
    judge = Judge(model, clean, 0, list(range(32)), 1)
    with torch.no_grad():
        top = model(clean).argmax(1)
        other = model(x[32:64]).argmax(1)
    pairs = [(i, 32 + i) for i in range(32) if top[i] != other[i]][:8]
    assert pairs, "the digits model gives the segment ends no two different classes"
    for i, j in pairs:
        lo, hi = torch.tensor(0.0), torch.tensor(1.0)
        for _ in range(40):  # bisect to the boundary along clean[i] -> x[j]
            mid = (lo + hi) / 2
            with torch.no_grad():
                same = model((clean[i] + mid * (x[j] - clean[i]))[None]).argmax(1).item() == top[i].item()
            lo, hi = (mid, hi) if same else (lo, mid)
        for t in (lo, hi):
            point = (clean[i] + t * (x[j] - clean[i]))[None]
            full = clean.clone()
            full[i] = point[0]
            alone = judge.logits(point, torch.tensor([i])).argmax(1)
            assert torch.equal(alone, judge.logits(full)[i : i + 1].argmax(1))
