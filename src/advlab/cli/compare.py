"""``advlab compare RUN_A [RUN_B]``: two attacks compared per sample (paired table, exact McNemar test)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import DefaultsFormatter


def add_compare_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        help="compare two attacks per sample: paired table and exact McNemar test",
        description="Compare two attacks on the same samples: two runs (RUN_A RUN_B, each with one attack or "
        "the one named by --attack-a/--attack-b), or two attacks of one run (RUN_A --attack-a X --attack-b Y). "
        "Runs of different samples are refused.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("run_a", metavar="RUN_A", help="run directory written by advlab eval")
    p.add_argument("run_b", metavar="RUN_B", nargs="?", default=None, help="second run directory (default: RUN_A)")
    p.add_argument("--attack-a", dest="attack_a", default=None, help="attack id in RUN_A")
    p.add_argument("--attack-b", dest="attack_b", default=None, help="attack id in RUN_B (or in RUN_A)")
    p.set_defaults(run=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluate.compare import compare_runs

    _, lines = compare_runs(args.run_a, args.run_b, args.attack_a, args.attack_b)
    for line in lines:
        print(line)
    return 0
