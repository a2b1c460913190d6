"""Error bars and paired comparisons: Wilson intervals against scipy and statsmodels, the exact McNemar test
against the binomial distribution, intervals in summary.json and the CLI lines, and ``advlab compare``."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.cli import main
from advlab.evaluate import evaluate, make_spec, summary_line
from advlab.evaluate.compare import compare_runs
from advlab.evaluate.intervals import mcnemar_exact, proportion, wilson_interval
from advlab.evaluate.specs import SpecError

scipy_stats = pytest.importorskip("scipy.stats")
proportion_confint = pytest.importorskip("statsmodels.stats.proportion").proportion_confint

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_matches_scipy_and_statsmodels(kn):
    k, n = kn
    low, high = wilson_interval(k, n)
    ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    sm_low, sm_high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
    assert low == pytest.approx(sm_low, abs=1e-9) and high == pytest.approx(sm_high, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_interval_edges_and_bad_counts():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] > 0.2  # not Wald's width 0
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 0.8
    assert proportion(3, 0) is None and proportion(3, 12)["k"] == 3
    for k, n in [(-1, 5), (6, 5), (0, 0)]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson_interval(k, n)


def exact_two_sided(b: int, c: int) -> float:
    """The two-sided binomial test of b among b + c at 1/2, by summing every outcome no likelier than b."""
    m = b + c
    pmf = [Fraction(math.comb(m, i), 2**m) for i in range(m + 1)]
    return float(min(Fraction(1), sum(p for p in pmf if p <= pmf[b])))


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (1, 0), (3, 3), (0, 6), (2, 9), (12, 4), (25, 40), (0, 60)])
def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_samples(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(exact_two_sided(b, c), rel=1e-12)
    if b + c:
        assert p == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert p == mcnemar_exact(c, b)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 80), st.integers(0, 80))
def test_mcnemar_is_symmetric_and_falls_as_the_split_gets_more_lopsided(b, c):
    p = mcnemar_exact(b, c)
    assert 0 < p <= 1 and p == mcnemar_exact(c, b)
    if b > c:
        assert mcnemar_exact(b + 1, c) <= p  # one more discordant sample on the winning side: stronger evidence


@pytest.fixture(scope="module")
def runs(digits_model, tmp_path_factory):
    """Two runs on the same 48 digits (FGSM and PGD at one eps, a second PGD run), one on other digits."""
    model, x, y = digits_model
    root = tmp_path_factory.mktemp("runs")

    class Items:
        def __init__(self, lo: int, hi: int) -> None:
            self.lo, self.hi = lo, hi

        def __len__(self) -> int:
            return self.hi - self.lo

        def __getitem__(self, i: int):
            return x[self.lo + i], int(y[self.lo + i]), i

    def run(name: str, specs, lo: int = 0, source: str = "digits[:48]"):
        return evaluate(
            model, Items(lo, lo + 48), specs, out=root / name, batch_size=16, quiet=True, data_meta={"source": source}
        )

    both = run(
        "both", [make_spec("fgsm", {"eps": 0.1}, id="fgsm"), make_spec("pgd", {"eps": 0.1, "steps": 5}, id="pgd")]
    )
    pgd = run("pgd", [make_spec("pgd", {"eps": 0.1, "steps": 5}, id="pgd")])
    other = run("other", [make_spec("pgd", {"eps": 0.1, "steps": 5}, id="pgd")], lo=48, source="digits[48:96]")
    return root, both, pgd, other


def test_summary_holds_wilson_intervals_with_counts_and_the_line_quotes_them(runs):
    _, both, _, _ = runs
    summary = json.loads((both.run_dir / "summary.json").read_text())
    assert summary["intervals"] == {"confidence": 0.95, "method": "wilson"}
    for a in summary["attacks"]:
        ci = a["ci95"]["adv_top1"]
        k = sum(r["adv_top5"][0] == r["label"] for r in both.records[a["id"]])
        assert (ci["k"], ci["n"]) == (k, 48) and ci["rate"] == a["adv_top1"]
        assert (ci["low"], ci["high"]) == pytest.approx(wilson_interval(k, 48), abs=1e-15)
        succ = a["ci95"]["success_rate"]
        assert succ["n"] == a["n_eligible"] and succ["k"] == sum(r["success"] for r in both.records[a["id"]])
        line = summary_line(a)
        assert f"top-1 {100 * ci['rate']:.1f}% [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" in line
        assert "n=48" in line
    clean = summary["clean"]["ci95"]["top1"]
    assert clean["n"] == 48 and clean["low"] <= summary["clean"]["top1"] <= clean["high"]


def test_compare_two_attacks_of_one_run_counts_each_sample_once(runs):
    _, both, _, _ = runs
    paired, lines = compare_runs(both.run_dir, attack_a="fgsm", attack_b="pgd")
    fgsm = {r["index"] for r in both.records["fgsm"] if r["success"]}
    pgd = {r["index"] for r in both.records["pgd"] if r["success"]}
    assert (paired.both, paired.a_only, paired.b_only) == (len(fgsm & pgd), len(fgsm - pgd), len(pgd - fgsm))
    assert paired.n == 48 and paired.p_value == mcnemar_exact(len(fgsm - pgd), len(pgd - fgsm))
    assert any(line.startswith("exact McNemar test") for line in lines)
    same, _ = compare_runs(both.run_dir)  # a run of exactly two attacks needs no names
    assert same == paired


def test_compare_cli_on_two_runs_and_refusals(runs, capsys):
    root, both, pgd, other = runs
    code = main(["compare", str(both.run_dir), str(pgd.run_dir), "--attack-a", "pgd"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "by A only 0, by B only 0" in out and "p = 1" in out  # the same attack on the same samples
    bad = [
        ([str(pgd.run_dir), str(other.run_dir)], "attacked different samples (data differs in: source)"),
        ([str(both.run_dir)], None),  # fine: exactly two attacks
        ([str(both.run_dir), str(pgd.run_dir)], "holds 2 attacks; name one of: fgsm, pgd"),
        ([str(root / "missing"), str(pgd.run_dir)], "does not exist"),
        ([str(both.run_dir), "--attack-a", "cw", "--attack-b", "pgd"], "has no attack 'cw'"),
    ]
    for argv, needle in bad:
        code = main(["compare", *argv])
        _, err = capsys.readouterr()
        if needle is None:
            assert code == 0, err
        else:
            assert code == 2 and needle in err and err.count("\n") == 1, err


def test_compare_refuses_runs_whose_records_hold_other_samples(runs, tmp_path):
    _, _, pgd, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(pgd.run_dir, copy)
    first = sorted((copy / "records").rglob("*.jsonl"))[0]
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    rows[0]["label"] = (rows[0]["label"] + 1) % 10
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpecError, match="do not hold the same samples"):
        compare_runs(pgd.run_dir, copy)
