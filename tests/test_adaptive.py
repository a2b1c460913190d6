"""Adaptive evaluation of defended models (issue 18): randomized models in the engine and the suites, defences on
the command line, the full masking checks from the CLI, and the adaptive suite that acts on what they find.

The models are the digits CNN of conftest.py behind the real defences of advlab.defenses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from advlab.cli import main
from advlab.defenses import BPDA, JPEG, BitDepth, GaussianNoise, MedianSmoothing, bpda_at, defended
from advlab.evaluate import evaluate, evaluate_adaptive, make_spec, probe_modules
from advlab.evaluate.adaptive import choose_eot_samples, gradient_variance
from advlab.evaluate.suite import Stage, apgd_ce_stage, run_suite, suite_stages
from tests.conftest import Items

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend for the 2 shared cores


def _untimed(records: dict) -> dict:
    return {k: [{**r, "time_s": 0} for r in v] for k, v in records.items()}


# ------------------------------------------------------------------------------ randomized models in the engine


def test_records_of_a_random_model_do_not_depend_on_the_global_rng_or_on_resumption(digits_model, tmp_path) -> None:
    """The model's draws come from a generator seeded per (run seed, batch, attack): the records are the same
    whatever the global generator held, whether the run went in one go or batch by batch (a resumption), and the
    caller's global stream is left untouched."""
    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(0.3))
    data = Items(x[:12], y[:12])
    specs = [make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd"), make_spec("fgsm", {"eps": 0.1}, id="fgsm")]
    torch.manual_seed(1)
    one = evaluate(noisy, data, specs, batch_size=4, quiet=True, prepare=False, seed=5)
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    out = tmp_path / "run"
    for b in (2, 0, 1):  # batches in another order, each a separate call: a run resumed twice
        evaluate(noisy, data, specs, out=out, batch_size=4, quiet=True, prepare=False, seed=5, batches=[b])
    assert torch.equal(torch.random.get_rng_state(), state)
    again = evaluate(noisy, data, specs, out=out, batch_size=4, quiet=True, prepare=False, seed=5)
    assert _untimed(again.records) == _untimed(one.records)
    other_seed = evaluate(noisy, data, specs, batch_size=4, quiet=True, prepare=False, seed=6)
    assert _untimed(other_seed.records) != _untimed(one.records)  # the seed does reach the model's draws


class UserNoise(torch.nn.Module):
    """A user's random module: noise from torch's global generator, shaped like the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * torch.randn_like(x)


@pytest.mark.parametrize("noise", [GaussianNoise(0.5), UserNoise()], ids=["advlab_defence", "user_module"])
def test_clean_and_adversarial_predictions_are_judged_on_common_draws(digits_model, noise) -> None:
    """A sample's clean and adversarial expected predictions come from the same K draws of the model's randomness
    (common random numbers): at a point that is x itself up to 1e-6 they agree on every sample, so no sample
    counts as broken by draw noise; also for the rows a chained attack (only_unbroken) still runs on. With
    independent draws (before) heavy noise flips a third of them."""
    model, x, y = digits_model
    noisy = defended(model, noise)
    # A third of the labels made the model's least likely class: those samples are fully broken from the start
    # (the label out of the top-5), so the chained attack runs on the rest only.
    with torch.no_grad():
        least = model(x[:24]).argmin(dim=1)
    labels = torch.where(torch.arange(24) % 3 == 0, least, y[:24])
    data = Items(x[:24], labels)
    first = make_spec("fgsm", {"eps": 1e-6}, id="first")
    tiny = make_spec("fgsm", {"eps": 1e-6}, id="tiny", only_unbroken=("first",))
    for k in (1, 4):
        specs = [first, tiny] if k == 1 else [make_spec("fgsm", {"eps": 1e-6, "eot_samples": k}, id="tiny")]
        run = evaluate(noisy, data, specs, batch_size=8, quiet=True, prepare=False, seed=3).records
        own = [r for r in run["tiny"] if not r.get("from")]
        assert len(own) >= 4 and (k > 1 or len(own) < 24)  # a subset of the rows, for the chained attack
        for r in own:
            assert r["adv_top5"] == r["clean_top5"] and r["success"] == (r["clean_top5"][0] != r["label"])
            assert r["adv_probs"][0] == pytest.approx(r["clean_probs"][0], abs=1e-3)


def test_judgements_of_advlab_random_defences_do_not_depend_on_the_batching(digits_model) -> None:
    """The clean prediction of a sample behind a random defence of advlab (per-sample streams keyed by the run seed
    and the dataset index) is the same whatever the batch size; with per-batch draws (before) it changed."""
    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(0.5))
    data = Items(x[:12], y[:12])
    spec = make_spec("fgsm", {"eps": 1e-6, "eot_samples": 2}, id="tiny")
    runs = [evaluate(noisy, data, [spec], batch_size=b, quiet=True, prepare=False, seed=4).records["tiny"]
            for b in (3, 12)]  # fmt: skip
    for a, b in zip(*runs, strict=True):
        assert a["index"] == b["index"] and a["clean_top5"] == b["clean_top5"]
        assert a["clean_probs"] == pytest.approx(b["clean_probs"], abs=1e-6)
        assert a["adv_top5"][0] == b["adv_top5"][0]
    other = evaluate(noisy, data, [spec], batch_size=12, quiet=True, prepare=False, seed=5).records["tiny"]
    assert [r["clean_probs"] for r in other] != [r["clean_probs"] for r in runs[1]]  # the seed reaches the draws


def test_records_of_an_eot_attack_hold_the_expected_prediction(digits_model) -> None:
    """With eot_samples=K the recorded probabilities are the mean softmax over K draws: for heavy noise they sit
    near the mean over many draws, far closer than one draw's."""
    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(0.5))
    data = Items(x[:8], y[:8])
    eps0 = {"eps": 1e-6}  # a budget too small to matter: the record shows the prediction at (almost) x itself
    k1, k64 = make_spec("fgsm", eps0, id="k1"), make_spec("fgsm", {**eps0, "eot_samples": 64}, id="k64")
    # Alone, each attack is judged on its own K; together, both on the run's largest K (one rule per run).
    alone = {s.id: evaluate(noisy, data, [s], batch_size=8, quiet=True, prepare=False).records[s.id] for s in (k1, k64)}
    together = evaluate(noisy, data, [k1, k64], batch_size=8, quiet=True, prepare=False).records
    with torch.no_grad():
        torch.manual_seed(0)
        mean = torch.stack([torch.softmax(noisy(x[:8]), 1) for _ in range(400)]).mean(0).double()

    def error(records: list) -> float:
        return sum(abs(r["adv_probs"][0] - float(mean[i, r["adv_top5"][0]])) for i, r in enumerate(records))

    assert error(alone["k64"]) < 0.5 * error(alone["k1"])
    assert error(together["k1"]) < 0.5 * error(alone["k1"])  # the K = 1 attack judged on 64 draws beside K = 64


def test_suite_with_eot_judges_breaks_on_the_expected_prediction(digits_model) -> None:
    """run_suite(eot_samples=K): a noisy model broken by a lucky draw is not counted; with K = 1 a model whose
    single draw is almost a coin toss looks broken far more often than its expectation is."""
    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(0.6))
    xs, ys = x[:24], y[:24]
    stage = [Stage("apgd-ce", apgd_ce_stage(1), "one step")]  # at eps 1e-6 the judging is what counts
    torch.manual_seed(0)
    one = run_suite(noisy, xs, ys, 1e-6, stages=stage, seed=0, eot_samples=1)
    torch.manual_seed(0)
    many = run_suite(noisy, xs, ys, 1e-6, stages=stage, seed=0, eot_samples=32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(noisy(xs), 1) for _ in range(500)]).mean(0).argmax(1) == ys
    assert int((many.robust != expected).sum()) < int((one.robust != expected).sum())
    assert "EOT over 32 draws" in suite_stages("fast", eot_samples=32)[0].description


def test_bad_eot_samples_in_a_suite_spec_is_one_clear_error() -> None:
    from advlab.evaluate import SpecError

    for bad in (0, 1.5, "4"):
        with pytest.raises(SpecError, match="eot_samples"):
            make_spec("suite_strong", {"eps": 0.1, "eot_samples": bad})


# ------------------------------------------------------------------------------------- defences on the CLI

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not any(FASHION.glob("t10k-images-idx3-ubyte*")) and not os.environ.get("ADVLAB_FASHION_MNIST"),
    reason="Fashion-MNIST is missing: apt-get install dataset-fashion-mnist",
)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fmnist_eval(out: Path, *extra: str, n: int = 16) -> list[str]:
    return [
        "eval", "--model", "fmnist_cnn_standard", "--data", "fashion-mnist", "--limit", str(n), "--batch-size", "8",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


@needs_fashion
def test_cli_defense_wraps_the_model_as_a_recorded_step_and_bpda_undoes_the_masking(capsys, tmp_path) -> None:
    pgd = ("--attack", "pgd", "--eps", "0.1", "--steps", "10")
    naive, adaptive = tmp_path / "naive", tmp_path / "bpda"
    code, _, err = cli(capsys, *fmnist_eval(naive, "--defense", "bit_depth(bits=1)", *pgd))
    assert code == 0, err
    run = json.loads((naive / "run.json").read_text())
    assert json.dumps(run).count("bit_depth(bits=1)") >= 1
    summary = json.loads((naive / "summary.json").read_text())
    assert summary["model"]["defenses"] == ["bit_depth(bits=1)"] and summary["model"]["bpda"] == []
    code, _, err = cli(capsys, *fmnist_eval(adaptive, "--defense", "bit_depth(bits=1)", "--bpda", "transforms.0", *pgd))
    assert code == 0, err
    with_bpda = json.loads((adaptive / "summary.json").read_text())
    assert with_bpda["model"]["bpda"] == ["transforms.0"]
    assert with_bpda["clean"] == summary["clean"]  # BPDA changes the backward pass only
    # bits=1 rounds every pixel: PGD's gradient is zero and it stalls; through BPDA it breaks samples.
    assert with_bpda["attacks"][0]["adv_top1"] < summary["attacks"][0]["adv_top1"]


@needs_fashion
def test_defenses_in_attacks_toml(capsys, tmp_path) -> None:
    config = tmp_path / "attacks.toml"
    config.write_text(
        'model = "fmnist_cnn_standard"\ndata = "fashion-mnist"\nlimit = 8\n'
        'defense = ["bit_depth(bits=3)", "median(size=3)"]\n[[attack]]\nname = "fgsm"\neps = 0.1\n'
    )
    out = tmp_path / "run"
    code, _, err = cli(capsys, "eval", "--config", str(config), "--out", str(out), "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["defenses"] == ["bit_depth(bits=3)", "median(size=3)"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--defense", "bit_depth(bits=3"), "cannot parse defence"),
        (("--defense", "blur(size=3)"), "unknown defence 'blur'"),
        (("--defense", "median(radius=3)"), "unknown parameter 'radius' of defence 'median'"),
        (("--defense", "bit_depth(bits=0)"), "bits must be an int in [1, 16]"),
        (("--defense", "median(size=3)", "--bpda", "transforms.7"), "no submodule 'transforms.7'"),
        (("--defense", "median(size=3)", "--bpda", "model"), "bpda: forward_fn must keep the input's shape"),
        (("-p", "eot_samples=0"), "eot_samples must be >= 1"),
        (("-p", "eot_samples=2.5"), "eot_samples must be an integer"),
    ],
)
@needs_fashion
def test_bad_defence_or_eot_input_is_one_line_and_writes_nothing(capsys, tmp_path, extra, needle) -> None:
    out = tmp_path / "run"
    code, _, err = cli(capsys, *fmnist_eval(out, "--attack", "pgd", "--eps", "0.1", *extra))
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_bpda_at_leaves_the_model_as_it_was_and_refuses_a_shape_change(digits_model) -> None:
    model, x, _ = digits_model
    guarded = defended(model, BitDepth(2))
    wrapped = bpda_at(guarded, ["transforms.0"])
    assert isinstance(wrapped.transforms[0], BPDA) and isinstance(guarded.transforms[0], BitDepth)
    assert wrapped.model is guarded.model  # shared, not copied
    xs = x[:4].clone().requires_grad_(True)
    (g_plain,) = torch.autograd.grad(guarded(xs).sum(), xs)
    (g_bpda,) = torch.autograd.grad(wrapped(xs).sum(), xs)
    assert torch.equal(g_plain, torch.zeros_like(g_plain)) and g_bpda.abs().sum() > 0
    with pytest.raises(ValueError, match="must keep the input's shape"):
        bpda_at(defended(model, torch.nn.Upsample(scale_factor=2)), ["transforms.0"])(x[:2])


# ------------------------------------------------------------------------------------- the adaptive suite


class NoGraph(torch.nn.Module):
    """A preprocessing step computed outside autograd (as a numpy or Pillow round-trip is): no gradient at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return x.clamp(0.1, 0.9)


def test_module_probe_finds_the_modules_with_zero_or_undefined_local_jacobian(digits_model) -> None:
    model, x, _ = digits_model
    guarded = defended(model, MedianSmoothing(2), BitDepth(3), NoGraph(), JPEG(75))
    found = {p["path"]: p["reason"] for p in probe_modules(guarded, x[:8])}
    assert found == {"transforms.1": "zero", "transforms.2": "undefined", "transforms.3": "zero"}
    assert probe_modules(model, x[:8]) == []  # a plain CNN: nothing to flag


def test_module_probe_runs_through_in_place_modules(digits_model) -> None:
    """EfficientNet-Lite's ReLU6(inplace=True) and the like: the probe re-runs each module on a copy of the input it
    received (an in-place module overwrote the original), and not on a leaf tensor (in place on a leaf that
    requires grad is an error)."""
    model, x, _ = digits_model
    x = x[:8].clone()  # the in-place module writes to the batch it is given
    net = defended(torch.nn.Sequential(torch.nn.Hardtanh(0.2, 0.8, inplace=True), model), BitDepth(3))
    assert {p["path"]: p["reason"] for p in probe_modules(net, x)} == {"transforms.0": "zero"}
    clamp_all = defended(torch.nn.Sequential(torch.nn.Hardtanh(2.0, 3.0, inplace=True), model))  # x in [0, 1]
    assert {p["path"]: p["reason"] for p in probe_modules(clamp_all, x.clone())} == {"model.0": "zero"}


def test_eot_samples_follow_the_gradient_variance(digits_model) -> None:
    """K = ceil(r / tol^2), capped: more noise, more variance, more draws; none for a deterministic model."""
    model, x, y = digits_model
    r_small = gradient_variance(defended(model, GaussianNoise(0.02)), x[:8], y[:8])
    r_large = gradient_variance(defended(model, GaussianNoise(0.5)), x[:8], y[:8])
    assert gradient_variance(model, x[:8], y[:8]) == 0.0 and 0 < r_small < r_large
    assert choose_eot_samples(0.0, random=False) == 1 and choose_eot_samples(0.01, random=True) == 2
    assert choose_eot_samples(1.0, random=True) == 12 and choose_eot_samples(1e6, random=True, cap=16) == 16


class NoGraphQuantize(torch.nn.Module):
    """Round to 16 grey levels without a graph, as a NumPy or OpenCV preprocessor would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (x * 15).round() / 15


@pytest.mark.parametrize(
    "transform, check, fix",
    [
        (BitDepth(1), "module_probe (zero local Jacobian)", "BPDA around transforms.0"),
        (GaussianNoise(0.3), "deterministic_logits", "EOT over"),
        # A preprocessor with no graph at all (a NumPy round trip): the checks and the naive suite raised in
        # autograd before the probe could wrap it (review, session 20).
        (NoGraphQuantize(), "module_probe (undefined local Jacobian)", "BPDA around transforms.0"),
    ],
)
def test_adaptive_suite_records_the_trigger_and_fix_and_is_never_above_naive(
    digits_model, tmp_path, transform, check, fix
) -> None:
    model, x, y = digits_model
    guarded = defended(model, transform)
    quick = {"steps": 20, "n_target_classes": 2, "square_queries": 100}
    result = evaluate_adaptive(
        guarded, Items(x[:8], y[:8]), [0.15], batch_size=8, naive="fast", adaptive_params=quick,
        out=tmp_path / "run", quiet=True,
    )  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    plan = summary["adaptive"]["plan"]
    assert any(t["check"] == check and t["fix"].startswith(fix) for t in plan["triggers"]), plan["triggers"]
    assert [c["name"] for c in summary["sanity"]["checks"]][:2] == ["deterministic_logits", "zero_gradients"]
    (row,) = summary["adaptive"]["rows"]
    assert row["adaptive"] <= row["naive"] and check in row["triggered_by"]
    naive_id, adaptive_id = (a["id"] for a in summary["attacks"])
    for n, a in zip(result.records[naive_id], result.records[adaptive_id], strict=True):
        assert not (n["adv_top5"][0] != n["label"] and a["adv_top5"][0] == a["label"])  # no sample comes back


@needs_fashion
def test_cli_sanity_records_every_masking_check(capsys, tmp_path) -> None:
    out = tmp_path / "run"
    code, _, err = cli(capsys, *fmnist_eval(out, "--attack", "fgsm", "--eps", "0.1", "--sanity", n=8))
    assert code == 0, err
    sanity = json.loads((out / "summary.json").read_text())["sanity"]
    names = [c["name"] for c in sanity["checks"]]
    assert names[:8] == [
        "deterministic_logits", "zero_gradients", "iterative_vs_single_step", "accuracy_monotone_in_eps",
        "large_eps", "unbounded_attack", "square_vs_whitebox", "loss_rises",
    ]  # fmt: skip
    assert sanity["on"] == 8 and all(c["status"] in ("pass", "warn") for c in sanity["checks"])
    code, _, err = cli(capsys, *fmnist_eval(tmp_path / "cw", "--attack", "cw_l2", "--sanity", n=8))
    assert code == 2 and "--sanity needs an attack with an eps" in err


@needs_fashion
def test_cli_suite_adaptive_prints_naive_and_adaptive_and_the_report_shows_them(capsys, tmp_path) -> None:
    from advlab.report.summary import render_run

    out = tmp_path / "run"
    quick = ("-p", "steps=10", "-p", "n_target_classes=2", "-p", "square_queries=50")
    # median smoothing keeps a gradient: the naive suite breaks most samples in its first stage (a fast test)
    argv = fmnist_eval(out, "--defense", "median(size=3)", "--suite", "adaptive", "--eps", "0.1", *quick, n=4)
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("adaptive eps=0.1: robust ") and "naive ->" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adaptive"]["plan"]["checked_on"] == 4 and summary["model"]["defenses"] == ["median(size=3)"]
    assert [a["name"] for a in summary["attacks"]] == ["suite_strong", "suite_adaptive"]
    assert summary["attacks"][1]["params"]["steps"] == 10
    render_run(out, tmp_path / "report")
    assert "naive against adaptive" in (tmp_path / "report" / "tables.md").read_text()
    code, _, err = cli(capsys, *fmnist_eval(tmp_path / "x", "--suite", "adaptive", "--eps", "0.1", "--steps", "3"))
    assert code == 2 and "--suite adaptive takes only" in err
    code, _, err = cli(capsys, *fmnist_eval(tmp_path / "x", "--suite", "adaptive", "--eps", "0.1", "-p", "c=3"))
    assert code == 2 and "--suite adaptive takes -p steps" in err and not (tmp_path / "x").exists()


@needs_fashion
@pytest.mark.parametrize(
    "extra",
    [
        ("--attack", "fgsm", "--eps", "0.1", "--sanity"),
        ("--defense", "median(size=3)", "--suite", "adaptive", "--eps", "0.1", "-p", "steps=3", "-p",
         "n_target_classes=1", "-p", "square_queries=10"),
    ],
    ids=["sanity", "suite_adaptive"],
)  # fmt: skip
def test_sanity_and_the_adaptive_suite_under_torchrun_give_the_one_process_summary(tmp_path, extra) -> None:
    """Under torchrun rank 0 runs the checks and shares them (and the adaptive plan); the two ranks attack one
    batch each, and the summary equals the single-process run's, checks, plan and rows included."""
    from tests.test_distributed import advlab, ok, torchrun, without_timings

    argv = [*fmnist_eval(Path("run"), *extra, n=8), "--batch-size", "4"]  # one batch per rank
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    ok(advlab(argv, one, timeout=300))
    result = ok(torchrun(argv, two, timeout=300))
    summaries = [json.loads((d / "run" / "summary.json").read_text()) for d in (one, two)]
    assert summaries[1]["complete"] and summaries[1]["n_samples"] == 8
    assert summaries[1]["sanity"]["on"] == 4 and len(summaries[1]["sanity"]["checks"]) >= 8
    assert without_timings(summaries[1]) == without_timings(summaries[0])
    if "adaptive" in extra:
        assert summaries[1]["adaptive"]["rows"] and result.stdout.count("adaptive eps=0.1") == 1  # rank 0 prints


def test_naive_suite_beside_eot_is_judged_on_the_expected_prediction_not_one_draw(tmp_path) -> None:
    """A noise-only defence at eps ~ 0 breaks nothing: the naive suite's adversarial predictions must be judged by
    the clean pass's rule (the expected prediction over the run's K), not by one noisy draw (which counted ~20
    points of 'broken' here before)."""

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.rand(64, 3, 4, 4)
    with torch.no_grad():
        y = base(x).argmax(1)
    quick = {"steps": 2, "square_queries": 2, "n_target_classes": 1}
    result = evaluate_adaptive(
        defended(base, GaussianNoise(0.6)), Items(x, y), [1e-4], naive="fast", adaptive_params=quick,
        out=tmp_path / "run", quiet=True, prepare=False, batch_size=64,
    )  # fmt: skip
    naive = next(a for a in result.summary["attacks"] if a["name"] == "suite_fast")
    assert result.summary["adaptive"]["plan"]["eot_samples"] > 1
    assert naive["adv_top1"] >= naive["clean_top1"] - 0.1, naive  # one-draw judging gave 0.625 against 0.828


def test_a_resumed_batch_of_a_random_model_is_judged_by_the_whole_runs_rule(tmp_path) -> None:
    """Review 2, F8: the prediction rule's K is the run's largest eot_samples. A batch resumed with only its K = 1
    attack left to run must still be judged over that K, or its records differ from the uninterrupted run's."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.rand(16, 3, 4, 4)
    with torch.no_grad():
        y = base(x).argmax(1)
    model = defended(base, GaussianNoise(0.3))
    specs = [
        make_spec("fgsm", {"eps": 0.05}, id="fgsm"),
        make_spec("pgd", {"eps": 0.05, "steps": 2, "eot_samples": 8}, id="pgd"),
    ]
    out = tmp_path / "run"
    first = evaluate(model, Items(x, y), specs, out=out, batch_size=16, quiet=True, prepare=False)
    for f in (out / "records").glob("fgsm*/*.jsonl"):  # killed after pgd's records, before fgsm's were kept
        f.unlink()
    again = evaluate(model, Items(x, y), specs, out=out, batch_size=16, quiet=True, prepare=False)
    untimed = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert untimed(again.records["fgsm"]) == untimed(first.records["fgsm"])


@pytest.mark.parametrize("suite", ["suite_fast", "suite_adaptive"])
def test_a_suite_on_a_random_defence_stops_attacking_exactly_the_samples_its_records_count_broken(
    digits_model, suite
) -> None:
    """Review 3, F3: the suite judged each stage's break on its own draws (its own K, keyed by the attack's seeds)
    while the records are judged by the run's rule (the largest K of the run, the run's draws): a sample the suite
    stopped attacking as broken could be recorded as robust. The suite now judges by the records' rule, so its
    ``broken_by`` and the records agree on every sample (the adaptive suite too: it did not take the run's rule)."""
    model, x, y = digits_model
    noisy = defended(model, GaussianNoise(0.5))
    data = Items(x[:32], y[:32])
    params = {"steps": 3, "n_target_classes": 2, "square_queries": 10} if suite == "suite_adaptive" else {}
    specs = [
        make_spec(suite, {"eps": 0.05, "eot_samples": 1, **params}, id="suite"),
        make_spec("fgsm", {"eps": 0.05, "eot_samples": 8}, id="k8"),  # the run's rule: K = 8
    ]
    records = evaluate(noisy, data, specs, batch_size=16, quiet=True, prepare=False, seed=5).records["suite"]
    for r in records:
        stage = r["extras"]["broken_by"]
        misclassified = r["clean_top5"][0] != r["label"]
        assert (stage == 0) == misclassified, r
        assert (stage > 0) == (r["success"] and not misclassified), r
