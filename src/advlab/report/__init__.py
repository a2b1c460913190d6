"""Reports: self-contained HTML pages, Markdown tables and PNG plots built from evaluation summaries.

:mod:`advlab.report.document` holds a report as data and renders it (no external requests, images inline);
:mod:`advlab.report.plots` draws curves and adversarial-example panels; :mod:`advlab.report.summary` builds the
report of any run's summary (:func:`summary_report`, :func:`render_run`). The paper's reproduction adds its
own sections on top (:mod:`advlab.paper.report`); this package knows nothing of it.
"""

from .document import Figure, Report, Section, Table, render_html, render_markdown, table_markdown
from .run import run_report, write_run_report
from .summary import attacks_table, provenance_items, render_run, sanity_section, summary_report, write_report

__all__ = [
    "Figure",
    "Report",
    "Section",
    "Table",
    "attacks_table",
    "provenance_items",
    "render_html",
    "render_markdown",
    "render_run",
    "run_report",
    "sanity_section",
    "summary_report",
    "table_markdown",
    "write_report",
    "write_run_report",
]
