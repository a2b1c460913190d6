"""Reports: self-contained HTML pages, Markdown tables and PNG plots built from evaluation summaries.

:mod:`advlab.report.document` holds the report as data and renders it (no external requests, images inline);
:mod:`advlab.report.plots` draws the curves and adversarial-example panels; :mod:`advlab.report.reproduce_report`
builds the report of ``advlab reproduce``. ``advlab eval`` writes ``summary.json`` and records, no report.
"""

from .document import Figure, Report, Section, Table, render_html, render_markdown, table_markdown

__all__ = ["Figure", "Report", "Section", "Table", "render_html", "render_markdown", "table_markdown"]
