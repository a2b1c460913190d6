"""The seed paper's protocol as one package: Madan & Anand, "Robust Deep Learning", Tables 1-3, Figures 2, 4, 6.

:mod:`.protocol` holds the paper's numbers, the settings of the reproduction and its experiment plan;
:mod:`.run` selects the data, runs the plan through :func:`advlab.evaluate.evaluate` (so a killed run
resumes) and writes the report; :mod:`.report` builds the paper's tables, Figure 6, the example panels and
the reading on top of :func:`advlab.report.summary_report`. ``advlab reproduce`` is :func:`run_reproduce`.

It sits above :mod:`advlab.evaluate` and :mod:`advlab.report`; neither imports it.
"""

from .protocol import PAPER, SCALES, Experiment, Protocol, build_experiment, std_scale, strong_is_suite
from .report import build_report, reading, table_numbers
from .run import ReproduceOptions, prepare_inputs, run_reproduce

__all__ = [
    "PAPER",
    "SCALES",
    "Experiment",
    "Protocol",
    "ReproduceOptions",
    "build_experiment",
    "build_report",
    "prepare_inputs",
    "reading",
    "run_reproduce",
    "std_scale",
    "strong_is_suite",
    "table_numbers",
]
