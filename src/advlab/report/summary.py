"""A report of any run's summary: the table of every attack, the sanity checks and the provenance.

:func:`summary_report` builds a :class:`~advlab.report.document.Report` from a summary (summary.json as
:func:`advlab.evaluate.evaluate` writes it) with the sections every run has; a caller with more to say (the
paper's reproduction, :mod:`advlab.paper.report`) passes its own sections before them and its settings.
:func:`render_run` renders a finished run directory; :func:`write_report` writes report.html, tables.md and
the figures.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluate.records import atomic_write_text
from .curves import robustness_section
from .document import Report, Section, Table, render_html, render_markdown


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal, ``n/a`` for None."""
    return "n/a" if v is None else f"{100 * v:.1f}"


def pct_ci(attack: Mapping[str, Any], key: str) -> str:
    """A rate of an attack as a percentage with its 95% interval where the summary has one (``ci95``)."""
    ci = (attack.get("ci95") or {}).get(key)
    if ci is None:
        return pct(attack.get(key))
    return f"{100 * ci['rate']:.1f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"


def attacks_table(summary: Mapping[str, Any]) -> Table:
    rows = []
    for a in summary["attacks"]:
        l2 = (a.get("norms_successful") or {}).get("l2", {}).get("mean")
        linf = a["norms"]["linf"]["max"]
        rows.append(
            [
                a["id"],
                a["label"],
                pct_ci(a, "adv_top1"),
                pct_ci(a, "adv_top5"),
                pct_ci(a, "success_rate"),
                "n/a" if l2 is None else f"{l2:.3f}",
                "n/a" if linf is None else f"{linf:.4f}",
                f"{a['time_s']:.1f}",
            ]
        )
    return Table(
        "Every attack of the run",
        ["id", "attack and parameters", "top-1", "top-5", "success", "mean L2 of successes", "max Linf", "time (s)"],
        rows,
        "Percentages with their 95% Wilson interval where the run recorded one. "
        "success: untargeted, the top-1 is not the true class; targeted, the top-1 is the target. Norms in pixel "
        "units: mean L2 over the successful examples (a suite keeps the clean image where it fails, a PGD its last "
        "try, so a mean over all samples would not compare), max Linf over all samples. Time: compute time of the "
        "attack (summed over batches, resumed runs included).",
        id="all-attacks",
    )


def provenance_items(summary: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Where the numbers come from: model, data, seed, software, machine, time, command and fingerprint.

    ``info`` describes the invocation that rendered the report (``advlab_version``, ``python``, ``torch``,
    ``machine``, ``wall_s``, ``command``); without it, what the summary says is used and the rest left out.
    """
    m, d = summary["model"], summary["data"]
    info = dict(info or {})
    items = [
        ("model", f"{m.get('name')} — {m.get('source', '')}"),
        ("model weights sha256", str(m.get("state_dict_sha256", ""))),
    ]
    if "mean" in m:
        items.append(
            (
                "preprocessing",
                f"resize {m.get('resize_size')}, crop {m.get('crop_size')}, {m.get('interpolation')}, "
                f"mean {m.get('mean')}, std {m.get('std')} (inside the model; attacks work on [0, 1] pixels)",
            )
        )
    items.append(("data", f"{d.get('source')} — {d.get('provenance', '')}"))
    attacked = str(summary["clean"]["n"])
    if "images_in_source" in d:
        attacked += f" (of {d['images_in_source']} in the source; {d.get('unreadable_in_source', 0)} unreadable)"
    items += [
        ("images attacked", attacked),
        ("seed", f"{summary['seed']} (targets and random starts, per sample index)"),
        ("advlab", str(info.get("advlab_version", summary.get("advlab_version")))),
    ]
    if "python" in info:
        items.append(("software", f"Python {info['python']}, torch {info['torch']}, {platform.system()}"))
    if "machine" in info:
        items.append(("machine", str(info["machine"])))
    # Compute time comes from the records, so a report rebuilt later states the run's time, not its own.
    items.append(
        (
            "compute time",
            f"{summary['time_s']:.0f} s, the attacks' time from the records (summed over all invocations of a "
            "resumed run)",
        )
    )
    wall = info.get("wall_s", summary.get("wall_s"))
    if wall is not None:
        items.append(("wall time", f"{wall:.0f} s for the invocation that wrote this report's summary"))
    items += [
        ("date", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("command", str(info.get("command") or summary.get("command") or "")),
        ("run fingerprint", str(summary.get("fingerprint"))),
    ]
    return items


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sanity_section(sanity: Mapping[str, Any] | None) -> Section:
    """The gradient-masking checks of a summary (:func:`advlab.evaluate.summary_checks.check_summary`) as a section."""
    section = Section("Sanity checks (gradient masking)", id="sanity")
    if not sanity:
        section.paragraphs.append(
            "No sanity checks were run in this version (they come with advlab.evaluate.sanity). Read the numbers "
            "with Carlini et al. 2019's checklist in mind: iterative attacks at least as strong as single-step ones, "
            "accuracy falling with eps, unbounded attacks reaching 100%."
        )
        return section
    # advlab.evaluate.summary_checks.check_summary: {"checks": [Check.to_dict(), ...], "warnings": k}
    rows = [
        [
            str(c["name"]),
            str(c["status"]),
            ", ".join(f"{k} = {_number(v)}" for k, v in c.get("numbers", {}).items()),
            str(c.get("message", "")),
        ]
        for c in sanity["checks"]
    ]
    section.tables.append(Table("Checks", ["check", "status", "numbers behind it", "reading"], rows, id="sanity-table"))
    return section


def adaptive_section(adaptive: Mapping[str, Any] | None) -> list[Section]:
    """The adaptive suite's naive against adaptive robust accuracy per eps, with the check that triggered each fix
    (:mod:`advlab.evaluate.adaptive`); no section for a run without it."""
    if not adaptive or not adaptive.get("rows"):
        return []

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    plan = adaptive.get("plan", {})
    rows = [
        [
            f"{r['eps']:.4g}",
            pct(r["naive"]),
            pct(r["adaptive"]),
            "; ".join(f"{c} → {f}" for c, f in zip(r["triggered_by"], r["fixes"], strict=True)) or "none",
        ]
        for r in adaptive["rows"]
    ]
    section = Section("Adaptive attack (naive against adaptive)", id="adaptive")
    around = ", ".join(plan.get("bpda") or []) or "no module"
    section.paragraphs.append(
        f"The masking checks ran on {plan.get('checked_on', '?')} images first; the adaptive suite then attacked with "
        f"EOT over {plan.get('eot_samples', 1)} draws and BPDA around {around}, then Square, each sample's record "
        "the worst case over the naive and the adaptive suite."
    )
    section.tables.append(
        Table("Robust accuracy", ["eps", "naive", "adaptive", "triggered by → fix"], rows, id="adaptive-table")
    )
    return [section]


def summary_report(
    summary: Mapping[str, Any],
    *,
    title: str | None = None,
    subtitle: str | None = None,
    sections: Sequence[Section] = (),
    settings: Sequence[tuple[str, str]] = (),
    info: Mapping[str, Any] | None = None,
) -> Report:
    """The report of a run: ``sections`` (what the caller has to say), then the sections every run has: the
    sanity checks, the settings (``settings`` and the table of every attack) and the provenance."""
    n = summary["clean"]["n"]
    name = summary["model"].get("name") or "model"
    return Report(
        title or f"Evaluation of {name} ({len(summary['attacks'])} attacks, {n} images)",
        subtitle or f"advlab {summary.get('advlab_version')} — {n} images",
        [
            *sections,
            *adaptive_section(summary.get("adaptive")),
            *([curves] if (curves := robustness_section(summary)) is not None else []),
            sanity_section(summary.get("sanity")),
            Section("Settings", items=list(settings), tables=[attacks_table(summary)], id="settings"),
            Section("Model, data and provenance", items=provenance_items(summary, info), id="provenance"),
        ],
    )


def write_report(out: Path, report: Report) -> None:
    """report.html (self-contained), tables.md and every figure as PNG, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for fig in report.figures():
        tmp = out / f".{fig.name}.tmp"
        tmp.write_bytes(fig.png)
        tmp.replace(out / fig.name)
    atomic_write_text(out / "tables.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))


def render_run(run_dir: str | Path, out: str | Path | None = None) -> Report:
    """Render the summary.json of a finished run directory (``advlab eval``'s) into ``out`` (default: the run
    directory) as report.html and tables.md; returns the report."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        from ..errors import MissingInputError

        raise MissingInputError(f"{path} does not exist; render a run directory that advlab eval has finished")
    report = summary_report(json.loads(path.read_text(encoding="utf-8")))
    write_report(Path(out) if out is not None else Path(run_dir), report)
    return report
