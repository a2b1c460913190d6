"""Gradient-masking checks, both ways: a normal trained model passes, a model that quantises its input (zero
gradients everywhere) warns, a randomised model warns about determinism; each verdict function both ways;
the summary-based checks on hand-written summaries."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advlab.evaluate import sanity
from advlab.evaluate.sanity import Check, sanity_checks
from advlab.evaluate.suite import run_suite
from advlab.evaluate.summary_checks import check_summary


class Quantised(nn.Module):
    """Rounds the input to 5 grey levels before the classifier: torch.round has a zero gradient everywhere, the
    textbook case of masked gradients (Athalye et al. 2018, sec. 4.1, "shattered gradients")."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class AlwaysDropout(nn.Module):
    """Randomised at test time (dropout that ignores eval mode)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.inner(x), 0.5, training=True)


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


@pytest.fixture(scope="module")
def digits_batch(digits_model):
    model, x, y = digits_model
    return model, x[:64], y[:64]


def test_a_normal_trained_model_passes_every_check(digits_batch) -> None:
    model, x, y = digits_batch
    suite = run_suite(model, x, y, 0.1, seed=0, square_queries=300)
    checks = sanity_checks(model, x, y, 0.1, seed=0, suite_result=suite)
    assert [c.name for c in checks] == [
        "deterministic_logits",
        "zero_gradients",
        "iterative_vs_single_step",
        "accuracy_monotone_in_eps",
        "large_eps",
        "unbounded_attack",
        "square_vs_whitebox",
        "loss_rises",
    ]
    assert all(c.status == "pass" for c in checks), [c for c in checks if c.status != "pass"]
    json.dumps([c.to_dict() for c in checks])
    numbers = {c.name: c.numbers for c in checks}
    assert numbers["large_eps"]["accuracy"] == 0.0 and numbers["zero_gradients"]["share_zero"] == 0.0
    assert numbers["iterative_vs_single_step"]["iterative_accuracy"] <= suite.robust_accuracy + 1e-9


def test_a_suite_without_square_still_gets_all_eight_checks(digits_batch) -> None:
    model, x, y = digits_batch
    fast = run_suite(model, x, y, 0.1, seed=0, suite="fast")
    assert "square" not in fast.attack_names
    checks = {c.name: c for c in sanity_checks(model, x, y, 0.1, seed=0, suite_result=fast, square_queries=300)}
    assert len(checks) == 8 and checks["square_vs_whitebox"].status == "pass"
    assert checks["square_vs_whitebox"].numbers["whitebox_accuracy"] == fast.robust_accuracy


def test_a_suite_result_of_another_budget_is_refused(digits_batch) -> None:
    model, x, y = digits_batch
    x, y = x[:8], y[:8]
    fast = run_suite(model, x, y, 0.1, seed=0, suite="fast")
    with pytest.raises(ValueError, match=r"was run at eps 0\.1\.\.0\.1, the checks at eps 0\.2"):
        sanity_checks(model, x, y, 0.2, seed=0, suite_result=fast)
    with pytest.raises(ValueError, match="norm 'linf' but the checks use 'l2'"):
        sanity_checks(model, x, y, 0.1, norm="l2", seed=0, suite_result=fast)


def test_a_gradient_masking_model_warns(digits_batch) -> None:
    model, x, y = digits_batch
    masked = Quantised(model)
    # Without a suite result the checks run their own reference suite (APGD-CE, APGD-T, Square).
    checks = statuses(sanity_checks(masked, x, y, 0.1, seed=0, square_queries=300))
    for name in ("zero_gradients", "unbounded_attack", "square_vs_whitebox", "loss_rises", "large_eps"):
        assert checks[name] == "warn", (name, checks)
    assert checks["deterministic_logits"] == "pass"


def test_a_randomised_model_warns_about_determinism(digits_batch) -> None:
    model, x, _ = digits_batch
    logits = AlwaysDropout(model)
    with torch.no_grad():
        check = sanity.check_deterministic(logits(x), logits(x))
    assert check.status == "warn" and "EOT" in check.message
    with torch.no_grad():
        assert sanity.check_deterministic(model(x), model(x)).status == "pass"


def test_verdicts_both_ways() -> None:
    assert sanity.check_zero_gradients(torch.ones(3, 4)).status == "pass"
    g = torch.ones(3, 4)
    g[1] = 0
    c = sanity.check_zero_gradients(g)
    assert c.status == "warn" and abs(c.numbers["share_zero"] - 1 / 3) < 1e-9
    g[1, 0] = float("nan")
    assert sanity.check_zero_gradients(g).numbers["share_nonfinite"] > 0
    t, f = torch.tensor([True, False, True]), torch.tensor([False, False, True])
    assert sanity.check_iterative_vs_single_step(t, f).status == "pass"
    assert sanity.check_iterative_vs_single_step(f, t).status == "warn"
    # Equal totals, disjoint samples: FGSM broke two samples the iterative attack missed.
    a, b = torch.tensor([True, True, False, False]), torch.tensor([False, False, True, True])
    assert sanity.check_iterative_vs_single_step(a, b).status == "warn"
    assert sanity.check_monotone([0.1, 0.2, 0.05], [0.5, 0.4, 0.6]).status == "pass"
    assert sanity.check_monotone([0.1, 0.2, 0.4], [0.5, 0.4, 0.45]).status == "warn"
    assert sanity.check_large_eps(0.5, 0.0).status == "pass" and sanity.check_large_eps(0.5, 0.3).status == "warn"
    assert sanity.check_unbounded(1.0).status == "pass" and sanity.check_unbounded(0.5).status == "warn"
    assert sanity.check_square_vs_whitebox(1000, 0.5, 2).status == "pass"
    assert sanity.check_square_vs_whitebox(1000, 0.5, 3).status == "warn"
    trace = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, float("nan")], [3.0, 0.5, float("nan")]])
    c = sanity.check_loss_rises(trace, torch.tensor([False, False, True]))
    assert c.status == "warn" and abs(c.numbers["share_rising"] - 2 / 3) < 1e-6
    assert sanity.check_loss_rises(trace[:, [0, 2]], torch.tensor([False, True])).status == "pass"


def summary(*attacks: tuple[str, float, float]) -> dict:
    return {
        "n_samples": 1000,
        "attacks": [
            {"name": name, "label": f"{name}(eps={eps})", "params": {"eps": eps}, "targeted": False, "adv_top1": acc}
            for name, eps, acc in attacks
        ],
    }


def test_summary_checks() -> None:
    good = check_summary(summary(("fgsm", 0.1, 0.5), ("pgd", 0.1, 0.3), ("pgd", 0.2, 0.1), ("square", 0.1, 0.35)))
    assert good is not None and good["warnings"] == 0
    assert {c["name"] for c in good["checks"]} == {
        "iterative_vs_single_step",
        "square_vs_whitebox",
        "accuracy_monotone_in_eps",
    }
    bad = check_summary(summary(("fgsm", 0.1, 0.2), ("pgd", 0.1, 0.3), ("pgd", 0.2, 0.4), ("square", 0.1, 0.1)))
    assert bad is not None and bad["warnings"] == 3
    assert check_summary(summary(("pgd", 0.1, 0.3))) is None
    json.dumps(bad)


def run_of(n: int, **broken: set[int]) -> tuple[dict, dict]:
    """A summary and per-sample records of untargeted attacks at eps 0.1; ``broken`` = name -> broken indices."""
    attacks, records = [], {}
    for name, idx in broken.items():
        attacks.append(
            {"id": name, "name": name, "label": name, "params": {"eps": 0.1}, "targeted": False,
             "adv_top1": 1 - len(idx) / n}
        )  # fmt: skip
        records[name] = [{"index": i, "success": i in idx} for i in range(n)]
    return {"n_samples": n, "attacks": attacks}, records


def test_summary_checks_count_samples_when_records_are_given() -> None:
    n = 100
    # Square and PGD leave the same accuracy, but Square's five breaks are samples PGD left standing.
    pgd, square = set(range(0, 50)), set(range(5, 55))
    totals, records = run_of(n, fgsm=set(range(30)), pgd=pgd, square=square)
    assert statuses_of(check_summary(totals))["square_vs_whitebox"] == "pass"  # totals cannot tell
    per_sample = check_summary(totals, records)
    assert statuses_of(per_sample)["square_vs_whitebox"] == "warn"
    assert _numbers(per_sample, "square_vs_whitebox")["broken_only_by_square"] == 5
    # A suite weaker than a plain attack of the same run, per sample and in total.
    totals, records = run_of(n, fgsm=set(range(40)), pgd=set(range(60)), suite_strong=set(range(10, 60)))
    assert statuses_of(check_summary(totals)) == {"iterative_vs_single_step": "pass", "suite_is_worst_case": "warn"}
    per_sample = check_summary(totals, records)  # the ten it missed are FGSM's too: both checks see them
    assert statuses_of(per_sample) == {"iterative_vs_single_step": "warn", "suite_is_worst_case": "warn"}
    assert _numbers(per_sample, "suite_is_worst_case")["missed_by_suite"] == 10
    assert _numbers(per_sample, "iterative_vs_single_step")["broken_only_by_fgsm"] == 10
    # The suite as worst case: every sample another attack broke, and more.
    totals, records = run_of(n, fgsm=set(range(40)), pgd=set(range(60)), suite_strong=set(range(70)))
    assert all(c["status"] == "pass" for c in check_summary(totals, records)["checks"])


def statuses_of(result: dict | None) -> dict[str, str]:
    assert result is not None
    return {c["name"]: c["status"] for c in result["checks"]}


def _numbers(result: dict | None, name: str) -> dict:
    assert result is not None
    return next(c["numbers"] for c in result["checks"] if c["name"] == name)


@pytest.mark.parametrize("name", ["fmnist_cnn_pgd", "fmnist_cnn_standard"])
def test_the_shipped_models_pass_every_check(name: str) -> None:
    """The other way round from the masking model: advlab's own trained models show no sign of gradient masking
    (on 100 Fashion-MNIST test images, eps 0.1)."""
    from advlab.data import fashion_mnist as fm
    from advlab.models.small import load_builtin

    if not (fm.SYSTEM_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed: {fm.HOW_TO_GET}")
    images, labels = fm.load_fashion_mnist("test")
    x, y = fm.to_float_images(images)[:1000:10], labels[:1000:10]
    model = load_builtin(name)
    checks = sanity_checks(model, x, y, 0.1, seed=0, square_queries=300)
    assert all(c.status == "pass" for c in checks), [c for c in checks if c.status != "pass"]
