"""A report as plain data (sections of text, tables and figures) and its two renderings.

:func:`render_html` gives one self-contained page: inline CSS, figures as base64 PNG ``data:`` URIs, no
script and no external request, so the file can be mailed, archived or opened offline. :func:`render_markdown`
gives the same tables (and texts) as GitHub-flavoured Markdown for ``tables.md``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Table:
    """A table with a title, column headers, rows of already formatted cells and an optional note."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.title!r}: a row has {len(row)} cells for {len(self.columns)} columns")


@dataclass
class Figure:
    """A PNG image (bytes) with a caption; ``name`` is its file name when written next to the report."""

    name: str
    png: bytes
    caption: str
    alt: str = ""


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    items: list[tuple[str, str]] = field(default_factory=list)  # a definition list (settings, provenance)
    id: str = ""


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]

    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.subtitle { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f4; }
td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.88em; margin-top: 0.2em; max-width: 60em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; max-width: 60em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.92em; }
dt { font-weight: 600; }
dd { margin: 0; word-break: break-word; }
code { background: #f4f4f6; padding: 0 0.2em; }
"""


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    ident = f' id="{html.escape(t.id)}"' if t.id else ""
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return (
        f"<h3>{html.escape(t.title)}</h3><table{ident}><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}"
    )


def _figure_html(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    alt = html.escape(f.alt or f.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
    )


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (UTF-8, inline CSS, embedded PNGs, no scripts)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No external requests, ever: a strict CSP also keeps a browser from fetching a favicon.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    if report.subtitle:
        parts.append(f'<p class="subtitle">{html.escape(report.subtitle)}</p>')
    for s in report.sections:
        ident = f' id="{html.escape(s.id)}"' if s.id else ""
        parts.append(f"<section{ident}><h2>{html.escape(s.heading)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        parts.extend(_figure_html(f) for f in s.figures)
        parts.extend(_table_html(t) for t in s.tables)
        if s.items:
            parts.append(
                "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in s.items) + "</dl>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(_md_cell(c) for c in t.columns) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(t.columns) - 1)) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows)
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    """The report's text and tables as Markdown (figures are referenced by their PNG file names)."""
    out = [f"# {report.title}", ""]
    if report.subtitle:
        out += [report.subtitle, ""]
    for s in report.sections:
        out += [f"## {s.heading}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for f in s.figures:
            out += [f"![{f.alt or f.caption}]({f.name})", "", f"*{f.caption}*", ""]
        for t in s.tables:
            out += [table_markdown(t)]
        for k, v in s.items:
            out.append(f"- **{k}**: {v}")
        if s.items:
            out.append("")
    return "\n".join(out).rstrip() + "\n"
