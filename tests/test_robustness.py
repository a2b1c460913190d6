"""Minimal-norm ensembles and robustness curves: exact distances on a linear model in every norm, the curve
against fixed-eps accuracies, the cross-check against fixed-eps attacks, and the command line."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab import attacks
from advlab.cli import main
from advlab.evaluate import SpecError, evaluate, make_spec, robustness_lines
from advlab.evaluate.robustness import distance_curve
from advlab.report import render_run
from tests.conftest import Linear
from tests.test_evaluate import Items
from tests.test_fmn import linear_problem

pytestmark = pytest.mark.usefixtures("one_thread")

FASHION_PRESENT = any(Path("/usr/share/datasets/fashion-mnist").glob("t10k-images-idx3-ubyte*")) or bool(
    os.environ.get("ADVLAB_FASHION_MNIST")
)


@pytest.mark.parametrize("norm", ["l0", "l1", "l2", "linf"])
def test_minimal_ensemble_finds_the_exact_distance_to_a_linear_boundary(norm: str) -> None:
    model, x, y, exact = linear_problem(0)
    res = attacks.minimal(model, x, y, norm=norm, steps=40, return_info=True)
    d = res.extras["distance"]
    assert bool(res.success.all())
    with torch.no_grad():
        assert bool((model(res.x_adv).argmax(1) != y).all())
    delta = (res.x_adv - x).flatten(1)
    measured = {"l0": (delta != 0).sum(1).double(), "l1": delta.abs().sum(1), "l2": delta.norm(dim=1),
                "linf": delta.abs().amax(1)}[norm]  # fmt: skip
    torch.testing.assert_close(d, measured)
    if norm == "l0":
        assert bool((d >= exact[norm]).all()) and bool((d <= exact[norm] + 1).all()), d
    else:
        assert bool((d >= exact[norm] * (1 - 1e-9)).all()) and bool((d <= exact[norm] * 1.01).all()), d / exact[norm]
    members = attacks.MINIMAL_MEMBERS[norm]
    assert bool(((res.extras["found_by"] >= 1) & (res.extras["found_by"] <= len(members))).all())


def test_minimal_ensemble_is_no_worse_than_each_member_and_keeps_misclassified_at_zero(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:12], y[:12].clone()
    with torch.no_grad():
        y[0] = (model(x[:1]).argmax(1) + 1) % 10  # sample 0 is misclassified from the start
    res = attacks.minimal(model, x, y, norm="l2", steps=8, return_info=True)
    assert float(res.extras["distance"][0]) == 0 and int(res.extras["found_by"][0]) == 0
    assert torch.equal(res.x_adv[0], x[0])
    for name in ("fmn", "ddn", "fab", "fab_t"):
        fn = getattr(attacks, name)
        kwargs = {} if name == "ddn" else {"norm": "l2"}
        own = fn(model, x, y, steps=8, return_info=True, **kwargs).extras["distance"]
        assert bool((res.extras["distance"][1:] <= own[1:].to(res.extras["distance"].dtype) * (1 + 1e-6)).all())


def run_member(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, steps: int):
    """One member of the ensemble as a user would call it (attacks/minimal.py's MINIMAL_MEMBERS)."""
    if name == "fmn_large_step":
        return attacks.fmn(model, x, y, norm=norm, steps=steps, alpha_init=1000.0, gamma_init=0.7, return_info=True)
    kwargs = {} if name in ("ddn", "sigma_zero") else {"norm": norm}
    return getattr(attacks, name)(model, x, y, steps=steps, return_info=True, **kwargs)


@pytest.mark.parametrize("norm", ["linf", "l0"])
def test_minimal_ensemble_keeps_per_sample_the_smallest_verified_member_distance(norm: str, digits_model) -> None:
    """FAB-T (more optimal than FAB on the robust Fashion-MNIST model in Linf) is a member in Linf, and two FMN
    runs and sigma-zero in L0; per sample the ensemble's distance is the smallest any member reached, and it is
    that of the member ``found_by`` names."""
    model, x, y = digits_model
    x, y = x[:10], y[:10]
    members = attacks.MINIMAL_MEMBERS[norm]
    assert members == (("fmn", "fab_t") if norm == "linf" else ("fmn", "fmn_large_step", "sigma_zero"))
    res = attacks.minimal(model, x, y, norm=norm, steps=10, return_info=True)
    d = res.extras["distance"].double()
    own = torch.stack([run_member(m, model, x, y, norm, 10).extras["distance"].double() for m in members])
    assert bool(res.success.all())
    torch.testing.assert_close(d, own.amin(0), rtol=1e-5, atol=1e-7)
    found = own[res.extras["found_by"] - 1, torch.arange(len(x))]
    torch.testing.assert_close(d, found, rtol=1e-5, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.just(0.0), st.just(math.inf), st.floats(0.001, 5.0)), min_size=1, max_size=30),
    st.lists(st.floats(0.0, 6.0), min_size=1, max_size=10),
)
def test_distance_curve_is_the_fraction_of_samples_beyond_each_eps(distances, probes) -> None:
    curve = distance_curve(distances, eps_max=5.0)
    n = len(distances)
    assert curve["eps"][0] == 0 and curve["eps"] == sorted(set(curve["eps"]))
    for e, acc in zip(curve["eps"], curve["robust_accuracy"], strict=True):
        assert acc == sum(d > e for d in distances) / n
    for e in probes:  # the step function through the points, evaluated anywhere
        k = max(i for i, v in enumerate(curve["eps"]) if v <= e)
        assert curve["robust_accuracy"][k] == sum(d > e for d in distances) / n
    assert curve["auc"] == pytest.approx(sum(min(d, 5.0) for d in distances) / (5.0 * n))
    assert 0 <= curve["auc"] <= 1 and curve["n_unbroken"] == sum(math.isinf(d) for d in distances)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_curve_from_distances_equals_fixed_eps_accuracy_on_a_linear_model(norm: str) -> None:
    """On a linear two-class model both are exact: PGD reaches the boundary iff its distance is <= eps."""
    model, x, y, exact = linear_problem(0, n=12)
    d = sorted(exact[norm].tolist())
    # Between two samples' distances, 5% or more apart (PGD's last steps land within a few % of the boundary).
    eps_values = [(a + b) / 2 for a, b in itertools.pairwise(d) if b > 1.05 * a]
    specs = [make_spec("minimal", {"norm": norm, "steps": 40}, id="min")]
    specs += [make_spec("pgd", {"eps": e, "norm": norm, "steps": 20}, id=f"pgd{k}") for k, e in enumerate(eps_values)]
    summary = evaluate(model, Items(x, y), specs, batch_size=12, quiet=True, prepare=False).summary
    section = summary["robustness"][norm]
    curve = section["attacks"]["min"]
    assert [a["curve"] for a in summary["attacks"] if a["id"] == "min"] == [curve]
    assert len(eps_values) >= 4
    sweep = section["sweeps"][0]
    assert sweep["eps"] == sorted(eps_values) and len(sweep["robust_accuracy"]) == len(eps_values)
    for e, acc in zip(sweep["eps"], sweep["robust_accuracy"], strict=True):
        k = max(i for i, v in enumerate(curve["eps"]) if v <= e)
        assert curve["robust_accuracy"][k] == acc == sum(v > e for v in d) / len(d)
    assert section["cross_check"]["n_violations"] == 0
    assert section["cross_check"]["corrected"] == section["ensemble"]
    # The sweep's per-sample curve: the same accuracy at its eps, and bounds above the exact distances.
    per_sample = sweep["curve"]
    for e, acc in zip(sweep["eps"], sweep["robust_accuracy"], strict=True):
        k = max(i for i, v in enumerate(per_sample["eps"]) if v <= e)
        assert per_sample["robust_accuracy"][k] == acc
    assert per_sample["median_eps"] >= curve["median_eps"] * (1 - 1e-6)
    assert per_sample["auc"] >= curve["auc"] * (1 - 1e-6) and per_sample["eps_max"] == section["eps_max"]


def l0_problem(n: int = 16, d: int = 24) -> tuple[Linear, torch.Tensor, torch.Tensor, list[float]]:
    """A two-class linear model (float64) and images pushed along +-sign(w) by different amounts, so that their
    exact L0 distances (the greedy count of the largest achievable changes |w_i| room_i) spread over several
    counts."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    shift = torch.linspace(-0.25, 0.25, n, dtype=torch.float64)[:, None] * w.sign()
    x = (0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64) + shift).clamp(0, 1)
    b = -(x @ w).mean()
    z = x @ w + b
    room = torch.where((w[None] > 0) == (z[:, None] < 0), 1 - x, x)
    reach = (room * w.abs()).sort(dim=1, descending=True).values.cumsum(dim=1)
    exact = ((reach < z.abs()[:, None]).sum(dim=1) + 1).double().tolist()
    model = Linear(torch.stack([torch.zeros_like(w), w]), torch.stack([torch.zeros_like(b), b]))
    return model, x.view(n, 1, 4, d // 4), (z > 0).long(), exact


def test_an_l0_sweep_of_pgd_cross_checks_the_l0_ensemble_and_corrects_it_to_the_exact_curve() -> None:
    """On a linear model PGD_0 with a step large against the box breaks a sample with k coordinates iff k >= its
    exact L0 distance (tests/test_pgd_l0.py), so a sweep over every count is exact. A short run of the minimal-norm
    ensemble is a few coordinates above it on some samples: the cross-check lists exactly those and corrects
    the curve to the exact one."""
    model, x, y, exact = l0_problem()
    counts = sorted(set(exact))
    assert len(counts) >= 4
    specs = [make_spec("minimal", {"norm": "l0", "steps": 2}, id="min")]  # two steps: far from minimal
    past_the_box = {"norm": "l0", "alpha": 100.0, "steps": 5}
    specs += [make_spec("pgd", {"eps": int(k), **past_the_box}, id=f"pgd{int(k)}") for k in counts]
    run = evaluate(model, Items(x, y), specs, batch_size=16, quiet=True, prepare=False)
    section = run.summary["robustness"]["l0"]
    (sweep,) = section["sweeps"]
    assert sweep["eps"] == counts
    assert sweep["robust_accuracy"] == [sum(v > k for v in exact) / len(exact) for k in counts]
    found = {r["index"]: math.inf if r["distance"] is None else r["distance"] for r in run.records["min"]}
    assert all(found[i] >= v for i, v in enumerate(exact))  # never below the optimum
    missed = [i for i, v in enumerate(exact) if found[i] > v]
    check = section["cross_check"]
    assert missed and check["n_samples_violating"] == len(missed)
    assert sorted({v["index"] for v in check["violations"]}) == missed
    assert check["corrected"] == distance_curve(exact, section["eps_max"]) == sweep["curve"]


def test_a_sweeps_per_sample_curve_counts_a_sample_broken_at_a_smaller_eps_as_broken_at_the_larger(
    digits_model,
) -> None:
    """Square with 20 queries swept over eps (a random search: a larger eps can miss a sample a smaller one
    broke): at each eps the curve is the fraction of samples that no row at or below it broke, never above the
    row's own accuracy, and below it where a row missed."""
    model, x, y = digits_model
    eps_values = [0.1, 0.12, 0.14, 0.16, 0.18, 0.2]
    specs = [make_spec("square", {"eps": e, "queries": 20}, id=f"sq{k}") for k, e in enumerate(eps_values)]
    result = evaluate(model, Items(x[:48], y[:48]), specs, batch_size=48, quiet=True, prepare=False)
    sweep = result.summary["robustness"]["linf"]["sweeps"][0]
    curve = sweep["curve"]
    records = {s.id: {r["index"]: r for r in result.records[s.id]} for s in specs}
    n = len(records["sq0"])
    assert curve["n"] == n
    below = []
    for k, (e, row_acc) in enumerate(zip(eps_values, sweep["robust_accuracy"], strict=True)):
        unbroken = sum(
            all(records[f"sq{j}"][i]["adv_top5"][0] == records[f"sq{j}"][i]["label"] for j in range(k + 1))
            for i in records["sq0"]
        )
        at = max(i for i, v in enumerate(curve["eps"]) if v <= e)
        assert curve["robust_accuracy"][at] == unbroken / n <= row_acc
        below.append(curve["robust_accuracy"][at] < row_acc)
    assert any(below)
    assert curve["robust_accuracy"][0] == sum(r["clean_top5"][0] == r["label"] for r in records["sq0"].values()) / n


def test_cross_check_counts_lists_and_corrects_what_a_weak_minimal_attack_missed(digits_model, tmp_path) -> None:
    model, x, y = digits_model
    data = Items(x[:24], y[:24])
    specs = [
        make_spec("fmn", {"norm": "linf", "steps": 1}, id="weak"),  # one step: far from minimal
        make_spec("pgd", {"eps": 0.1, "norm": "linf", "steps": 10}, id="pgd"),
    ]
    result = evaluate(model, data, specs, out=tmp_path / "run", batch_size=12, quiet=True, prepare=False)
    section = result.summary["robustness"]["linf"]
    dist = {r["index"]: math.inf if r["distance"] is None else r["distance"] for r in result.records["weak"]}
    broken = {r["index"]: r["linf"] for r in result.records["pgd"] if r["adv_top5"][0] != r["label"]}
    expected = sorted(i for i, b in broken.items() if dist[i] > min(0.1, b) * (1 + 1e-5) + 1e-12)
    check = section["cross_check"]
    assert expected and check["n_violations"] == len(expected) == check["n_samples_violating"]
    assert [v["index"] for v in check["violations"]] == expected
    assert broken and check["n_checked"] == len(broken)
    corrected = {i: min(dist[i], min(0.1, broken[i])) if i in expected else dist[i] for i in dist}
    assert check["corrected"] == distance_curve(list(corrected.values()), section["eps_max"])
    pgd_acc = next(a["adv_top1"] for a in result.summary["attacks"] if a["id"] == "pgd")
    k = max(i for i, v in enumerate(check["corrected"]["eps"]) if v <= 0.1)
    assert check["corrected"]["robust_accuracy"][k] <= pgd_acc
    json.dumps(result.summary, allow_nan=False)  # strict JSON: no inf in summary.json
    # The report shows the curves (PNG next to report.html) and the cross-check's violations.
    report = render_run(tmp_path / "run")
    assert report.sections[0].id == "robustness"
    assert (tmp_path / "run" / "robustness_linf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "run" / "tables.md").read_text()
    weak = result.summary["robustness"]["linf"]["attacks"]["weak"]
    median = "n/a" if weak["median_eps"] is None else f"{weak['median_eps']:.4g}"
    assert f"| weak | linf | 24 | {median} | {weak['auc']:.4g} | {weak['n_unbroken']} |" in md
    assert (f"{check['n_violations']} violations ({check['n_samples_violating']} samples) in {check['n_checked']} "
            "checks") in md
    # advlab eval prints the verdict too: how many samples the minimal-norm attack missed within the budget.
    (line,) = robustness_lines(result.summary)
    assert line.startswith(f"cross-check (linf): {len(expected)} samples broken by pgd within a budget below")
    median = check["corrected"]["median_eps"]
    assert f"corrected median distance {'inf' if median is None else f'{median:.4g}'}" in line


def test_robustness_lines_say_what_was_checked_and_what_was_missed() -> None:
    def summary(n_checked: int, n_violations: int, samples: int, median: float | None) -> dict:
        check = {"attacks": ["pgd", "apgd"], "n_checked": n_checked, "n_violations": n_violations,
                 "n_samples_violating": samples, "corrected": {"median_eps": median}}  # fmt: skip
        return {"robustness": {"l2": {"cross_check": check}, "linf": {"cross_check": {"attacks": []}}}}

    assert robustness_lines(summary(0, 0, 0, 0.3)) == ["cross-check (l2): pgd, apgd broke no sample, nothing to check"]
    (clear,) = robustness_lines(summary(7, 0, 0, 0.3))
    assert clear == "cross-check (l2): 7 checks of samples broken by pgd, apgd: none below the smallest distance " \
        "the minimal-norm attacks found"
    (missed,) = robustness_lines(summary(7, 3, 2, None))
    assert missed.startswith("cross-check (l2): 2 samples broken by pgd, apgd within a budget below")
    assert "(3 of 7 checks); corrected median distance inf" in missed


def test_records_of_minimal_attacks_carry_distance_zero_for_misclassified_and_null_for_unbroken(digits_model):
    model, x, y = digits_model
    x, y = x[:8], y[:8].clone()
    with torch.no_grad():
        y[0] = (model(x[:1]).argmax(1) + 1) % 10
    specs = [make_spec("fmn", {"norm": "l2", "steps": 1, "alpha_init": 1e-6}, id="tiny")]  # cannot reach anything
    records = evaluate(model, Items(x, y), specs, batch_size=8, quiet=True, prepare=False).records["tiny"]
    by_index = {r["index"]: r for r in records}
    assert by_index[0]["distance"] == 0
    for r in records[1:]:
        assert r["distance"] == (r["l2"] if r["success"] else None)  # null: none found (strict JSON, no inf)


def test_minimal_with_an_unknown_norm_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="minimal: unknown norm 'l3'; expected one of 'l0', 'l1', 'l2', 'linf'"):
        make_spec("minimal", {"norm": "l3"})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--minimal", "--attack", "pgd"], "--minimal: 'pgd' is not a minimal-norm attack; minimal-norm attacks"),
        (["--minimal", "--eps", "0.1"], "--minimal finds each sample's smallest perturbation and takes no --eps"),
        (["--minimal", "--norm", "l3"], "minimal: unknown norm 'l3'"),
        (["--minimal", "--attack", "fab", "--norm", "l0"], "fab: unknown norm 'l0'"),
        # Flags --minimal has no use for are refused, not dropped (the run would record a command it did not run).
        (["--minimal", "--alpha", "0.5"], "--minimal takes --norm, --steps, --targeted/--target and -p KEY=VALUE; "
         "--alpha would be ignored"),
        (["--minimal", "--restarts", "3", "--loss", "margin"], "--restarts, --loss would be ignored"),
    ],
)
def test_minimal_mistakes_are_one_line_and_exit_2(capsys, argv, needle) -> None:
    code = main(["eval", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_sanity_with_only_l1_attacks_is_one_line_before_the_model_loads(capsys) -> None:
    # The masking checks are defined in Linf and L2; an L1 run asks for them in a norm they do not have.
    code = main(["eval", "--model", "/no/such/model.pt", "--attack", "apgd_l1", "--eps", "10", "--sanity"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--sanity's masking checks run at an Linf or L2 budget; this run's attacks with an eps are l1" in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--norm", "l2"], "--norm"),
        (["-p", "steps=1000"], "-p"),
        (["--restarts", "5", "--loss", "margin"], "--restarts, --loss"),
        (["--target", "3"], "--target"),
        (["--eps", "0.1"], "--eps"),
    ],
)
def test_attack_flags_beside_attack_tables_are_refused_not_dropped(capsys, tmp_path, flags, named) -> None:
    config = tmp_path / "attacks.toml"
    config.write_text('[[attack]]\nname = "pgd"\neps = 0.1\n')
    code = main(["eval", "--config", str(config), *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{named} describe an --attack or --suite; none was given (put them in the [[attack]] tables" in err, err


def test_attack_table_with_minimal_true_must_name_a_minimal_norm_attack(capsys, tmp_path) -> None:
    config = tmp_path / "attacks.toml"
    config.write_text('[[attack]]\nname = "pgd"\neps = 0.1\nminimal = true\n')
    code = main(["eval", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "attack #1 (minimal = true): 'pgd' is not a minimal-norm attack" in err, err


@pytest.mark.skipif(not FASHION_PRESENT, reason="Fashion-MNIST is missing")
@pytest.mark.parametrize("norm_flag", [["--norm", "linf"], []])  # without --norm: the suite's (linf) for both
def test_eval_minimal_with_a_suite_writes_distances_curves_and_the_cross_check(capsys, tmp_path, norm_flag) -> None:
    from safetensors.torch import save_file

    from advlab.models import load_model

    torch.manual_seed(0)
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in load_model("mnist_cnn_small", pretrained=False).state_dict().items()},
              str(weights))  # fmt: skip
    out = tmp_path / "run"
    argv = ["eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist", "--limit", "8",
            "--minimal", *norm_flag, "--steps", "3", "--suite", "fast", "--eps", "0.05", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert robustness_lines(summary)[0] in printed.splitlines()
    assert [a["name"] for a in summary["attacks"]] == ["suite_fast", "minimal"]
    assert summary["attacks"][1]["params"] == {"norm": "linf", "steps": 3}
    section = summary["robustness"]["linf"]
    assert section["cross_check"]["attacks"] == [summary["attacks"][0]["id"]]
    assert section["attacks"][summary["attacks"][1]["id"]]["n"] == 8
    files = sorted((out / "records").rglob("*.jsonl"))
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sum("distance" in r for r in records) == 8


@pytest.mark.skipif(not FASHION_PRESENT, reason="Fashion-MNIST is missing")
@pytest.mark.parametrize("how", ["flags", "table"])
@pytest.mark.parametrize(("name", "norm"), [("ddn", "l2"), ("sigma_zero", "l0")])
def test_eval_minimal_one_norm_attack_in_its_own_norm_runs_from_flags_and_from_a_table(
    capsys, tmp_path, how: str, name: str, norm: str
) -> None:
    """``--minimal --attack ddn --norm l2`` (and the ``[[attack]]`` table that says the same) is DDN's run: the
    norm it names is DDN's own, so the spec is DDN's without it, and summary.json has its L2 curve; likewise
    sigma-zero in L0."""
    from safetensors.torch import save_file

    from advlab.models import load_model

    torch.manual_seed(0)
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in load_model("mnist_cnn_small", pretrained=False).state_dict().items()},
              str(weights))  # fmt: skip
    out = tmp_path / "run"
    common = ["eval", "--model", "mnist_cnn_small", "--weights", str(weights), "--data", "fashion-mnist",
              "--limit", "4", "--out", str(out), "--quiet"]  # fmt: skip
    if how == "flags":
        argv = [*common, "--minimal", "--attack", name, "--norm", norm, "--steps", "2"]
    else:
        config = tmp_path / "attacks.toml"
        config.write_text(f'[[attack]]\nname = "{name}"\nminimal = true\nnorm = "{norm}"\nsteps = 2\n')
        argv = [*common, "--config", str(config)]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    (attack,) = summary["attacks"]
    assert (attack["name"], attack["params"]) == (name, {"steps": 2})
    assert summary["robustness"][norm]["attacks"][attack["id"]]["n"] == 4


@pytest.mark.parametrize(("name", "own"), [("ddn", "l2"), ("sigma_zero", "l0")])
def test_eval_minimal_one_norm_attack_in_another_norm_is_one_line(capsys, name: str, own: str) -> None:
    code = main(["eval", "--model", "/no/such/model.pt", "--minimal", "--attack", name, "--norm", "linf"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{name} attacks in {own} only, got norm='linf'" in err, err


def test_l1_fixed_eps_attacks_cross_check_the_l1_ensemble(digits_model) -> None:
    model, x, y = digits_model
    specs = [
        make_spec("minimal", {"norm": "l1", "steps": 2}, id="min"),
        make_spec("apgd_l1", {"eps": 3.0, "steps": 10}, id="apgd_l1"),
        make_spec("pgd", {"eps": 3.0, "norm": "l1", "steps": 10}, id="pgd_l1"),
    ]
    result = evaluate(model, Items(x[:12], y[:12]), specs, batch_size=12, quiet=True, prepare=False)
    check = result.summary["robustness"]["l1"]["cross_check"]
    assert check["attacks"] == ["apgd_l1", "pgd_l1"]
    dist = {r["index"]: math.inf if r["distance"] is None else r["distance"] for r in result.records["min"]}
    rows = [r for a in ("apgd_l1", "pgd_l1") for r in result.records[a]]
    broken = [(r["index"], r) for r in rows if r["adv_top5"][0] != r["label"]]
    assert broken and check["n_checked"] == len(broken)
    assert check["n_violations"] == sum(dist[i] > min(3.0, r["l1"]) * (1 + 1e-5) + 1e-12 for i, r in broken)


def test_l1_rows_bound_a_broken_sample_by_the_measured_size_of_their_point(digits_model) -> None:
    """A PGD-L1 row at a large eps breaks samples with points well inside its ball: the sweep's per-sample curve
    and the cross-check take the point's own L1 size (records carry ``l1``), as in L2 and Linf, so they count a
    sample as broken from that size, not from the row's eps."""
    model, x, y = digits_model
    specs = [
        make_spec("fmn", {"norm": "l1", "steps": 1}, id="weak"),
        make_spec("pgd", {"eps": 20.0, "norm": "l1", "steps": 3}, id="p20"),
        make_spec("pgd", {"eps": 30.0, "norm": "l1", "steps": 3}, id="p30"),
    ]
    result = evaluate(model, Items(x[:24], y[:24]), specs, batch_size=24, quiet=True, prepare=False)
    section = result.summary["robustness"]["l1"]
    n = 24
    size = {i: math.inf for i in range(n)}  # per sample, the smallest L1 point a row broke it with
    for aid in ("p20", "p30"):
        for r in result.records[aid]:
            if r["clean_top5"][0] != r["label"]:
                size[r["index"]] = 0.0
            elif r["adv_top5"][0] != r["label"]:
                size[r["index"]] = min(size[r["index"]], r["l1"])
    broken = [s for s in size.values() if 0 < s < math.inf]
    assert broken and max(broken) < 20, "the rows' points must lie inside the smaller ball for this test"
    curve = section["sweeps"][0]["curve"]
    for e, acc in zip(curve["eps"], curve["robust_accuracy"], strict=True):
        assert acc == sum(s > e for s in size.values()) / n
    assert curve["median_eps"] < 20
    weak = {r["index"]: math.inf if r["distance"] is None else r["distance"] for r in result.records["weak"]}
    check = section["cross_check"]
    missed = {i for i in range(n) if weak[i] > size[i] * (1 + 1e-5) + 1e-12}
    assert missed and {v["index"] for v in check["violations"]} == missed
    own = {(r["index"], aid): r["l1"] for aid in ("p20", "p30") for r in result.records[aid]}
    assert all(v["bound"] == own[v["index"], v["attack"]] for v in check["violations"])
    corrected = [min(weak[i], size[i]) for i in range(n)]
    for e, acc in zip(check["corrected"]["eps"], check["corrected"]["robust_accuracy"], strict=True):
        assert acc == sum(d > e for d in corrected) / n


def test_robustness_summary_does_not_depend_on_record_order(digits_model) -> None:
    import random

    from advlab.evaluate.robustness import robustness_summary
    from advlab.evaluate.summary import summary_line

    model, x, y = digits_model
    specs = [
        make_spec("fmn", {"norm": "l2", "steps": 3}, id="fmn"),
        make_spec("pgd", {"eps": 0.5, "norm": "l2", "steps": 3}, id="a"),
        make_spec("pgd", {"eps": 1.0, "norm": "l2", "steps": 3}, id="b"),
    ]
    result = evaluate(model, Items(x[:16], y[:16]), specs, batch_size=8, quiet=True, prepare=False)
    rnd = random.Random(0)
    shuffled = {k: rnd.sample(v, len(v)) for k, v in result.records.items()}
    assert robustness_summary(shuffled, specs) == result.summary["robustness"]
    assert result.summary["robustness"]["l2"]["sweeps"][0]["ids"] == ["a", "b"]
    line = summary_line(next(a for a in result.summary["attacks"] if a["id"] == "fmn"))
    median = result.summary["robustness"]["l2"]["attacks"]["fmn"]["median_eps"]
    assert f"median distance {'inf' if median is None else f'{median:.4g}'}" in line


def test_a_minimal_norm_attack_is_never_chained_on_another() -> None:
    # Chained, it would skip the samples the first attack broke and give them that attack's size (or none, in L1
    # and L0, whose sizes records did not carry or do not bound): a curve of someone else's distances (review F16).
    from advlab.evaluate import validate_specs

    first = make_spec("apgd_l1", {"eps": 10.0}, id="a")
    with pytest.raises(SpecError, match="'m': a minimal-norm attack measures every sample's own smallest"):
        validate_specs([first, make_spec("fmn", {"norm": "l1"}, id="m", only_unbroken=("a",))])
    assert len(validate_specs([first, make_spec("fmn", {"norm": "l1"}, id="m")])) == 2


@pytest.mark.parametrize(
    ("name", "norm", "wide", "narrow"), [("fgsm", "linf", 0.3, 0.2), ("pgd", "l1", 30.0, 6.0)]
)
def test_a_sweep_row_chained_onto_a_smaller_eps_bounds_copied_samples_by_the_copied_perturbation(
    digits_model, name, norm, wide, narrow
) -> None:
    """A row at a large eps chained onto the same attack at a small one holds copies of the small one's points
    where those broke a sample: the per-sample curve counts such a sample as broken from the copied point's size
    (l1/l2/linf), not from either row's eps. (The other way round, a small eps chained onto a large one, is
    refused: validate_specs.)"""
    model, x, y = digits_model
    params = {"norm": norm, "steps": 3} if name == "pgd" else {}
    specs = [
        make_spec(name, {**params, "eps": narrow}, id="narrow"),
        make_spec(name, {**params, "eps": wide}, id="wide", only_unbroken=("narrow",)),
    ]
    result = evaluate(model, Items(x[:32], y[:32]), specs, batch_size=32, quiet=True, prepare=False)
    sweep = result.summary["robustness"][norm]["sweeps"][0]
    rows = {r["index"]: r for r in result.records["wide"]}
    copied = [r for r in rows.values() if r["from"] == "narrow" and r["clean_top5"][0] == r["label"]]
    assert copied, "the small eps must break samples for the row to copy"
    assert all(r[norm] <= narrow * (1 + 1e-6) for r in copied)  # inside the small ball, so inside the row's
    n = len(rows)
    curve = sweep["curve"]
    # The whole curve: per sample the smallest measured size of a point that broke it (own or copied), each
    # row's eps capping its own points' sizes.
    bound = {i: 0.0 if r["clean_top5"][0] != r["label"] else math.inf for i, r in rows.items()}
    for aid, e in (("wide", wide), ("narrow", narrow)):
        for r in result.records[aid]:
            if bound[r["index"]] and r["adv_top5"][0] != r["label"]:
                size = r[norm] if r["from"] is not None else min(e, r[norm])
                bound[r["index"]] = min(bound[r["index"]], size)
    for e, acc in zip(curve["eps"], curve["robust_accuracy"], strict=True):
        assert acc == sum(b > e for b in bound.values()) / n
    # At the large eps the curve is the chained row's own robust accuracy: every break it counts lies in its ball.
    wide_row = next(a for a in result.summary["attacks"] if a["id"] == "wide")
    at = max(i for i, v in enumerate(curve["eps"]) if v <= wide)
    assert curve["robust_accuracy"][at] == pytest.approx(wide_row["adv_top1"])
    if norm == "l1":  # PGD-L1's copied points lie inside the wide ball: their size, not eps, bounds them
        assert any(r[norm] < 0.9 * wide for r in copied)
