"""advlab.report's general builder: any run's summary.json rendered as a report, with nothing of the paper."""

from __future__ import annotations

import json

import pytest

from advlab.errors import MissingInputError, UsageError
from advlab.evaluate import evaluate, make_spec
from advlab.report import render_markdown, render_run, summary_report

pytestmark = pytest.mark.usefixtures("one_thread")


class Items:
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def test_any_run_renders_with_its_attacks_checks_and_provenance(digits_model, tmp_path):
    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": 0.1}, id="fgsm"), make_spec("pgd", {"eps": 0.1, "steps": 3}, id="pgd")]
    run = tmp_path / "run"
    evaluate(model, Items(x[:24], y[:24]), specs, out=run, batch_size=12, quiet=True, model_meta={"name": "digits"})
    summary = json.loads((run / "summary.json").read_text())
    report = render_run(run)
    html, md = (run / "report.html").read_text(), (run / "tables.md").read_text()
    assert md == render_markdown(report) and html.startswith("<!DOCTYPE html>")
    assert report.title == "Evaluation of digits (2 attacks, 24 images)"
    assert [s.id for s in report.sections] == ["sanity", "settings", "provenance"]
    for a in summary["attacks"]:  # one row per attack, with its numbers
        ci = a["ci95"]["adv_top1"]
        assert f"| {a['id']} | {a['label']} | {100 * a['adv_top1']:.1f} [{100 * ci['low']:.1f}, " in md
    assert "iterative_vs_single_step" in md  # the summary's sanity checks
    assert f"**run fingerprint**: {summary['fingerprint']}" in md
    assert "paper" not in md.lower() and "Table 1" not in md


def test_a_caller_adds_its_sections_before_the_common_ones(digits_model, tmp_path):
    from advlab.report import Section

    model, x, y = digits_model
    result = evaluate(model, Items(x[:8], y[:8]), [make_spec("fgsm", {"eps": 0.1})], quiet=True)
    mine = Section("Mine", ["what this run is for"], id="mine")
    report = summary_report(result.summary, title="T", sections=[mine], settings=[("eps", "0.1")])
    assert report.title == "T" and [s.id for s in report.sections] == ["mine", "sanity", "settings", "provenance"]
    assert ("eps", "0.1") in report.sections[2].items


def test_rendering_a_folder_without_a_finished_run_is_a_usage_error(tmp_path):
    with pytest.raises(MissingInputError, match=r"summary\.json does not exist") as err:
        render_run(tmp_path)
    assert isinstance(err.value, UsageError)


def test_run_report_states_intervals_sampling_stages_and_classes_and_renders_in_chromium(
    digits_model, tmp_path, capsys
):
    from advlab.cli import main
    from advlab.evaluate.intervals import fmt_interval
    from tests.test_report import assert_renders_cleanly

    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": 0.1}, id="fgsm"), make_spec("suite_fast", {"eps": 0.1}, id="fast")]
    run = tmp_path / "run"
    data_meta = {"source": "digits", "provenance": "sklearn digits", "limit": 24}
    evaluate(model, Items(x[:24], y[:24]), specs, out=run, batch_size=12, quiet=True, data_meta=data_meta)
    summary = json.loads((run / "summary.json").read_text())
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    md = (run / "tables.md").read_text()
    for a in summary["attacks"]:
        assert f"| {a['id']} | {fmt_interval(a['ci95']['clean_top1'])} | {fmt_interval(a['ci95']['adv_top1'])} |" in md
    assert "the first 24 in the data's order (not a random sample)" in md
    assert f"{summary['time_s']:.1f} s: the attacks' time from the records" in md
    assert "fast: robust accuracy after each stage" in md and "| apgd-ce |" in md
    classes = sorted({int(v) for v in y[:24]})
    assert all(f"\n| {c} | " in md for c in classes)
    assert "iterative_vs_single_step" in md
    # The rendered page: every table, no request leaves the machine, no console error.
    tables = md.count("\n|---|")
    page = assert_renders_cleanly(run / "report.html", tables=tables, images=0)
    assert "How the samples were chosen" in page.text or "how the samples were chosen" in page.text
    code = main(["report", str(tmp_path / "nothing")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    afile = tmp_path / "afile"  # --out through a regular file: one line, exit 2 (was a NotADirectoryError traceback)
    afile.write_text("")
    assert main(["report", str(run), "--out", str(afile / "x")]) == 2
    err = capsys.readouterr().err
    assert err == f"advlab: error: cannot create the folder {afile / 'x'} for --out: Not a directory\n", err


def test_the_per_class_table_has_one_robust_column_per_threat_model(digits_model, tmp_path):
    # Review (session 20): one worst case over every untargeted attack mixed eps and norms, and a minimal-norm
    # attack (which breaks every sample at some size) made it 0% in every class.
    from advlab.evaluate.claim import robust_per_threat_model
    from advlab.evaluate.compare import load_run
    from advlab.evaluate.intervals import fmt_interval, proportion
    from advlab.report.run import per_class_table

    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": 0.2}, id="big"), make_spec("pgd", {"eps": 0.1, "steps": 3}, id="small"),
             make_spec("minimal", {"norm": "linf", "steps": 5}, id="m")]  # fmt: skip
    run_dir = tmp_path / "run"
    evaluate(model, Items(x[:40], y[:40]), specs, out=run_dir, batch_size=20, quiet=True)
    run = load_run(run_dir)
    table = per_class_table(run.records, run.config["attacks"])
    assert table.columns[3:] == ["robust top-1, linf eps 0.1", "robust top-1, linf eps 0.2"]
    # Recomputed from the records: robust at eps where the minimal distance is above eps (and x was classified
    # correctly) and no attack of eps <= this one changed the top-1.
    label = {int(r["index"]): int(r["label"]) for r in run.records["big"]}
    robust = {}
    for eps, ids in ((0.1, ["small"]), (0.2, ["big", "small"])):
        keep = {int(r["index"]) for r in run.records["m"] if r["clean_top5"][0] == r["label"]
                and r["distance"] is not None and r["distance"] > eps}  # fmt: skip
        for aid in ids:
            keep &= {int(r["index"]) for r in run.records[aid] if r["adv_top5"][0] == r["label"]}
        robust[eps] = keep
    for row in table.rows:
        c = int(row[0])
        n = sum(1 for i in label if label[i] == c)
        for eps, cell in zip((0.1, 0.2), row[3:], strict=True):
            assert cell == fmt_interval(proportion(sum(label[i] == c for i in robust[eps]), n)), (c, eps)
    assert robust[0.1] and robust[0.1] >= robust[0.2]  # not 0 everywhere; the smaller eps's evidence is a subset
    assert robust_per_threat_model(run.config["attacks"], run.records)[1].robust == {i: i in robust[0.2] for i in label}


def test_run_report_draws_accuracy_against_eps_for_sweeps_and_minimal_norm_attacks(digits_model, tmp_path):
    from advlab.report import run_report, write_run_report
    from tests.test_report import assert_renders_cleanly

    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": e}, id=f"fgsm-{e}") for e in (0.05, 0.1, 0.2)]
    specs.append(make_spec("fmn", {"norm": "linf", "steps": 10}, id="fmn"))
    run = tmp_path / "run"
    evaluate(model, Items(x[:16], y[:16]), specs, out=run, batch_size=16, quiet=True)
    report = run_report(run)
    (curves,) = [s for s in report.sections if s.id == "robustness"]
    assert [f.name for f in curves.figures] == ["robustness_linf.png"]  # the sweep and FMN's curve, one figure
    (table,) = [t for t in curves.tables if t.title == "Median eps* and AUC (linf)"]
    sweep = json.loads((run / "summary.json").read_text())["robustness"]["linf"]["sweeps"][0]
    rows = {row[0]: row for row in table.rows}
    assert set(rows) == {"fmn", "fgsm (sweep, per sample)"}
    median, auc = sweep["curve"]["median_eps"], sweep["curve"]["auc"]
    assert rows["fgsm (sweep, per sample)"][3:5] == ["n/a" if median is None else f"{median:.4g}", f"{auc:.4g}"]
    write_run_report(run)
    md = (run / "tables.md").read_text()
    assert_renders_cleanly(run / "report.html", tables=md.count("\n|---|"), images=1)


def test_a_summary_whose_sweeps_have_no_per_sample_curve_still_draws_its_points(digits_model, tmp_path):
    """Summaries written before sweeps carried a per-sample curve: the points are drawn, no table row."""
    from advlab.report.curves import robustness_section

    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": e}, id=f"fgsm-{e}") for e in (0.05, 0.1)]
    summary = evaluate(model, Items(x[:8], y[:8]), specs, batch_size=8, quiet=True, prepare=False).summary
    del summary["robustness"]["linf"]["sweeps"][0]["curve"]
    section = robustness_section(summary)
    assert section is not None and [f.name for f in section.figures] == ["robustness_linf.png"]
    assert section.tables == []


def test_a_robustbench_models_published_autoattack_number_stands_next_to_advlabs(digits_model, tmp_path):
    # Issue 17: a run whose model carries RobustBench's published row shows that AutoAttack accuracy next to
    # advlab's robust top-1, for the attack in RobustBench's threat model (Linf 8/255) and not the other one.
    from advlab.evaluate import summary_line
    from advlab.evaluate.intervals import fmt_interval
    from advlab.models import published_result
    from advlab.report import render_markdown, run_report

    name = "robustbench:cifar10/Linf/Wong2020Fast"
    published = published_result(name)
    assert published is not None and published["eps"] == "8/255"
    model, x, y = digits_model
    specs = [make_spec("fgsm", {"eps": "8/255"}, id="at-8"), make_spec("fgsm", {"eps": 0.1}, id="at-0.1")]
    run = tmp_path / "run"
    meta = {"name": name, "published": published}
    evaluate(model, Items(x[:12], y[:12]), specs, out=run, batch_size=12, quiet=True, model_meta=meta)
    summary = json.loads((run / "summary.json").read_text())
    at8, at01 = summary["attacks"]
    said = f"(RobustBench published AutoAttack {published['autoattack_acc']}%)"
    line = summary_line(at8, summary["model"])
    assert line.startswith(f"at-8 = fgsm(eps=8/255): top-1 {fmt_interval(at8['ci95']['adv_top1'])} {said} top-5 ")
    assert "RobustBench" not in summary_line(at01, summary["model"]) and "RobustBench" not in summary_line(at8)
    md = render_markdown(run_report(run))
    ci8, ci01 = at8["ci95"], at01["ci95"]
    assert f"| at-8 | {fmt_interval(ci8['clean_top1'])} | {fmt_interval(ci8['adv_top1'])} {said} |" in md
    assert f"| at-0.1 | {fmt_interval(ci01['clean_top1'])} | {fmt_interval(ci01['adv_top1'])} |" in md
    assert f"AutoAttack robust accuracy {published['autoattack_acc']}%, clean {published['clean_acc']}%" in md
    assert published["source"] in md


def test_the_results_table_gives_each_attacks_median_in_the_norm_it_works_in(digits_model, tmp_path):
    # An L1 or L0 attack's L2 and Linf medians say little of its budget: the table also gives the median of the
    # successful examples in the attack's own norm (records carry l0, l1, l2 and linf).
    import statistics

    from advlab.report import render_markdown, run_report

    model, x, y = digits_model
    specs = [
        make_spec("pgd", {"eps": 6.0, "norm": "l1", "steps": 5}, id="l1"),
        make_spec("pgd", {"eps": 12, "norm": "l0", "steps": 5}, id="l0"),
        make_spec("fgsm", {"eps": 0.2}, id="linf"),
    ]
    run = tmp_path / "run"
    result = evaluate(model, Items(x[:24], y[:24]), specs, out=run, batch_size=24, quiet=True)
    md = render_markdown(run_report(run))
    for aid, norm, name in (("l1", "l1", "L1"), ("l0", "l0", "L0"), ("linf", "linf", "Linf")):
        sizes = [r[norm] for r in result.records[aid] if r["success"]]
        assert sizes, aid
        row = next(line for line in md.splitlines() if line.startswith(f"| {aid} | "))
        assert f"| {name} {statistics.median(sizes):.4g} |" in row, row
