"""benchmarks/minimal_norm.py's scoring: what its tables in docs/benchmarks.md are computed by.

AttackBench's optimality (Cina et al. 2025), the ensemble's row built from its members' rows, the fresh-pass
distance check and the fragile check, each on inputs whose answer is known."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from benchmarks.minimal_norm import ensemble, fragile, measured, score

INF = math.inf


def table(columns: list[list[float]]) -> dict[str, Tensor]:
    return {f"e{i}": torch.tensor(c, dtype=torch.float64) for i, c in enumerate(columns)}


distance = st.one_of(st.floats(1e-3, 1e3), st.just(INF))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(distance, min_size=n, max_size=n), min_size=1,
                                                    max_size=5)), st.floats(1e-2, 1e2))  # fmt: skip
def test_optimality_is_a_relative_score(columns: list[list[float]], scale: float) -> None:
    """Each entry scores in [0, 1]; the per-sample best everywhere scores 1 exactly where every sample was broken
    by someone; a failure scores 0; scaling every distance by one factor changes nothing."""
    dists = table(columns)
    dists["best"] = torch.stack(list(dists.values())).amin(0)
    rows = score(dists, {})
    for name, row in rows.items():
        assert 0.0 <= row.optimality <= 1.0 + 1e-12
        assert row.success == float(torch.isfinite(dists[name]).double().mean())
        assert row.fragile is None
    broken = float(torch.isfinite(dists["best"]).double().mean())
    assert math.isclose(rows["best"].optimality, broken, rel_tol=1e-12)
    scaled = score({k: v * scale for k, v in dists.items()}, {})
    for name, row in rows.items():
        assert math.isclose(scaled[name].optimality, row.optimality, rel_tol=1e-9, abs_tol=1e-12)


def test_optimality_values() -> None:
    """Two samples: e0 finds 1 and 4, e1 finds 2 and fails; e2 starts misclassified on the first (0)."""
    rows = score(table([[1.0, 4.0], [2.0, INF], [0.0, 8.0]]), {})
    assert math.isclose(rows["e0"].optimality, (0 / 1 + 1) / 2)  # best is 0 on sample 0 (e2), 4 on sample 1
    assert math.isclose(rows["e1"].optimality, 0.0)
    assert math.isclose(rows["e2"].optimality, (1 + 4 / 8) / 2)
    assert rows["e1"].success == 0.5 and rows["e1"].median == 2.0  # torch's lower median of [2, inf]


def test_ensemble_takes_the_first_smallest_member_and_its_flag() -> None:
    dists = table([[1.0, 3.0, INF, 2.0], [1.0, 2.0, 5.0, INF]])
    flips = {"e0": torch.tensor([True, True, False, False]), "e1": torch.tensor([False, False, True, True])}
    best, flags = ensemble(dists, flips, ["e0", "e1"])
    assert best.tolist() == [1.0, 2.0, 5.0, 2.0]
    assert flags is not None and flags.tolist() == [True, False, True, False]  # the tie goes to e0, as in minimal
    assert ensemble(dists, {}, ["e0", "e1"])[1] is None


class Linear2(nn.Module):
    """Logits (w.x, 0): class 1 exactly where w.x < 0."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.w
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_measured_checks_the_label_and_measures_in_float64() -> None:
    model = Linear2(torch.tensor([1.0, 1.0, -1.0]))
    x = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    y = torch.zeros(2, dtype=torch.long)
    x_adv = torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.4, 0.0]])  # the first crosses (w.x = -0.5), the second not
    d2 = measured(model, x, y, x_adv, "l2")
    assert d2.dtype == torch.float64 and d2[1] == INF
    assert d2[0] == torch.tensor([0.5, 0.5, 0.5], dtype=torch.float32).double().norm()
    assert measured(model, x, y, x_adv, "l0")[0] == 3
    assert math.isclose(float(measured(model, x, y, x_adv, "l1")[0]), 1.5)
    assert math.isclose(float(measured(model, x, y, x_adv, "linf")[0]), 0.5)


class Cancelling(nn.Module):
    """Logit 0 is (1e8 x0 + x1) - 1e8 x0 - 0.5: -0.5 in float32 (1e8 + 1 rounds to 1e8), +0.5 in float64."""

    def forward(self, x: Tensor) -> Tensor:
        big = x[:, 0] * 1e8
        z = (big + x[:, 1]) - big - 0.5
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_fragile_flags_a_label_that_float_rounding_decides() -> None:
    model = Cancelling()
    x_adv = torch.tensor([[1.0, 1.0], [1.0, 0.25]])  # the first is class 1 in float32 only, the second always
    y = torch.zeros(2, dtype=torch.long)
    d = measured(model, torch.zeros_like(x_adv), y, x_adv, "l2")
    assert torch.isfinite(d).all()  # both pass the table's check (a float32 forward pass of the batch)
    assert fragile(model, Cancelling().double(), y, x_adv, d).tolist() == [True, False]
    assert fragile(model, Cancelling().double(), y, x_adv, torch.tensor([INF, 1.0])).tolist() == [False, False]
