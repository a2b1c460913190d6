"""``advlab reproduce``: the experiment plan, the honest reading, and one end-to-end run with its report."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from advlab.evaluate import SpecError
from advlab.paper import (
    PAPER,
    Protocol,
    ReproduceOptions,
    build_experiment,
    prepare_inputs,
    reading,
    run_reproduce,
    std_scale,
)
from tests.conftest import IMAGENET_30x5
from tests.test_report import assert_renders_cleanly

# A small budget: the end-to-end test checks the plumbing, docs/benchmarks.md times the real protocol.
QUICK = dataclasses.replace(
    Protocol(), pgd_steps=2, curve_eps=(0.01, 0.1), curve_bim_steps=2, cw_steps=4, cw_search=1, strong="pgd",
    strong_steps=3, strong_restarts=1,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def test_experiment_plan_follows_the_paper():
    exp = build_experiment(Protocol(), std=0.5)
    assert exp.eps_pixel == {(1, "pixel"): 0.1, (1, "normalised"): 0.05, (2, "pixel"): 0.6, (2, "normalised"): 0.3}
    specs = {s.id: s for s in exp.specs}
    for (t, scale, row), sid in exp.table.items():
        spec = specs[sid]
        eps = exp.eps_pixel[(t, scale)]
        assert spec.params["eps"] == eps and not spec.targeted
        if row == "bim":
            steps = (1, 2)[t - 1]  # 1 step in Table 1, 2 in Table 2, as in the paper
            assert spec.params["steps"] == steps and spec.params["alpha"] == eps / steps
        if row == "pgd":
            assert spec.params["steps"] == 6 and spec.params["alpha"] == pytest.approx(2.5 * eps / 6)
        if row == "strong":
            assert spec.only_unbroken == tuple(exp.table[(t, scale, r)] for r in ("fgsm", "bim", "pgd"))
    assert {k for k, _ in exp.curve} == {"fgsm", "bim"}
    assert all(specs[sid].targeted and specs[sid].target == "random" for sid in exp.curve.values())
    cw = specs[exp.cw]
    assert cw.name == "cw_l2" and cw.targeted and cw.target == "random"


def test_std_scale_is_the_models_std():
    class M(torch.nn.Module):
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    assert std_scale(M()) == pytest.approx(0.226)
    assert std_scale(torch.nn.Linear(2, 2)) == 1.0


def numbers(fgsm1: float, pgd1: float, fgsm2: float | None = None, strong: float = 0.0) -> dict:
    """Table numbers with the given top-1 (fractions) for FGSM, PGD and the strong column, and fixed others."""
    table = {
        "natural": [1.0, 1.0], "fgsm": [fgsm1, 0.2], "bim": [0.05, 0.2], "pgd": [pgd1, 0.1], "strong": [strong, 0.1]
    }  # fmt: skip
    t2 = copy.deepcopy(table)
    if fgsm2 is not None:
        t2["fgsm"][0] = fgsm2
    return {
        "table1": {"eps": 0.1, "pixel": table, "normalised": table, "paper": PAPER["table1"]},
        "table2": {"eps": 0.6, "pixel": t2, "normalised": t2, "paper": PAPER["table2"]},
        "table3": {"target_top1": 1.0, "target_top5": 1.0, "misclassified_top1": 1.0, "misclassified_top5": 0.5},
        "figure6": {"fgsm": {"0.01": {"true_top5": 0.8}}, "bim": {"0.01": {"true_top5": 0.2}}},
    }


def test_reading_says_what_the_numbers_show():
    strong_pgd = " ".join(reading(numbers(0.1, 0.0), Protocol(), "m", 10, 0.5))
    assert "at least as strong as FGSM in every setting" in strong_pgd and "weak configuration" in strong_pgd
    weak_pgd = " ".join(reading(numbers(0.0, 0.3), Protocol(), "m", 10, 0.5))
    assert "as in the paper, PGD-6 leaves more top-1 accuracy than FGSM" in weak_pgd
    non_monotone = " ".join(reading(numbers(0.0, 0.0, fgsm2=0.2), Protocol(), "m", 10, 0.5))
    assert "FGSM is not monotone in eps" in non_monotone
    assert "at 1 of 1 eps values" in strong_pgd  # Figure 6: BIM below FGSM
    # The strong column's reading follows its numbers, and names the run's own PGD steps.
    assert "m keeps essentially no robust accuracy (at most 0.0% top-1)" in strong_pgd
    assert "the samples PGD-6 missed are not robust" in weak_pgd
    robust = " ".join(
        reading(numbers(0.5, 0.6, strong=0.55), dataclasses.replace(Protocol(), pgd_steps=9), "m", 10, 0.5)
    )
    assert "m keeps up to 55.0% top-1 under the strongest attacks" in robust and "essentially no" not in robust
    assert "PGD-9 leaves more top-1 accuracy" in robust and "does not break them all either" in robust


def test_reproduce_end_to_end_on_two_images(tmp_path):
    out = tmp_path / "run"
    opts = ReproduceOptions(out=out, limit=2, quiet=True, protocol=QUICK, command="test")
    summary = run_reproduce(opts)
    for name in ("report.html", "tables.md", "figure6.png", "figure2_fgsm.png", "summary.json", "run.json"):
        assert (out / name).is_file(), name
    assert summary["complete"] and summary["n_samples"] == 2 and summary["clean"]["top1"] == 1.0
    data = summary["reproduce"]
    assert data["paper"]["table1"]["fgsm"] == [2.6, 19.3] and data["run"]["notes"][0].startswith("No --model given")
    by_id = {a["id"]: a for a in summary["attacks"]}
    t1 = data["tables"]["table1"]
    assert t1["pixel"]["fgsm"] == [by_id["t1-pixel-eps0.1-fgsm"]["adv_top1"], by_id["t1-pixel-eps0.1-fgsm"]["adv_top5"]]
    assert t1["eps_pixel"]["normalised"] == pytest.approx(0.1 * 0.5)  # the default model's std is 0.5
    for scale in ("pixel", "normalised"):  # the strong column is the per-sample worst case
        rows = t1[scale]
        assert rows["strong"][0] <= min(rows[r][0] for r in ("fgsm", "bim", "pgd"))
    assert json.loads((out / "summary.json").read_text())["reproduce"]["tables"] == data["tables"]
    md = (out / "tables.md").read_text()
    assert "| FGSM | 2.6 | 19.3 |" in md and "Table 3: targeted Carlini-Wagner L2" in md and "default sample" in md
    figures = 3 if (out / "figure4_cw.png").exists() else 2  # CW with 4 steps may fool no image
    figures += len(summary.get("robustness") or {})  # one robustness curve per norm swept (the eps sweeps)
    # Issue 20: the general report of the run (every attack with intervals, per class, how the samples were
    # chosen, compute time from the records) plus the paper's tables and figures.
    for text in ("Every attack, with 95% intervals", "| class | n | clean top-1 |", "how the samples were chosen"):
        assert text in md, text
    page = assert_renders_cleanly(out / "report.html", tables=md.count("\n|---|"), images=figures)
    for text in ("Table 1", "Table 2", "Table 3", "Figure 6", "Reading", "paper top-1", "advlab", "run time"):
        assert text in page.text, text
    # The same command again finds every batch on disk and only rebuilds the report.
    records = sorted(p.stat().st_mtime_ns for p in (out / "records").rglob("*.jsonl"))
    again = run_reproduce(opts)
    assert sorted(p.stat().st_mtime_ns for p in (out / "records").rglob("*.jsonl")) == records
    assert again["reproduce"]["tables"] == data["tables"]
    # Other settings into the same folder are refused, or with replace (as `make demo` runs) start it over.
    with pytest.raises(SpecError, match="holds a different run"):
        run_reproduce(dataclasses.replace(opts, limit=1))
    one = run_reproduce(dataclasses.replace(opts, limit=1, replace=True))
    assert one["complete"] and one["n_samples"] == 1
    assert all(len(p.read_text().splitlines()) == 2 for p in (out / "records").rglob("*.jsonl"))


def test_full_protocol_data_goes_through_the_30x5_selection():
    if not (IMAGENET_30x5 / "labels.csv").exists():
        pytest.skip(f"the shared 30 x 5 set is missing at {IMAGENET_30x5}: see ../shared/data/README.md")
    _model, data, model_meta, data_meta, notes = prepare_inputs(ReproduceOptions(data=str(IMAGENET_30x5), quiet=True))
    assert not any("default sample" in n for n in notes)
    assert data_meta["selection"]["classes"] == 30 and data_meta["images_in_source"] == 150
    assert 100 <= len(data) <= 150 and len(set(data.classes)) == 30  # the correctly classified of the 150
    assert model_meta["name"] == "efficientnet_lite0" and "select_subset" in data_meta["provenance"]
    assert isinstance(Path(str(IMAGENET_30x5)), Path)
