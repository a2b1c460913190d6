"""What the sub-commands share: argparse set up for one-line errors, config files, common flags."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingInputError, UsageError


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``advlab: error: ...``) instead of the usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def read_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"config file {p} does not exist")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {p} is not valid TOML: {e}") from None


def apply_config(
    parser: argparse.ArgumentParser, argv: Sequence[str], table: dict[str, Any], allowed: Sequence[str], path: str
) -> argparse.Namespace:
    """Config values become defaults, so flags given on the command line still win."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UsageError(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    parser.set_defaults(**table)
    return parser.parse_args(argv)


def add_replace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="if --out holds a different run (other settings, model, data or advlab code), start it over "
        "instead of refusing",
    )


def add_prepare_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-prepare",
        dest="prepare",
        action="store_false",
        default=True,
        help="attack the model exactly as given; by default it is prepared once for the attacks "
        "(advlab.models.prepare: batch-norm folding etc.), and what was done is recorded in run.json",
    )


def int_arg(minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:  # argparse prefixes "argument NAME: "
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
        return value

    return parse


def param_pair(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as TOML (numbers, true/false, "strings"); bare words stay strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE (e.g. restarts=5), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def under_torchrun() -> bool:
    """Whether several processes were started (``WORLD_SIZE`` other than 1); a malformed value counts, so that
    the distributed setup reports it as the usage mistake it is."""
    return (os.environ.get("WORLD_SIZE") or "1").strip() != "1"
