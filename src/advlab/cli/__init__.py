"""The ``advlab`` command line: a thin layer over the Python API (see docs/cli.md).

    advlab eval --model efficientnet_lite0 --data DIR --attack pgd --eps 4/255 --steps 10 --out runs/pgd
    advlab eval --config attacks.toml
    advlab reproduce [--model NAME] [--data DIR] [--out RUN_DIR]
    advlab train --dataset fashion-mnist --model mnist_cnn --method pgd --eps 0.1 --out runs/train
    advlab compare RUN_A RUN_B          (or RUN --attack-a ID --attack-b ID)
    advlab report RUN_DIR               (RUN_DIR/report.html)
    advlab verify RUN_DIR               (a --save-adversarial run, forward passes only)

A user mistake (unknown attack or parameter, eps written wrongly, a run directory holding another run, a
config file with unknown keys, a missing data folder, ...) is an :class:`advlab.errors.UsageError` raised by
advlab's own validation: it ends with one line on stderr and exit status 2, before any work starts (set
``ADVLAB_DEBUG=1`` to see the traceback). A run that stops for a reason it explains (:class:`~advlab.errors.RunError`)
is one line and exit status 1. Anything else is a bug and shows its traceback.

One module per sub-command (:mod:`.eval`, :mod:`.reproduce`, :mod:`.train`) and :mod:`.common` for what they
share; each only parses, checks what is the command line's own business, and calls the Python API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from .. import __version__
from ..errors import RunError, UsageError
from .common import Parser, apply_config, read_toml, under_torchrun
from .compare import add_compare_parser
from .eval import EVAL_CONFIG_KEYS, add_eval_parser
from .report import add_report_parser
from .reproduce import add_reproduce_parser
from .train import add_train_parser
from .verify import add_verify_parser

EXIT_USAGE = 2


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="advlab",
        description="Attack, evaluate and harden image classifiers against adversarial examples.",
    )
    parser.add_argument("--version", action="version", version=f"advlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{eval,reproduce,train,compare,report,verify}")
    sub.required = True
    add_eval_parser(sub)
    add_reproduce_parser(sub)
    add_train_parser(sub, full=argv is None or "train" in argv)
    add_compare_parser(sub)
    add_report_parser(sub)
    add_verify_parser(sub)
    return parser


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        table = read_toml(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        if args.command == "eval":
            attack_tables = table.pop("attack", None)
            allowed = [k for k in EVAL_CONFIG_KEYS if k != "attack"]
            args = apply_config(sub, list(argv)[1:], table, allowed, args.config)
            args.attack_tables = attack_tables
        else:
            allowed = [a.dest for a in sub._actions if a.dest not in ("help", "config")]
            args = apply_config(sub, list(argv)[1:], table, allowed, args.config)
        args.command = argv[0]
    args.argv = list(argv)
    return args


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """advlab's own warnings (e.g. a run resumed by other advlab code) as one ``advlab: warning:`` line; any
    other warning as Python shows it."""
    if category.__module__.startswith("advlab."):
        print(f"advlab: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit) raised in the main thread: the run stops the way
    Ctrl-C stops it (files are only ever replaced whole, the run directory's lock is released), and the
    command line gives the same resume hint, with exit status 143 (128 + SIGTERM)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (only where Python's default handling is in
    place, in the main thread: an embedding program's own handler is left alone; and not under torchrun, whose
    agent stops its workers with SIGTERM and expects them to end at once)."""
    mine = threading.current_thread() is threading.main_thread() and not under_torchrun()
    if not mine or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advlab`` console script and ``python -m advlab``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings(), _sigterm_as_interrupt():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str]) -> int:
    debug = bool(os.environ.get("ADVLAB_DEBUG"))
    try:
        args = _parse(argv)
        if under_torchrun():  # tell the other ranks how this ends
            from ..runtime import guard

            with guard():
                return int(args.run(args) or 0)
        return int(args.run(args) or 0)
    except KeyboardInterrupt as stop:
        if argv[:1] == ["train"]:
            why = "checkpoint.pt in --out holds the last finished epoch; the same command with --resume continues"
        else:
            why = "the run directory holds every finished batch; run again to resume"
        if isinstance(stop, Terminated):
            print(f"advlab: terminated (SIGTERM; {why})", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"advlab: interrupted ({why})", file=sys.stderr)
        return 130
    except UsageError as e:
        if debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"advlab: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as e:
        # Ranks of a torchrun run that disagree or lost each other, a training run that diverged: one line (the
        # message says what to do), not a traceback per rank. Other errors are bugs: traceback.
        if debug:
            raise
        print(f"advlab: error: {e}", file=sys.stderr)
        return 1
