"""The report of any finished run directory (``advlab report RUN_DIR``, ``advlab eval --report``).

Built from the run's files only (run.json, summary.json, the per-sample records): what was run and how the
samples were chosen, one row per attack with 95% Wilson intervals and sample counts
(:mod:`advlab.evaluate.intervals`), each suite's stages, the gradient-masking checks, per-class accuracy, and
then :func:`~advlab.report.summary.summary_report`'s common sections (settings, provenance). Times come from
the records, so re-rendering a report never changes the run time it states.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluate.claim import robust_per_threat_model
from ..evaluate.compare import FinishedRun, load_run
from ..evaluate.intervals import fmt_interval, proportion
from ..evaluate.saved import load_examples
from ..evaluate.summary import published_for, published_text, summary_attack_norm
from ..numbers import format_number
from .document import Figure, Report, Section, Table
from .plots import panel_png
from .summary import summary_report, write_report


def sampling_sentence(data: Mapping[str, Any], n: int) -> str:
    """Exactly how the attacked samples were chosen, from the run's data description."""
    parts = []
    if data.get("subset"):
        parts.append(f"--subset {data['subset']}: correctly classified images of classes chosen by the model")
    if data.get("sample") is not None:
        parts.append(f"--sample {data['sample']}: a seeded random sample, stratified by class (see the data line)")
    if data.get("limit") is not None:
        parts.append(f"--limit {data['limit']}: the first {data['limit']} in the data's order (not a random sample)")
    if not parts:
        parts.append("every sample of the data, in its order")
    return f"{n} samples attacked; " + "; then ".join(parts)


def about_section(run: FinishedRun) -> Section:
    """What was run, on what, and how the samples were chosen."""
    s, cfg = run.summary, run.config
    m, d = s["model"], s["data"]
    n = s["clean"]["n"]
    written = (run.path / "summary.json").stat().st_mtime
    items = [
        ("model", f"{m.get('name')} (weights sha256 {m.get('state_dict_sha256')})"),
        ("data", f"{d.get('source')} — {d.get('provenance', '')}"),
        ("how the samples were chosen", sampling_sentence(d, n)),
        ("unreadable images", str(s.get("n_unreadable"))),
        ("seed", f"{s.get('seed')} (targets and random starts, per sample index)"),
        ("device", str(cfg.get("device_type"))),
        ("model preparation", "yes" if (cfg.get("prepare") or {}).get("enabled") else "no (attacked as given)"),
        (
            "compute time",
            f"{s['time_s']:.1f} s: the attacks' time from the records, summed over every invocation of the run "
            "(re-rendering the report does not change it)",
        ),
        ("summary written", _dt.datetime.fromtimestamp(written, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("intervals", "95% Wilson score intervals with the sample count n (advlab.evaluate.intervals says why)"),
    ]
    pub = m.get("published")
    if pub:  # issue 17: RobustBench's own number for this model, with where it was copied from
        items.append(
            (
                "RobustBench published",
                f"AutoAttack robust accuracy {pub['autoattack_acc']}%, clean {pub['clean_acc']}% at eps {pub['eps']} "
                f"({pub.get('architecture', '')}, RobustBench's full test set); source: {pub['source']}",
            )
        )
    return Section("About this run", items=items, id="about")


NORM_NAMES = {"l0": "L0", "l1": "L1", "l2": "L2", "linf": "Linf"}
RESULT_COLUMNS = [
    "attack", "clean top-1", "robust top-1", "robust top-5", "success", "n", "median, its norm", "median L2",
    "median Linf",
]  # fmt: skip


def results_table(summary: Mapping[str, Any]) -> Table:
    """One row per attack: clean and robust top-1/top-5 and success with 95% intervals, n, distances."""
    rows = []
    published = bool((summary.get("model") or {}).get("published"))
    for a in summary["attacks"]:
        ci = a.get("ci95") or {}
        succ = a.get("norms_successful") or {}
        pub = published_for(summary.get("model"), a)
        l2, linf = (succ.get("l2") or {}).get("median"), (succ.get("linf") or {}).get("median")
        norm = summary_attack_norm(a)
        own = None if norm is None else (succ.get(norm) or {}).get("median")
        rows.append(
            [
                a["id"],
                fmt_interval(ci.get("clean_top1")),
                fmt_interval(ci.get("adv_top1")) + (f" ({published_text(pub)})" if pub else ""),
                fmt_interval(ci.get("adv_top5")),
                fmt_interval(ci.get("success_rate")),
                str(a["n"]),
                "n/a" if norm is None or own is None else f"{NORM_NAMES[norm]} {own:.{10 if norm == 'l0' else 4}g}",
                "n/a" if l2 is None else f"{l2:.4f}",
                "n/a" if linf is None else f"{linf:.4f}",
            ]
        )
    return Table(
        "Every attack, with 95% intervals",
        RESULT_COLUMNS,
        rows,
        "Percentages with their 95% Wilson score interval over n samples (success over the eligible samples). "
        "Medians over the successful examples (pixel units): in the norm the attack works in (L0: changed "
        "coordinates; n/a without successes, for an attack this advlab does not know, or where the run's records do "
        "not carry that norm), and in L2 and Linf."
        + (
            " In brackets after robust top-1, for attacks in the threat model RobustBench evaluated: its published "
            "AutoAttack accuracy on the full test set (source under About this run)."
            if published
            else ""
        ),
        id="results-table",
    )


def stage_tables(summary: Mapping[str, Any]) -> list[Table]:
    """Per suite: the robust top-1 accuracy left after each stage (AutoAttack's running accuracy)."""
    tables = []
    for a in summary["attacks"]:
        if not a.get("stages"):
            continue
        rows = [
            [st["name"], st.get("description", ""), str(st["broken"]), fmt_interval(st.get("robust_after_ci95"))]
            for st in a["stages"]
        ]
        tables.append(
            Table(
                f"{a['id']}: robust accuracy after each stage",
                ["stage", "what it does", "broken", "robust top-1 after"],
                rows,
                id=f"stages-{len(tables)}",
            )
        )
    return tables


def per_class_table(records: Mapping[str, Sequence[Mapping[str, Any]]], attacks: Sequence[Mapping[str, Any]]) -> Table:
    """Clean top-1 accuracy per true class and, per threat model (norm, eps) of the run, the worst-case robust
    top-1 (:func:`advlab.evaluate.claim.robust_per_threat_model`: the claim's rule). One worst case over every
    attack would mix budgets and norms, and a minimal-norm attack, which breaks every sample at some size, would
    make it 0 everywhere."""
    clean: dict[int, dict[int, bool]] = {}
    for a in attacks:
        for r in records.get(str(a["id"]), []):
            c = int(r["label"])
            clean.setdefault(c, {})[int(r["index"])] = r["clean_top5"][0] == c
    models = robust_per_threat_model(attacks, records)
    label_of = {i: c for c, samples in clean.items() for i in samples}
    rows = []
    for c in sorted(clean):
        n = len(clean[c])
        row = [str(c), str(n), fmt_interval(proportion(sum(clean[c].values()), n))]
        for tm in models:
            mine = [ok for i, ok in tm.robust.items() if label_of.get(i) == c]
            row.append(fmt_interval(proportion(sum(mine), len(mine))) if mine else "n/a")
        rows.append(row)
    return Table(
        "Accuracy per class",
        ["class", "n", "clean top-1", *(f"robust top-1, {tm.norm} eps {format_number(tm.eps)}" for tm in models)],
        rows,
        "95% Wilson intervals. Robust per threat model (norm, eps): a sample counts as robust only if no untargeted "
        "attack of that norm at that eps or a smaller one changed its top-1 and no minimal-norm attack of that "
        "norm found an adversarial point within eps (the claim's rule, advlab verify --claim).",
        id="per-class",
    )


def uint8_table(summary: Mapping[str, Any]) -> Table | None:
    """Per attack with saved examples: how its successful examples fare once rounded to 8-bit images."""
    rows = []
    for a in summary["attacks"]:
        u = a.get("uint8")
        if not u:
            continue
        k = u["successful"]
        kept = k - u["uint8_out_of_ball"]  # the roundings inside the ball: the only ones re-checked
        rows.append(
            [
                a["id"],
                str(k),
                f"{u['uint8_out_of_ball']} of {k}",
                fmt_interval(proportion(u["uint8_success"], kept)) if kept else "n/a",
                fmt_interval(proportion(u["uint8_in_ball_success"], k)) if k else "n/a",
            ]
        )
    if not rows:
        return None
    return Table(
        "Saved adversarial examples as 8-bit images",
        [
            "attack",
            "successful",
            "uint8 outside the eps-ball",
            "uint8 inside the ball still succeeds",
            "nearest uint8 in ball succeeds",
        ],
        rows,
        "uint8 = round(255 x_adv), the image a user would save; rounding moves each pixel by up to 1/510 and can "
        "cross the decision boundary or leave the eps-ball. The nearest uint8 point inside the ball (the rounding "
        "itself where it stays inside) is saved too (adversarial/*.safetensors) and re-checked; a rounding outside "
        "the ball is no example of the threat model and is not. advlab verify RUN_DIR re-checks every saved example "
        "with forward passes.",
        id="uint8",
    )


def examples_section(run: FinishedRun, dataset: Any, class_names: Sequence[str], per_side: int = 2) -> Section:
    """Panels of the least and most perturbed successful examples (by L2) of the attack with the most saved
    successful examples: original, amplified perturbation and adversarial, with top-5 before and after."""
    section = Section("Examples", id="examples")
    best: tuple[int, str] | None = None
    for aid in run.attack_ids:
        k = sum(bool(r["success"] and r.get("adversarial")) for r in run.records.get(aid, []))
        if k and (best is None or k >= best[0]):
            best = (k, aid)
    if best is None or dataset is None:
        section.paragraphs.append(
            "No panel: the run saved no successful adversarial example (advlab eval --save-adversarial) or its "
            "data could not be reopened."
        )
        return section
    aid = best[1]
    hits = sorted((r for r in run.records[aid] if r["success"] and r.get("adversarial")), key=lambda r: r["l2"])
    chosen = hits[:per_side] + [r for r in hits[-per_side:] if r not in hits[:per_side]]
    for r in chosen:
        saved = r["adversarial"]
        x_adv = load_examples(run.path / saved["file"])["x_adv"][int(saved["row"])]
        item = dataset[int(r["index"])]
        x = item[0].to(x_adv.dtype)
        which = "least" if r in hits[:per_side] else "most"
        png = panel_png(
            x,
            x_adv,
            (r["clean_top5"], r["clean_probs"]),
            (r["adv_top5"], r["adv_probs"]),
            class_names,
            title=f"{aid}, sample {r['index']}: one of the {which} perturbed successful examples",
            label=int(r["label"]),
            target=r["target"],
        )
        section.figures.append(
            Figure(
                f"example-{r['index']}.png",
                png,
                f"{aid}, sample {r['index']} ({which} perturbed): L2 {r['l2']:.4f}, Linf {r['linf']:.4f}",
                alt=f"sample {r['index']}: original, perturbation, adversarial",
            )
        )
    return section


def run_report(
    run_dir: str | Path,
    extra_sections: Sequence[Section] = (),
    *,
    dataset: Any = None,
    class_names: Sequence[str] = (),
    title: str | None = None,
    subtitle: str | None = None,
    about: Sequence[str] = (),
    settings: Sequence[tuple[str, str]] = (),
    info: Mapping[str, Any] | None = None,
    examples: bool = True,
) -> Report:
    """The report of a finished run directory (see the module docstring); with the run's ``dataset`` (reopened
    as the run opened it), also the panel of saved examples.

    A caller with more to say (the paper's reproduction, :mod:`advlab.paper.report`: "this report plus its
    paper-specific tables", issue 20) passes ``extra_sections`` (after the results), its own ``title`` and
    ``subtitle``, ``about`` paragraphs for "About this run", ``settings`` and ``info`` for the settings and
    provenance sections, and ``examples=False`` when it draws its own example panels."""
    run = load_run(run_dir)
    s = run.summary
    u8 = uint8_table(s)
    results = Section("Results", tables=[results_table(s), *stage_tables(s), *([u8] if u8 else [])], id="results")
    by_class = per_class_table(run.records, run.config.get("attacks", []))
    per_class = Section("Per class", tables=[by_class], id="per-class-section")
    intro = about_section(run)
    intro.paragraphs += list(about)
    panels = [examples_section(run, dataset, class_names)] if examples else []
    # The robustness curves (sweeps, minimal-norm distances) come from the summary: report.curves.
    sections = [intro, results, *extra_sections, per_class, *panels]
    return summary_report(s, title=title, subtitle=subtitle, sections=sections, settings=settings, info=info)


def write_run_report(
    run_dir: str | Path, out: str | Path | None = None, *, dataset: Any = None, class_names: Sequence[str] = ()
) -> Path:
    """Write ``report.html`` (self-contained), ``tables.md`` and the figures for a run directory; returns the
    HTML path."""
    report = run_report(run_dir, dataset=dataset, class_names=class_names)
    target = Path(out) if out is not None else Path(run_dir)
    write_report(target, report)
    return target / "report.html"
