"""``advlab reproduce``: the seed paper's protocol (advlab.paper) end to end, with its report."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any

from ..errors import MissingInputError, UsageError
from .common import DefaultsFormatter, add_prepare_flag, add_replace_flag, int_arg, under_torchrun


def add_reproduce_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reproduce",
        help="the seed paper's Tables 1-3 and Figures 2, 4, 6 as a self-contained HTML report",
        description="Run the protocol of 'Robust Deep Learning' (Madan & Anand) end to end and write "
        "RUN_DIR/report.html, tables.md, the figures as PNG and summary.json. Without --data it runs on the "
        "default 20-image sample (and says so); with --data ../shared/data/imagenet-30x5 (or an ImageNet val "
        "folder) it runs the full 30 classes x 5 images protocol. A killed run resumes with the same command.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--model", default=None, help="model name (default: the embedded efficientnet_lite0)")
    p.add_argument("--data", default=None, help="ImageNet-style folder or labels CSV (default: the 20-image sample)")
    p.add_argument("--out", default="runs/reproduce", help="run directory")
    add_replace_flag(p)
    add_prepare_flag(p)
    p.add_argument("--classes", type=int_arg(), default=30, help="classes to select")
    p.add_argument("--per-class", dest="per_class", type=int_arg(), default=5, help="images per class")
    p.add_argument(
        "--select-seed",
        dest="select_seed",
        type=int_arg(),
        default=0,
        help="seed of the 30 x 5 selection (which classes and images)",
    )
    p.add_argument("--seed", type=int_arg(), default=0, help="seed of targets and random starts")
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int_arg(),
        default=None,
        help="images per batch (default: equal batches of at most 24)",
    )
    p.add_argument("--limit", type=int_arg(), default=None, help="attack only the first N selected images")
    p.add_argument(
        "--cw-steps",
        dest="cw_steps",
        type=int_arg(),
        default=None,
        help="CW-L2 Adam steps per binary-search round (default 20)",
    )
    p.add_argument(
        "--cw-search",
        dest="cw_search",
        type=int_arg(),
        default=None,
        help="CW-L2 binary-search rounds (default 2)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(run=cmd_reproduce)
    return p


def cmd_reproduce(args: argparse.Namespace) -> int:
    if under_torchrun():
        raise UsageError(
            "advlab reproduce runs in one process; under torchrun use advlab eval or advlab train (docs/distributed.md)"
        )
    from ..paper import Protocol, ReproduceOptions, run_reproduce

    protocol = Protocol()
    changes = {k: getattr(args, k) for k in ("cw_steps", "cw_search") if getattr(args, k) is not None}
    for k, v in changes.items():
        if v < 1:
            raise UsageError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    for k in ("classes", "per_class", "batch_size", "limit"):
        v = getattr(args, k)
        if v is not None and v < 1:
            raise UsageError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if args.data is not None and not Path(args.data).exists():
        raise MissingInputError(
            f"--data {args.data} does not exist (expected an ImageNet-style folder or a labels CSV)"
        )
    opts = ReproduceOptions(
        out=Path(args.out),
        model=args.model,
        data=args.data,
        classes=args.classes,
        per_class=args.per_class,
        select_seed=args.select_seed,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        quiet=args.quiet,
        replace=args.replace,
        prepare=args.prepare,
        protocol=dataclasses.replace(protocol, **changes),
        command="advlab " + " ".join(shlex.quote(a) for a in args.argv),
    )
    run_reproduce(opts)
    return 0
