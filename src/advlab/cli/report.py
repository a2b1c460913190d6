"""``advlab report RUN_DIR``: the self-contained report.html of a finished run (advlab.report.write_run_report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import DefaultsFormatter


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html (self-contained) from a finished run's records",
        description="Render a run directory written by advlab eval as report.html and tables.md: settings and "
        "provenance, every attack with 95% intervals, suite stages, masking checks, per-class accuracy.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by advlab eval")
    p.add_argument("--out", default=None, help="folder for report.html (default: RUN_DIR)")
    p.add_argument(
        "--claim", default=None, metavar="CLAIM.json", help="also write the run's shareable claim (as advlab eval "
        "--claim does; from the finished run's records, no attack runs), checked by advlab verify --claim"
    )
    p.set_defaults(run=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from ..evaluate.compare import load_run
    from ..report import write_run_report
    from .verify import reopen_run

    run = load_run(args.run_dir)
    if args.out is not None:  # a file on the way is the user's mistake, found before any work
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError, PermissionError) as e:
            raise UsageError(f"cannot create the folder {args.out} for --out: {e.strerror}") from None
    dataset, names = None, []
    if run.config.get("save_adversarial") and run.config["model"].get("name"):
        # The panel of examples needs the clean images: reopen the data as the run opened it, or go without the
        # panel (the report says so) where it cannot be reopened here: moved data, a model factory's code, ...
        try:
            model, dataset = reopen_run(run)
            names = list(getattr(dataset, "class_names", []) or getattr(model, "class_names", []))
        except UsageError as e:
            print(f"advlab: no panel of examples: {e}", file=sys.stderr)
    print(write_run_report(args.run_dir, args.out, dataset=dataset, class_names=names))
    if args.claim is not None:
        from ..evaluate.claim import write_claim

        write_claim(args.run_dir, args.claim)
        print(f"claim: {args.claim}")
    return 0
