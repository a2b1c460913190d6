"""``advlab train``: adversarial training (advlab.train) from flags or a TOML file."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from ..errors import UsageError
from .common import DefaultsFormatter


def add_train_parser(sub: Any, full: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="adversarial training (PGD-AT, FGSM-RS, TRADES) on Fashion-MNIST",
        description="Train a small CNN with Madry's PGD adversarial training, fast FGSM-RS, TRADES or standard "
        "training; checkpoints are atomic and --resume continues a killed run.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the flags below (as key = value)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if not full:  # the training flags import torch: only build them when `advlab train` is what runs
        return p
    try:
        from ..train.config import add_arguments
    except ImportError:
        p.set_defaults(run=_train_missing)
        return p
    add_arguments(p)
    p.set_defaults(run=cmd_train)
    return p


def _train_missing(args: argparse.Namespace) -> int:
    raise UsageError("training (advlab.train) is not part of this installation")


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, run_training

    if args.quiet:
        args.progress = False
    try:
        config = TrainConfig.from_namespace(args)  # validated on construction
        run_training(config, log=(lambda *_: None) if args.quiet else print)
    except UsageError as e:  # advlab.train's checks of its settings; anything else is a bug and propagates
        # The checks name TrainConfig's fields (Python API); on the command line, name the flags.
        message = str(e)
        for f in dataclasses.fields(TrainConfig):
            if "_" in f.name:
                message = re.sub(rf"\b{f.name}\b", "--" + f.name.replace("_", "-"), message)
        raise UsageError(message) from None
    return 0
