"""benchmarks/minimal_norm.py's scoring: what its tables in docs/benchmarks.md are computed by.

AttackBench's optimality (Cina et al. 2025), the ensemble's row built from its members' rows, the fresh-pass
distance check and the fragile check, each on inputs whose answer is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advlab import attacks
from advlab.attacks.minimal import minimal_result
from benchmarks.minimal_norm import (
    ENSEMBLE_ROWS,
    ensemble,
    fragile,
    in_batches,
    json_number,
    measured,
    norm_record,
    score,
    shard_slice,
    write_json,
)
from benchmarks.minimal_norm_merge import check_alike, merge
from benchmarks.minimal_norm_merge import table as merge_table

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
        column = columns[int(name[1:])] if name != "best" else [min(c) for c in zip(*columns, strict=True)]
        assert math.isclose(row.success, sum(math.isfinite(v) for v in column) / len(column))
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
    best, chosen, flags = ensemble(dists, flips, ["e0", "e1"])
    assert best.tolist() == [1.0, 2.0, 5.0, 2.0]
    assert chosen.tolist() == [0, 1, 1, 0]  # the tie goes to e0, as in attacks.minimal
    assert flags is not None and flags.tolist() == [True, False, True, False]
    assert ensemble(dists, {}, ["e0", "e1"])[2] is None


@pytest.mark.parametrize("norm", ["l0", "l2", "linf"])
def test_combined_row_is_what_attacks_minimal_returns(digits_model, norm: str) -> None:
    """The script's default ensemble row (its members' rows combined, checked batch by batch) against
    attacks.minimal itself, run batch by batch: the same distance and the same member for every sample."""
    model, x, y = digits_model
    x, y = x[:12], y[:12]
    members = {"fmn": lambda s, x, y: attacks.fmn(model, x, y, norm=norm, steps=s),
               "fmn_large_step": lambda s, x, y: attacks.fmn(model, x, y, norm=norm, steps=s, alpha_init=1000.0,
                                                             gamma_init=0.7),
               "sigma_zero": lambda s, x, y: attacks.sigma_zero(model, x, y, steps=s),
               "ddn": lambda s, x, y: attacks.ddn(model, x, y, steps=s),
               "fab_t": lambda s, x, y: attacks.fab_t(model, x, y, norm=norm, steps=s)}  # fmt: skip
    names = attacks.MINIMAL_MEMBERS[norm]
    dists = {ENSEMBLE_ROWS[m]: measured(model, x, y, in_batches(m, members[m], 8, x, y, 5), norm, 5) for m in names}
    best, chosen, _ = ensemble(dists, {}, [ENSEMBLE_ROWS[m] for m in names])
    runs = [minimal_result(model, x[i : i + 5], y[i : i + 5], norm=norm, steps=8) for i in range(0, 12, 5)]
    expected = torch.cat([r.extras["distance"] for r in runs])
    found_by = torch.cat([r.extras["found_by"] for r in runs])
    assert torch.equal(best.float(), expected)
    broken = found_by > 0
    assert broken.any() and torch.equal(chosen[broken] + 1, found_by[broken])


def test_in_batches_gives_each_batch_its_own_images(digits_model) -> None:
    """FMN over batches of 5 returns the points it returns on all 12 at once (each sample on its own), and an
    entry that returns points for other images than its batch's is named."""
    model, x, y = digits_model
    x, y = x[:12], y[:12]

    def run(s: int, xb: Tensor, yb: Tensor) -> Tensor:
        return attacks.fmn(model, xb, yb, norm="l2", steps=s)

    whole = measured(model, x, y, run(10, x, y), "l2")
    batched = measured(model, x, y, in_batches("fmn", run, 10, x, y, 5), "l2", 5)
    assert torch.allclose(batched, whole, rtol=1e-4)
    with pytest.raises(RuntimeError, match="wrong one returned"):
        in_batches("wrong one", lambda s, xb, yb: run(s, x, y), 10, x, y, 5)


def test_saved_record_round_trips(tmp_path: Path) -> None:
    """--save's JSON: failures and an infinite median as null, derived rows without seconds, valid JSON."""
    dists = table([[1.0, INF, INF], [2.0, 3.0, INF]])
    flips = {"e0": torch.tensor([True, False, False])}
    rows = score(dists, flips)
    record = norm_record(rows, dists, flips, {"e0": [1.5, 1.25]}, {"e1": ["e0"]})
    write_json(tmp_path / "out.json", {"norms": {"l2": record}})
    back = json.loads((tmp_path / "out.json").read_text())["norms"]["l2"]
    assert back["e0"]["distance"] == [1.0, None, None] and back["e0"]["median"] is None
    assert back["e0"]["fragile_samples"] == [0] and back["e0"]["fragile"] == 1
    assert back["e1"]["seconds"] is None and back["e1"]["members"] == ["e0"] and back["e1"]["fragile"] is None
    assert back["e0"]["seconds"] == [1.5, 1.25] and back["e1"]["median"] == 3.0
    assert [json_number(v) for v in (INF, -INF, math.nan, 2, 0.5)] == [None, None, None, 2, 0.5]
    assert not list(tmp_path.glob("*.tmp"))


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
    x = torch.tensor([[0.1, 0.3, 0.7], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    y = torch.zeros(3, dtype=torch.long)
    x_adv = torch.tensor([[0.7, 0.05, 0.93], [0.5, 0.4, 0.0], [math.nan, 0.0, 0.9]])
    # the first crosses (w.x = -0.18), the second does not, the third is NaN (a diverged attack: a failure)
    delta = x_adv[0].double() - x[0].double()  # float64 of the float32 points, not of their float32 difference
    for norm, p in (("l2", 2), ("l1", 1), ("linf", math.inf)):
        d = measured(model, x, y, x_adv, norm)
        assert d.dtype == torch.float64 and d[1:].tolist() == [INF, INF]
        assert float(d[0]) == float(delta.norm(p=p))
    assert measured(model, x, y, x_adv, "l0")[0] == 3
    assert measured(model, x, y, x_adv, "l2", batch=2).tolist() == measured(model, x, y, x_adv, "l2").tolist()


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


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200), st.integers(1, 12))
def test_shards_cover_the_samples_in_order_in_near_equal_parts(n: int, parts: int) -> None:
    slices = [shard_slice(n, i, parts) for i in range(1, parts + 1)]
    assert [i for s in slices for i in range(n)[s]] == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="shard"):
        shard_slice(n, parts + 1, parts)


def saved(
    shard: list[int] | None, norms: dict[str, dict[str, list[float]]], key: str = "abc", steps: int = 100
) -> dict:
    """A --save record of the given per-sample distances (inf as null), the sample 0 of each flagged fragile,
    of shard ``shard`` of 4 kept images (or all of them)."""
    out: dict = {"workload": "w", "clock": "cpu s", "images_sha256": key + str(shard), "shard": shard}
    out.update(all_images_sha256=key, all_images=4, settings={"steps": steps, "batch": 16, "shard": shard})
    out["norms"] = {
        norm: {
            name: {"distance": [json_number(v) for v in d], "fragile_samples": [0], "seconds": [1.0, 3.0, 2.0]}
            for name, d in entries.items()
        }
        for norm, entries in norms.items()
    }
    return out


def test_merge_joins_shards_and_entry_runs_into_one_scored_table() -> None:
    """A sharded entry is joined in shard order whatever the files' order, an entry of all the images is taken
    as it is, the ensemble's row is rebuilt from its joined members, and the times are the parts' medians."""
    fmn, ddn, fab_t = ENSEMBLE_ROWS["fmn"], ENSEMBLE_ROWS["ddn"], ENSEMBLE_ROWS["fab_t"]
    records = {
        "b.json": saved([2, 2], {"l2": {fmn: [3.0, INF], ddn: [2.0, 1.0]}}),
        "a.json": saved([1, 2], {"l2": {fmn: [1.0, 2.0], ddn: [INF, 4.0]}}),
        "all.json": saved(None, {"l2": {fab_t: [0.5, 3.0, 2.5, 2.0]}}),
    }
    records["all.json"]["all_images_sha256"] = records["all.json"]["images_sha256"] = "abc"
    distances, flips, seconds, derived = merge_table(merge(records)["l2"], "l2")
    assert distances[fmn].tolist() == [1.0, 2.0, 3.0, INF]
    assert distances[ddn].tolist() == [INF, 4.0, 2.0, 1.0]
    assert distances["advlab minimal"].tolist() == [0.5, 2.0, 2.0, 1.0]
    assert derived["advlab minimal"] == [ENSEMBLE_ROWS[m] for m in attacks.MINIMAL_MEMBERS["l2"]]
    assert flips[fmn].tolist() == [True, False, True, False]  # each shard's sample 0
    assert seconds[fmn] == [4.0] and seconds["advlab minimal"] == [10.0]  # 4 + 4 + 2
    rows = score(distances, flips)
    assert rows["advlab minimal"].optimality == 1.0 and rows[fmn].success == 0.75


def test_merge_keeps_a_run_of_the_ensemble_itself() -> None:
    """A file of ``--run-ensemble`` holds a measured ``advlab minimal`` row: joined with its members' rows, it
    is kept as measured, not replaced by their minimum."""
    dists = {ENSEMBLE_ROWS[m]: [1.0, 2.0, 3.0, 4.0] for m in attacks.MINIMAL_MEMBERS["l2"]}
    records = {
        "members.json": saved(None, {"l2": dists}),
        "run.json": saved(None, {"l2": {"advlab minimal": [9.0] * 4}}),
    }
    for r in records.values():
        r["images_sha256"] = "abc"
    distances, _, seconds, derived = merge_table(merge(records)["l2"], "l2")
    assert distances["advlab minimal"].tolist() == [9.0] * 4 and not derived and seconds["advlab minimal"] == [2.0]


def test_merge_names_what_does_not_fit() -> None:
    fmn = ENSEMBLE_ROWS["fmn"]
    half = saved([1, 2], {"l2": {fmn: [1.0, 2.0]}})
    with pytest.raises(ValueError, match=r"shards \[2\] of 2 missing"):
        merge({"a.json": half})
    with pytest.raises(ValueError, match="repeats its part 1 of 2"):
        merge({"a.json": half, "b.json": saved([1, 2], {"l2": {fmn: [2.0, 3.0]}})})
    with pytest.raises(ValueError, match="hold 3 images"):
        merge({"a.json": half, "b.json": saved([2, 2], {"l2": {fmn: [2.0]}})})
    with pytest.raises(ValueError, match=r"2 different image sets: a\.json; b\.json"):
        check_alike({"a.json": half, "b.json": saved([2, 2], {"l2": {fmn: [2.0]}}, key="other")})
    with pytest.raises(ValueError, match="--steps differs"):
        check_alike({"a.json": half, "b.json": saved([2, 2], {"l2": {fmn: [2.0]}}, steps=1000)})
    other_batch = saved([2, 2], {"l2": {fmn: [2.0]}})
    other_batch["settings"]["batch"] = 8
    assert check_alike({"a.json": half, "b.json": other_batch}) == [
        "--batch differs between the files: {'a.json': 16, 'b.json': 8}"
    ]
