"""The evaluation engine: specs, targets, records, resume (including after SIGKILL), sharding, summaries."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import advlab
from advlab.evaluate import (
    AttackSpec,
    SpecError,
    attack_batch,
    evaluate,
    make_spec,
    parse_number,
    plan_batches,
    random_targets,
    registry,
    run_config,
    summarize,
    validate_specs,
)
from advlab.evaluate.records import L0_TOL, RECORD_SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine OpenMP's spinning threads make
    them ~20x slower; one thread keeps this file fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Items:
    """A dataset of (image, label, index) items over tensors; ``None`` where an image is 'unreadable'."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, unreadable: set[int] | None = None) -> None:
        self.x, self.y, self.unreadable = x, y, unreadable or set()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if i in self.unreadable:
            return None
        return self.x[i], int(self.y[i]), i


def untimed(summary: dict) -> dict:
    """A summary without the fields that measure time (the only ones allowed to differ between runs)."""
    out = {k: v for k, v in summary.items() if k not in ("wall_s", "time_s")}
    out["attacks"] = [{k: v for k, v in a.items() if k != "time_s"} for a in summary["attacks"]]
    return out


def untimed_records(records: dict) -> dict:
    return {aid: sorted(({**r, "time_s": 0} for r in rs), key=lambda r: r["index"]) for aid, rs in records.items()}


@pytest.fixture(scope="module")
def data(digits_model):
    model, x, y = digits_model
    return model, Items(x[:60], y[:60])


def basic_specs() -> list[AttackSpec]:
    return [
        make_spec("fgsm", {"eps": "0.1"}, id="fgsm"),
        make_spec("pgd", {"eps": 0.1, "steps": 5}, id="pgd"),
        make_spec("bim", {"eps": "0.2", "steps": 3, "targeted": True}, id="tbim"),
    ]


# ------------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    ("text", "value"), [("8/255", 8 / 255), ("0.03", 0.03), (" 1e-2 ", 0.01), ("0", 0.0), (2, 2.0)]
)
def test_parse_number_accepts_numbers_and_fractions(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "needle"),
    [("8/0", "divides by zero"), ("-1", ">= 0"), ("abc", "not a number"), ("nan", "finite"), ("inf", "finite"),
     ("1/-255", ">= 0"), (True, "number")],
)  # fmt: skip
def test_parse_number_rejects_bad_eps_with_one_clear_line(text, needle):
    from advlab.errors import UsageError

    with pytest.raises(UsageError) as err:
        parse_number(text, "eps")
    assert needle in str(err.value) and "\n" not in str(err.value)


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_parse_fraction_equals_the_division(a, b):
    assert parse_number(f"{a}/{b}") == a / b


def test_unknown_attack_lists_what_exists():
    with pytest.raises(SpecError, match=r"unknown attack 'nope'; available attacks: .*fgsm.*pgd"):
        make_spec("nope", {"eps": 0.1})


def test_unknown_parameter_lists_the_signature():
    with pytest.raises(SpecError, match="unknown parameter stepz for attack 'pgd'; it takes: eps, alpha, steps"):
        make_spec("pgd", {"eps": 0.1, "stepz": 3})


@pytest.mark.parametrize(
    ("name", "params", "kwargs", "needle"),
    [
        ("fgsm", {}, {}, "needs eps"),
        ("pgd", {"eps": 0.1, "steps": 2.5}, {}, "steps must be an integer"),
        ("pgd", {"eps": 0.1, "steps": 0}, {}, "steps must be >= 1"),
        ("pgd", {"eps": 0.1, "random_start": "yes"}, {}, "true or false"),
        ("pgd", {"eps": 0.1, "norm": 2}, {}, "must be a string"),
        ("fgsm", {"eps": 0.1}, {"target": "random"}, "only meaningful with targeted"),
        ("fgsm", {"eps": 0.1, "targeted": True}, {"target": "most-likely"}, "target must be"),
        ("fgsm", {"eps": 0.1, "targeted": True}, {"target": -3}, "target must be"),
        ("pgd", {"eps": 0.1, "norm": "l3"}, {}, "pgd: unknown norm 'l3'; expected one of 'linf', 'l2'"),
        ("pgd", {"eps": 0.1, "loss": "dlr"}, {}, "pgd: unknown loss 'dlr'; expected one of 'ce', 'margin'"),
        ("apgd", {"eps": 0.1, "loss": "margin"}, {}, "apgd: unknown loss 'margin'; expected one of 'ce', 'dlr'"),
        ("apgd", {"eps": 0.1, "rho": 2.0}, {}, r"rho must be in \(0, 1\], got 2"),
        ("square", {"eps": 0.1, "p_init": 0.0}, {}, r"p_init must be in \(0, 1\]"),
        ("mifgsm", {"eps": 0.1, "decay": -1.0}, {}, r"decay must be in \[0, inf\)"),
        ("deepfool", {"candidates": 1}, {}, "candidates must be >= 2"),
        ("cw_l2", {"lr": float("nan")}, {}, "lr must be finite"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(name, params, kwargs, needle):
    with pytest.raises(SpecError, match=needle):
        make_spec(name, params, **kwargs)


@pytest.mark.parametrize("name", ["ddn", "cw_l2", "apgd_l1", "bim"])
def test_a_one_norm_attack_takes_its_own_norm_and_refuses_another(name):
    from advlab.evaluate.specs import ONE_NORM

    own = ONE_NORM[name]
    base = {} if name in ("ddn", "cw_l2") else {"eps": 0.5}
    assert make_spec(name, {**base, "norm": own}) == make_spec(name, base)
    other = "l1" if own != "l1" else "l2"
    with pytest.raises(SpecError, match=f"{name} attacks in {own} only, got norm='{other}'"):
        make_spec(name, {**base, "norm": other})


def test_every_refused_value_is_a_usage_error_and_accepted_values_run(data):
    """The values make_spec refuses are the ones the attacks refuse: a refused spec is a UsageError (one line,
    exit 2 on the command line), and the attacks run with every value the tables allow."""
    from advlab.errors import UsageError
    from advlab.evaluate.specs import ATTACK_STRING_CHOICES, STRING_CHOICES

    model, ds = data
    x, y = ds.x[:2], ds.y[:2]
    with pytest.raises(UsageError):
        make_spec("pgd", {"eps": 0.1, "norm": "l3"})
    for name in ("fgsm", "pgd", "apgd", "mifgsm", "square"):
        for key in ("norm", "loss", "l0_start"):
            for value in ATTACK_STRING_CHOICES.get((name, key), STRING_CHOICES.get(key, ())):
                # An L0 budget counts coordinates; l0_start is PGD's in L0.
                eps = 2.0 if value == "l0" or key == "l0_start" else 0.05
                params = {"eps": eps, key: value, **({"steps": 1} if name != "fgsm" else {})}
                params |= {"norm": "l0"} if key == "l0_start" else {}
                if name == "square":
                    params = {"eps": eps, key: value, "queries": 2}
                spec = make_spec(name, params)
                out = registry()[name](model, x, y, **spec.params)
                assert out.shape == x.shape, (name, key, value)


def test_specs_are_validated_together():
    a = make_spec("fgsm", {"eps": 0.1}, id="a")
    with pytest.raises(SpecError, match="share the id 'a'"):
        validate_specs([a, make_spec("pgd", {"eps": 0.1}, id="a")])
    with pytest.raises(SpecError, match="not an earlier attack"):
        validate_specs([make_spec("pgd", {"eps": 0.1}, id="b", only_unbroken=["a"]), a])
    with pytest.raises(SpecError, match="other targets"):
        validate_specs([a, make_spec("pgd", {"eps": 0.1, "targeted": True}, id="b", only_unbroken=["a"])])
    with pytest.raises(SpecError, match="no attacks"):
        validate_specs([])


@pytest.mark.parametrize(
    "dep, fragment",
    [
        (make_spec("pgd", {"eps": 0.2}, id="d"), "eps 0.2 is larger than this attack's 0.1"),
        (make_spec("pgd", {"eps": 0.1, "norm": "l2"}, id="d"), "an attack in l2; chain attacks of the same norm"),
        (make_spec("minimal", {"norm": "linf"}, id="d"), "whose points have no budget"),
        (make_spec("fmn", {"norm": "linf"}, id="d"), "whose points have no budget"),
        (make_spec("deepfool", {}, id="d"), "whose points have no budget"),
    ],
)
def test_a_chained_attack_takes_no_break_from_outside_its_own_ball(dep, fragment: str):
    # Its row would hold the dependency's points where they broke a sample: a break at eps 0.2 or at a minimal
    # distance is not one within eps 0.1, and the row's robust accuracy would be the dependency's.
    chained = make_spec("pgd", {"eps": 0.1}, id="c", only_unbroken=["d"])
    with pytest.raises(SpecError, match=re.escape(fragment)):
        validate_specs([dep, chained])
    # Within its ball: the same norm at the same or a smaller eps; an attack without a budget may chain onto any.
    for ok in (make_spec("fgsm", {"eps": 0.1}, id="d"), make_spec("pgd", {"eps": 0.05}, id="d")):
        validate_specs([ok, chained])
    validate_specs([dep, make_spec("cw_l2", {}, id="c", only_unbroken=["d"])])


def test_registry_holds_every_exported_attack():
    from advlab import attacks

    reg = registry()
    for name in attacks.ATTACKS:
        assert reg[name] is getattr(attacks, name)
    # Everything else the package exports is not an attack name: the result forms, the result type.
    assert {name for name in attacks.__all__ if name.endswith("_result") or name[0].isupper()}.isdisjoint(reg)


def test_plan_batches_covers_every_index_once():
    plan = plan_batches(23, 5)
    assert [list(b) for b in plan][-1] == [20, 21, 22]
    assert sorted(i for b in plan for i in b) == list(range(23))
    with pytest.raises(SpecError):
        plan_batches(10, 0)


# ---------------------------------------------------------------------------------------------- targets


def test_random_targets_are_per_index_uniform_over_other_classes():
    labels = torch.arange(2000) % 10
    indices = list(range(2000))
    t = random_targets(labels, indices, 10, seed=3)
    assert bool((t != labels).all()) and int(t.min()) >= 0 and int(t.max()) <= 9
    counts = torch.bincount(t, minlength=10).float()
    assert float(counts.min()) > 150 and float(counts.max()) < 250  # ~200 each: uniform
    # A sample's target depends on its index and the seed only, not on its batch.
    part = random_targets(labels[1500:1510], indices[1500:1510], 10, seed=3)
    assert torch.equal(part, t[1500:1510])
    assert not torch.equal(random_targets(labels, indices, 10, seed=4), t)


def test_least_likely_and_given_targets(data):
    model, ds = data
    x = ds.x[:8]
    y = ds.y[:8]
    specs = [
        make_spec("fgsm", {"eps": 0.05, "targeted": True}, id="ll", target="least-likely"),
        make_spec("fgsm", {"eps": 0.05, "targeted": True}, id="three", target=3),
    ]
    out = attack_batch(model, x, y, list(range(8)), specs)
    with torch.no_grad():
        least = model(x).argmin(dim=1).tolist()
    assert [r["target"] for r in out["ll"]] == least
    assert [r["target"] for r in out["three"]] == [3] * 8
    for r in out["three"]:  # targeted success means the top-1 is the target
        assert r["success"] == (r["adv_top5"][0] == 3)
    with pytest.raises(SpecError, match="target class 10 does not exist"):
        attack_batch(model, x, y, list(range(8)), [make_spec("fgsm", {"eps": 0.1, "targeted": True}, target=10)])


# ---------------------------------------------------------------------------------------------- records


def test_records_measure_what_they_claim(data):
    model, ds = data
    result = evaluate(model, ds, basic_specs(), batch_size=16, quiet=True)
    by_id = {a["id"]: a for a in result.summary["attacks"]}
    x, y = ds.x, ds.y
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
    for r in result.records["fgsm"]:
        assert r["clean_top5"][0] == int(clean_pred[r["index"]])
        assert r["linf"] <= 0.1 + 1e-6 and r["l2"] <= math.sqrt(64) * 0.1 + 1e-5
        assert 0 <= r["l0"] <= 64
        assert r["success"] == (r["adv_top5"][0] != r["label"])
        assert (
            len(r["adv_top5"]) == 5
            and abs(sum(r["adv_probs"]) - 1) <= 1
            and r["adv_probs"] == sorted(r["adv_probs"], reverse=True)
        )
    fgsm = by_id["fgsm"]
    assert fgsm["n"] == 60 and fgsm["clean_top1"] == int((clean_pred == y[:60]).sum()) / 60
    assert fgsm["adv_top1"] == 1 - fgsm["success_rate"]
    assert fgsm["norms"]["linf"]["max"] <= 0.1 + 1e-6
    tbim = by_id["tbim"]
    assert tbim["targeted"] and all(r["target"] != r["label"] for r in result.records["tbim"])
    assert tbim["success_rate"] == sum(r["adv_top5"][0] == r["target"] for r in result.records["tbim"]) / 60
    assert result.summary["clean"]["n"] == 60
    assert L0_TOL < 1e-4


def test_only_unbroken_is_the_per_sample_worst_case(data):
    model, ds = data
    specs = [
        make_spec("fgsm", {"eps": 0.3}, id="fgsm"),
        make_spec("pgd", {"eps": 0.3, "steps": 3}, id="pgd"),
        make_spec("pgd", {"eps": 0.3, "steps": 10, "restarts": 2}, id="strong", only_unbroken=["fgsm", "pgd"]),
    ]
    result = evaluate(model, ds, specs, batch_size=32, quiet=True)
    a = {x["id"]: x for x in result.summary["attacks"]}
    assert a["strong"]["adv_top1"] <= min(a["fgsm"]["adv_top1"], a["pgd"]["adv_top1"])
    assert a["strong"]["adv_top5"] <= min(a["fgsm"]["adv_top5"], a["pgd"]["adv_top5"])
    recs = {k: {r["index"]: r for r in v} for k, v in result.records.items()}
    copied = [r for r in recs["strong"].values() if r["from"] is not None]
    assert 0 < len(copied) < 60 and a["strong"]["n_from_other_attacks"] == len(copied)
    for r in copied:  # a copied record is the dep's record, at no cost to this attack
        dep = recs[r["from"]][r["index"]]
        assert {**r, "time_s": 0, "from": None} == {**dep, "time_s": 0}
        assert r["time_s"] == 0


def test_a_suite_chained_onto_listed_attacks_is_their_per_sample_worst_case(data):
    """with_suites (the rule behind ``advlab eval --suite``): the suite runs on top of the listed untargeted
    attacks of its own eps and norm, and its row is the per-sample worst case over them."""
    from advlab.evaluate import suite_specs, with_suites

    model, ds = data
    small = Items(ds.x[:32], ds.y[:32])
    listed = [
        make_spec("fgsm", {"eps": 0.1}, id="fgsm"),
        make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd"),
        make_spec("fgsm", {"eps": 0.05}, id="other-eps"),
        make_spec("fgsm", {"eps": 0.1, "norm": "l2"}, id="other-norm"),
        make_spec("fgsm", {"eps": 0.1, "targeted": True}, id="targeted"),
        make_spec("apgd_l1", {"eps": 0.1, "steps": 2}, id="l1-same-eps"),  # no norm parameter: L1, not Linf
    ]
    (suite,) = suite_specs("fast", [0.1])
    specs = with_suites(listed, [suite])
    assert specs[:-1] == listed and specs[-1].only_unbroken == ("fgsm", "pgd") and specs[-1].name == "suite_fast"
    with pytest.raises(SpecError, match="unknown suite 'nope'; available: adaptive, fast, strong"):
        suite_specs("nope", [0.1])
    result = evaluate(model, small, specs, batch_size=16, quiet=True)
    a = {x["id"]: x for x in result.summary["attacks"]}
    recs = {k: {r["index"]: r for r in v} for k, v in result.records.items()}
    for i, r in recs[specs[-1].id].items():  # per sample: broken by the suite if fgsm or pgd broke it
        assert r["success"] or not (recs["fgsm"][i]["success"] or recs["pgd"][i]["success"]), i
    assert a[specs[-1].id]["adv_top1"] <= min(a["fgsm"]["adv_top1"], a["pgd"]["adv_top1"])


class BuggyForward(nn.Module):
    """A real model with a bug: its forward assumes a batch of one, so it raises ValueError on a batch of four
    (the kind of ValueError that used to look like a user mistake on the command line)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (image,) = x  # the bug: "too many values to unpack (expected 1)"
        return self.linear(image.flatten())[None]


def test_a_bug_in_the_model_propagates_and_is_not_a_usage_error(data):
    from advlab.errors import UsageError

    _, ds = data
    with pytest.raises(ValueError, match="too many values to unpack") as err:
        evaluate(BuggyForward(), Items(ds.x[:4], ds.y[:4]), [make_spec("fgsm", {"eps": 0.1})], quiet=True)
    assert not isinstance(err.value, UsageError)


def test_data_the_model_was_not_made_for_is_a_usage_error(data):
    from advlab.models import ImageClassifier

    _, ds = data
    colour = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)),
        mean=[0.5] * 3, std=[0.5] * 3, input_size=(3, 8, 8), class_names=[str(k) for k in range(10)], name="rgb8",
    )  # fmt: skip
    with pytest.raises(SpecError, match=r"rgb8 takes images shaped \(N, 3, H, W\).*got shape \(4, 1, 8, 8\)"):
        evaluate(colour, Items(ds.x[:4], ds.y[:4]), [make_spec("fgsm", {"eps": 0.1})], quiet=True)


def test_unreadable_images_are_skipped_and_counted(data):
    model, ds = data
    holes = Items(ds.x, ds.y, unreadable={3, 17})
    result = evaluate(model, holes, [make_spec("fgsm", {"eps": 0.1})], batch_size=16, quiet=True)
    assert result.summary["clean"]["n"] == 58 and result.summary["n_unreadable"] == 2
    assert result.summary["complete"]
    assert {r["index"] for r in next(iter(result.records.values()))} == set(range(60)) - {3, 17}


def test_model_mode_is_left_as_it_was(data):
    model, ds = data
    model.train()
    try:
        evaluate(model, Items(ds.x[:8], ds.y[:8]), [make_spec("fgsm", {"eps": 0.1})], quiet=True)
        assert model.training
    finally:
        model.eval()


# --------------------------------------------------------------------------------------------- summary


@pytest.fixture(scope="module")
def run_records(data):
    model, ds = data
    return evaluate(model, ds, basic_specs(), batch_size=16, quiet=True).records


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 4))
def test_summary_is_independent_of_order_and_sharding(run_records, rnd: random.Random, shards: int):
    reference = summarize(run_records)
    shuffled = {}
    for aid, rs in run_records.items():
        rs = list(rs)
        rnd.shuffle(rs)
        # Split into shards and join them back in a random order, as merged ranks would be.
        cuts = sorted(rnd.randrange(len(rs) + 1) for _ in range(shards - 1))
        parts = [rs[a:b] for a, b in zip([0, *cuts], [*cuts, len(rs)], strict=True)]
        rnd.shuffle(parts)
        shuffled[aid] = [r for p in parts for r in p]
    assert summarize(shuffled) == reference


def test_summary_refuses_two_different_records_of_one_sample(run_records):
    rs = list(run_records["fgsm"])
    twin = {**rs[0], "success": not rs[0]["success"]}
    with pytest.raises(ValueError, match="two different records"):
        summarize({"fgsm": [*rs, twin]})
    # The same record twice (a shard written by two ranks) is fine.
    assert summarize({"fgsm": [*rs, rs[0]]}) == summarize({"fgsm": rs})


# ------------------------------------------------------------------------------------- run directories


def test_run_directory_resume_skips_finished_batches(data, tmp_path):
    model, ds = data
    out = tmp_path / "run"
    first = evaluate(model, ds, basic_specs(), out=out, batch_size=16, quiet=True)
    files = sorted((out / "records").rglob("*.jsonl"))
    assert len(files) == 3 * 4  # 3 attacks x 4 batches
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    victim = files[5]
    victim.unlink()
    stamps = {f: f.stat().st_mtime_ns for f in files if f != victim}
    second = evaluate(model, ds, basic_specs(), out=out, batch_size=16, quiet=True)
    assert victim.exists()
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # nothing else was recomputed
    assert untimed(second.summary) == untimed(first.summary)
    # Same seed, same numbers: a fresh run elsewhere gives the identical records.
    third = evaluate(model, ds, basic_specs(), out=tmp_path / "again", batch_size=16, quiet=True)
    assert untimed_records(third.records) == untimed_records(first.records)


def test_a_different_run_is_refused_before_any_work(data, tmp_path):
    model, ds = data
    out = tmp_path / "run"
    evaluate(model, Items(ds.x[:16], ds.y[:16]), [make_spec("fgsm", {"eps": 0.1})], out=out, quiet=True)
    before = sorted(p.name for p in (out / "records").rglob("*"))
    for specs, kwargs, needle in [
        ([make_spec("fgsm", {"eps": 0.2})], {}, "attacks"),
        ([make_spec("fgsm", {"eps": 0.1})], {"seed": 1}, "seed"),
        ([make_spec("fgsm", {"eps": 0.1})], {"batch_size": 8}, "batch_size"),
    ]:
        with pytest.raises(SpecError, match=f"holds a different run \\(differs in: .*{needle}"):
            evaluate(model, Items(ds.x[:16], ds.y[:16]), specs, out=out, quiet=True, **kwargs)
    assert sorted(p.name for p in (out / "records").rglob("*")) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not empty and holds no advlab run"):
        evaluate(model, ds, [make_spec("fgsm", {"eps": 0.1})], out=tmp_path / "other", quiet=True)


def test_summary_line_quotes_the_l2_of_successful_examples(data):
    from advlab.evaluate.summary import summary_line

    model, ds = data
    small = Items(ds.x[:32], ds.y[:32])
    result = evaluate(model, small, [make_spec("suite_fast", {"eps": 0.05}, id="fast")], batch_size=16, quiet=True)
    (attack,) = result.summary["attacks"]
    hits = [r["l2"] for r in result.records["fast"] if r["success"] and r["l2"] > 0]
    misses = [r["l2"] for r in result.records["fast"] if not r["success"]]
    assert hits and misses and set(misses) == {0.0}  # the suite keeps the clean image where it fails
    line = summary_line(attack)
    assert f"mean L2 of successes {attack['norms_successful']['l2']['mean']:.4g}" in line
    assert attack["norms_successful"]["l2"]["mean"] > attack["norms"]["l2"]["mean"]
    assert ", max L1 " not in line and ", max L0 " not in line


@pytest.mark.parametrize(("name", "params", "norm"), [("pgd", {"norm": "l1", "eps": 4.0}, "l1"),
                                                      ("apgd_l1", {"eps": 4.0}, "l1"),
                                                      ("pgd", {"norm": "l0", "eps": 6}, "l0")])  # fmt: skip
def test_summary_line_of_an_l1_or_l0_attack_shows_its_budget_held_in_its_norm(data, name, params, norm):
    from advlab.evaluate.summary import summary_line

    model, ds = data
    result = evaluate(model, Items(ds.x[:16], ds.y[:16]), [make_spec(name, {**params, "steps": 3}, id="a")],
                      batch_size=16, quiet=True)  # fmt: skip
    largest = max(r[norm] for r in result.records["a"])
    assert 0 < largest <= params["eps"] * (1 + 1e-6)
    assert f", max {norm.upper()} {largest:.4g}, " in summary_line(result.summary["attacks"][0])


def test_source_digest_follows_the_code_that_makes_records(tmp_path):
    from advlab.evaluate.rundir import code_digest, source_digest

    real = Path(advlab.__file__).resolve().parent
    copy = tmp_path / "advlab"
    shutil.copytree(real, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    assert source_digest(copy) == source_digest(real) == code_digest()  # contents and relative paths only
    reference = source_digest(copy)
    report = copy / "report" / "document.py"
    report.write_text(report.read_text() + "\n# a report change leaves records alone\n")
    assert source_digest(copy) == reference
    for path, change in [
        (copy / "attacks" / "pgd.py", lambda text: text.replace("def ", "def  ", 1)),
        (copy / "models" / "extra.py", None),
        (copy / "evaluate" / "engine.py", lambda text: text + " "),
    ]:
        before = path.read_text() if path.exists() else None
        path.write_text(change(before) if change else "x = 1\n")
        assert source_digest(copy) != reference, path
        path.unlink() if before is None else path.write_text(before)
        assert source_digest(copy) == reference


def test_a_run_by_other_advlab_code_resumes_with_a_warning(data, tmp_path):
    """Provenance is not the fingerprint: a run written by other advlab code (another code digest, another
    version) with the same record schema and attack versions resumes, with a warning, and keeps its records."""
    from advlab.evaluate import ProvenanceWarning
    from advlab.evaluate.rundir import RunDirectory, provenance, source_digest

    model, ds = data
    small = Items(ds.x[:32], ds.y[:32])
    specs = [make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd")]
    out = tmp_path / "run"
    first = evaluate(model, small, specs, out=out, batch_size=16, quiet=True)
    run_file = out / "run.json"
    written = json.loads(run_file.read_text())
    assert written["provenance"] == provenance() and "code_sha256" not in written["config"]
    # What an older advlab (other code, same record versions) would have left: its own provenance, and one batch.
    old = {**written, "provenance": {"advlab_version": "0.0.9", "code_sha256": "0" * 64}}
    run_file.write_text(json.dumps(old))
    (first_batch, _second) = sorted((out / "records").rglob("*.jsonl"))
    _second.unlink()
    with pytest.warns(ProvenanceWarning, match=r"started by other advlab code \(advlab 0\.0\.9, code 000000000000"):
        again = evaluate(model, small, specs, out=out, batch_size=16, quiet=True)
    assert untimed(again.summary) == untimed(first.summary) and first_batch.exists()
    assert json.loads(run_file.read_text())["provenance"]["code_sha256"] == "0" * 64  # kept as written
    # The same run from code whose source differs (a comment edited): same fingerprint, a warning on resume.
    edited = tmp_path / "edited"
    skip = shutil.ignore_patterns("__pycache__", "*.safetensors")
    shutil.copytree(Path(advlab.__file__).resolve().parent, edited / "advlab", ignore=skip)
    pgd = edited / "advlab" / "attacks" / "pgd.py"
    pgd.write_text(pgd.read_text() + "# a comment edited\n")
    origin = provenance(edited / "advlab")
    assert origin["code_sha256"] == source_digest(edited / "advlab") != provenance()["code_sha256"]
    run_file.write_text(json.dumps(written))
    config = written["config"]
    with pytest.warns(ProvenanceWarning):
        assert RunDirectory(out, config, origin).open() is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RunDirectory(out, config).open() is True  # the same code: no warning


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c["algorithms"].update(pgd=c["algorithms"]["pgd"] + 1), r"pgd algorithm 2 -> 1\): its records"),
        (
            lambda c: c.update(record_schema=c["record_schema"] + 1),
            rf"record schema {RECORD_SCHEMA_VERSION + 1} -> {RECORD_SCHEMA_VERSION}\): its records",
        ),
        (lambda c: c.update(code_sha256="0" * 64), "written by an advlab from before record versions"),
    ],
)
def test_a_run_with_other_record_versions_is_refused_or_replaced(data, tmp_path, change, needle):
    """A changed algorithm version or record schema means other records: refused before any work, or replaced."""
    model, ds = data
    small = Items(ds.x[:32], ds.y[:32])
    specs = [make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd")]
    fresh = evaluate(model, small, specs, out=tmp_path / "fresh", batch_size=16, quiet=True)
    out = tmp_path / "run"
    evaluate(model, small, specs, out=out, batch_size=16, quiet=True)
    run_file = out / "run.json"
    old = json.loads(run_file.read_text())
    change(old["config"])
    old["fingerprint"] = "f" * 64
    run_file.write_text(json.dumps(old))
    stale = sorted((out / "records").rglob("*.jsonl"))[0]  # records the other version computed differently
    rows = [json.loads(line) for line in stale.read_text().splitlines()]
    flipped = [{**r, "success": not r["success"]} if "success" in r else r for r in rows]  # not the end line
    stale.write_text("".join(json.dumps(r) + "\n" for r in flipped))
    (out / "report.html").write_text("<html>the old run's report</html>")
    with pytest.raises(SpecError, match=needle) as err:
        evaluate(model, small, specs, out=out, batch_size=16, quiet=True)
    assert "--replace" in str(err.value) and "\n" not in str(err.value)
    assert json.loads(run_file.read_text())["fingerprint"] == "f" * 64  # refused before touching anything
    again = evaluate(model, small, specs, out=out, batch_size=16, quiet=True, replace=True)
    assert untimed_records(again.records) == untimed_records(fresh.records)
    assert untimed(again.summary) == untimed(fresh.summary)
    assert json.loads(run_file.read_text())["fingerprint"] == again.summary["fingerprint"]
    assert (out / "report.html").exists()  # a report is overwritten by the next one, not deleted
    # A folder that holds no advlab run is never cleared, replace or not.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="holds no advlab run"):
        evaluate(model, small, specs, out=tmp_path / "mine", quiet=True, replace=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_the_fingerprint_holds_the_versions_of_every_attack_a_run_uses():
    """A suite's records depend on the attacks it runs: their versions are in the configuration too."""
    from advlab.evaluate import ALGORITHM_VERSIONS, registry

    model = nn.Linear(4, 3)
    config = run_config(model, [make_spec("suite_fast", {"eps": 0.1}), make_spec("fgsm", {"eps": 0.1})],
                        n_samples=4, batch_size=2, seed=0)  # fmt: skip
    used = ("apgd", "apgd_t", "fgsm", "suite_fast")  # suite_fast runs APGD-CE and APGD-T
    assert config["algorithms"] == {name: ALGORITHM_VERSIONS[name] for name in used}
    assert set(registry()) <= set(ALGORITHM_VERSIONS)  # every built-in attack has a version to bump


def test_the_model_is_prepared_once_per_run_and_the_preparation_is_part_of_the_run(data, tmp_path):
    """evaluate(prepare=True) attacks advlab.models.prepare(model, first batch) and records what was done in
    run.json's configuration; prepare=False attacks the model as given; switching is another run."""
    from advlab.models import preparation_record, prepare

    model, ds = data
    small = Items(ds.x[:32], ds.y[:32])
    specs = [make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd")]
    on = evaluate(model, small, specs, out=tmp_path / "on", batch_size=16, quiet=True)
    prepared = prepare(model, ds.x[:16])  # the run's first batch is the example
    assert json.loads((tmp_path / "on" / "run.json").read_text())["config"]["prepare"] == preparation_record(prepared)
    direct = evaluate(prepared, small, specs, batch_size=16, quiet=True, prepare=False)
    assert untimed_records(on.records) == untimed_records(direct.records)  # the prepared model was attacked
    off = evaluate(model, small, specs, out=tmp_path / "off", batch_size=16, quiet=True, prepare=False)
    assert json.loads((tmp_path / "off" / "run.json").read_text())["config"]["prepare"] == {"enabled": False}
    assert off.model is model and on.model is not None
    with pytest.raises(SpecError, match=r"differs in: prepare\)?"):
        evaluate(model, small, specs, out=tmp_path / "on", batch_size=16, quiet=True, prepare=False)


def test_shards_written_separately_give_the_single_process_summary(data, tmp_path):
    """Two 'ranks' each process half of the batch plan into one run directory (issue 8's layout)."""
    model, ds = data
    single = evaluate(model, ds, basic_specs(), out=tmp_path / "single", batch_size=16, quiet=True)
    shared = tmp_path / "shared"
    evaluate(model, ds, basic_specs(), out=shared, batch_size=16, batches=[1, 3], quiet=True)
    partial = json.loads((shared / "summary.json").read_text())
    assert partial["complete"] is False
    merged = evaluate(model, ds, basic_specs(), out=shared, batch_size=16, batches=[0, 2], quiet=True)
    assert untimed(merged.summary) == untimed(single.summary)


SIGKILL_SPECS = [
    ("fgsm", {"eps": 0.1}, "fgsm"),
    ("pgd", {"eps": 0.1, "steps": 100, "restarts": 2}, "pgd"),
    ("cw_l2", {"steps": 20, "binary_search_steps": 2, "targeted": True}, "cw"),
]
SIGKILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import digits_cnn
    from advlab.evaluate import evaluate, make_spec
    torch.set_num_threads(1)
    model = digits_cnn()
    model.load_state_dict(torch.load({weights!r}, weights_only=True))
    model.eval()
    x, y = torch.load({data!r}, weights_only=True)
    ds = [(x[i], int(y[i]), i) for i in range(len(x))]
    specs = [make_spec(name, params, id=id) for name, params, id in json.loads({specs!r})]
    evaluate(model, ds, specs, out=sys.argv[1], batch_size=8, seed=5, quiet=True)
    """
)


def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_summary(digits_model, tmp_path):
    """A real process killed with SIGKILL mid-run (twice, at random moments), then run again to the end."""
    model, x, y = digits_model
    x, y = x[:48], y[:48]
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save((x, y), tmp_path / "d.pt")
    script = tmp_path / "run.py"
    script.write_text(
        SIGKILL_SCRIPT.format(
            tests=str(ROOT / "tests"),
            weights=str(tmp_path / "w.pt"),
            data=str(tmp_path / "d.pt"),
            specs=json.dumps(SIGKILL_SPECS),
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    specs = [make_spec(name, params, id=id) for name, params, id in SIGKILL_SPECS]
    reference = evaluate(model, Items(x, y), specs, out=tmp_path / "reference", batch_size=8, seed=5, quiet=True)

    out = tmp_path / "killed"
    rnd = random.Random(0)
    kills = 0
    for _ in range(2):
        start_count = len(list((out / "records").rglob("*.jsonl"))) if out.exists() else 0
        proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stderr=subprocess.PIPE)
        # Kill once it has written 1-3 more batch files, plus a random few milliseconds: a moment that lands
        # anywhere in a batch (mid-attack or mid-write), yet always before the run could finish on a fast machine.
        target = start_count + rnd.randint(1, 3)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list((out / "records").rglob("*.jsonl"))) if out.exists() else 0
            if done >= target:
                time.sleep(0.02 * rnd.random())
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stderr.close()
        # Whatever the moment, the folder holds only whole batch files (temp files are hidden and ignored).
        for f in (out / "records").rglob("*.jsonl"):
            assert all(json.loads(line) for line in f.read_text().splitlines())
    assert kills == 2
    assert len(list((out / "records").rglob("*.jsonl"))) < 3 * 6  # the kills left work to do
    finished = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["complete"] and untimed(resumed) == untimed(reference.summary)
    assert sorted(p.name for p in (out / "records").rglob("*.jsonl")) == sorted(
        p.name for p in (tmp_path / "reference" / "records").rglob("*.jsonl")
    )


def test_evaluate_refuses_non_specs_and_empty_data(data):
    model, ds = data
    with pytest.raises(TypeError, match="AttackSpec"):
        evaluate(model, ds, ["fgsm"], quiet=True)
    with pytest.raises(SpecError, match="empty"):
        evaluate(model, Items(ds.x[:0], ds.y[:0]), [make_spec("fgsm", {"eps": 0.1})], quiet=True)


class _Flaky(nn.Module):
    """A linear model, used to check that records do not depend on the batch a sample is in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).double()).float()


def test_random_start_depends_on_the_sample_not_its_batch(data):
    _, ds = data
    model = _Flaky().eval()
    spec = [make_spec("pgd", {"eps": 0.1, "steps": 2})]
    a = evaluate(model, ds, spec, batch_size=7, quiet=True).records
    b = evaluate(model, ds, spec, batch_size=60, quiet=True).records
    ra, rb = untimed_records(a), untimed_records(b)
    for x, y in zip(next(iter(ra.values())), next(iter(rb.values())), strict=True):
        assert x["adv_top5"] == y["adv_top5"] and x["success"] == y["success"]
        assert x["linf"] == pytest.approx(y["linf"], abs=1e-6) and x["l2"] == pytest.approx(y["l2"], rel=1e-5)


def test_model_digest_tells_apart_models_that_differ_only_in_normalisation() -> None:
    # ImageClassifier keeps mean and std as non-persistent buffers (absent from the state dict); two such models
    # compute different functions and a run of one must not verify as a run of the other.
    from advlab.evaluate.run import model_digest
    from advlab.models import ImageClassifier

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    a = ImageClassifier(backbone, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], input_size=(3, 4, 4))
    b = ImageClassifier(backbone, mean=[0.9, 0.9, 0.9], std=[0.05, 0.05, 0.05], input_size=(3, 4, 4))
    x = torch.rand(2, 3, 4, 4)
    assert not torch.allclose(a(x), b(x)) and a.state_dict().keys() == b.state_dict().keys()
    assert model_digest(a) != model_digest(b)
    again = ImageClassifier(backbone, mean=[0.0] * 3, std=[1.0] * 3, input_size=(3, 4, 4))
    assert model_digest(a) == model_digest(again)


def test_model_digest_is_the_same_under_another_torchs_layer_repr(monkeypatch) -> None:
    # A run made under one torch version must verify under another (issue 20: "works on another machine"): torch
    # renders its own layers differently across versions (a torch 2.14 run's digest did not match under 2.11 on
    # the same weights), so the digest must not read torch's layer text; a defence's settings still count.
    from advlab.defenses import BitDepth, defended
    from advlab.evaluate.run import model_digest

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    model = defended(net, BitDepth(3))
    digest = model_digest(model)
    for layer in (nn.Conv2d, nn.Linear):

        def other_torchs_text(self: nn.Module) -> str:
            return "rendered by another torch version"

        other_torchs_text.__module__ = layer.extra_repr.__module__  # torch's own code, another version of it
        monkeypatch.setattr(layer, "extra_repr", other_torchs_text)
    assert "another torch version" in repr(model)
    assert model_digest(model) == digest
    monkeypatch.undo()
    assert model_digest(defended(net, BitDepth(4))) != digest  # a defence's setting lives outside the weights
    with torch.no_grad():
        net[0].bias[0] += 1e-6
    assert model_digest(model) != digest
