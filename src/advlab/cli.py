"""The ``advlab`` command line: a thin layer over the Python API (see docs/cli.md).

    advlab eval --model efficientnet_lite0 --data DIR --attack pgd --eps 4/255 --steps 10 --out runs/pgd
    advlab eval --config attacks.toml
    advlab reproduce [--model NAME] [--data DIR] [--out RUN_DIR]
    advlab train --dataset fashion-mnist --model mnist_cnn --method pgd --eps 0.1 --out runs/train

A user mistake (unknown attack or parameter, eps written wrongly, a run directory holding another run, a
config file with unknown keys, a missing data folder, ...) is an :class:`advlab.errors.UsageError` raised by
advlab's own validation: it ends with one line on stderr and exit status 2, before any work starts (set
``ADVLAB_DEBUG=1`` to see the traceback). A run that stops for a reason it explains (:class:`~advlab.errors.RunError`)
is one line and exit status 1. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MissingInputError, RunError, UsageError, as_usage_error

EXIT_USAGE = 2

EVAL_CONFIG_KEYS = {
    "model": "model name (advlab.models.load_model)",
    "weights": "state-dict file or weights tag for the model",
    "data": "dataset: a <wnid>/<images> folder, a file,class_index CSV, 'default', or fashion-mnist[:train|:test]",
    "subset": "the paper's selection, 'CLASSESxPER_CLASS' (e.g. '30x5') of correctly classified images",
    "limit": "evaluate only the first N samples",
    "out": "run directory",
    "batch_size": "samples per batch",
    "seed": "seed of targets and random starts",
    "device": "cpu, cuda, cuda:1, ...",
    "suite": "run a named attack suite ('strong') instead of / after the listed attacks",
    "prepare": "prepare the model for the attacks (advlab.models.prepare; false = attack it as given)",
    "attack": "list of attacks ([[attack]] tables: name, id, target, and the attack's parameters)",
}
ATTACK_TABLE_KEYS = ("name", "id", "target", "only_unbroken")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``advlab: error: ...``) instead of the usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------------------------------- helpers


def _read_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"config file {p} does not exist")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {p} is not valid TOML: {e}") from None


def _apply_config(
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


def _add_replace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="if --out holds a different run (other settings, model, data or advlab code), start it over "
        "instead of refusing",
    )


def _add_prepare_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-prepare",
        dest="prepare",
        action="store_false",
        default=True,
        help="attack the model exactly as given; by default it is prepared once for the attacks "
        "(advlab.models.prepare: batch-norm folding etc.), and what was done is recorded in run.json",
    )


def _int_arg(minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:  # argparse prefixes "argument NAME: "
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
        return value

    return parse


def _param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as TOML (numbers, true/false, "strings"); bare words stay strings."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE (e.g. restarts=5), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def _progress(quiet: bool) -> None:
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


# ----------------------------------------------------------------------------------------------- eval


def _eval_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="run attacks on a model and dataset, write per-sample records and summary.json",
        description="Run one attack (flags) or several (--config FILE.toml) over a dataset; records and "
        "RUN_DIR/summary.json are written as batches finish, and the same command resumes a killed run.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the run's settings and [[attack]] tables")
    p.add_argument("--model", default="efficientnet_lite0", help="model name (see docs/models_data.md)")
    p.add_argument("--weights", default=None, help="state-dict file or weights tag for --model")
    p.add_argument("--data", default="default", help="dataset folder, labels CSV, 'default' or fashion-mnist[:split]")
    p.add_argument("--subset", default=None, metavar="CxN", help="the paper's selection of C classes x N images")
    p.add_argument("--limit", type=_int_arg(1), default=None, help="only the first N samples")
    p.add_argument("--attack", default=None, help="attack name (fgsm, bim, pgd, cw_l2, ...)")
    p.add_argument("--eps", nargs="+", default=None, help="budget(s) in pixel units: 0.03, 8/255; several = a sweep")
    p.add_argument("--alpha", default=None, help="step size (pixel units)")
    p.add_argument("--steps", type=_int_arg(1), default=None, help="iterations")
    p.add_argument("--restarts", type=_int_arg(1), default=None, help="random restarts (pgd, apgd, apgd_t)")
    p.add_argument("--norm", default=None, help="linf or l2")
    p.add_argument("--loss", default=None, help="ce or margin")
    p.add_argument("--targeted", action="store_true", default=False, help="targeted attack")
    p.add_argument("--target", default=None, help="targets: random, least-likely, or a class index")
    p.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other attack parameter, e.g. -p c=0.1 -p binary_search_steps=9",
    )
    p.add_argument(
        "--suite",
        default=None,
        help="run a named suite of attacks: 'strong' (the worst-case ensemble) or 'fast'",
    )
    p.add_argument("--out", default="runs/eval", help="run directory")
    _add_replace_flag(p)
    _add_prepare_flag(p)
    p.add_argument("--batch-size", dest="batch_size", type=_int_arg(1), default=16, help="samples per batch")
    p.add_argument("--seed", type=_int_arg(), default=0, help="seed of targets and random starts")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(run=cmd_eval, attack_tables=None)
    return p


def _add_params(params: dict[str, Any], args: argparse.Namespace, also_flagged: set[str]) -> None:
    """Add the ``-p KEY=VALUE`` pairs to ``params``; a key a flag already set is refused (no silent winner)."""
    flagged = set(params) | also_flagged | ({"target"} if getattr(args, "target", None) is not None else set())
    for key, value in args.param:
        if key in flagged:
            raise UsageError(f"{key} is set twice, by --{key.replace('_', '-')} and by -p {key}={value}; give it once")
        params[key] = value


def _flag_attack(args: argparse.Namespace) -> list[Any]:
    from .evaluate import make_spec

    params: dict[str, Any] = {}
    for key in ("alpha", "steps", "restarts", "norm", "loss"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.targeted:
        params["targeted"] = True
    _add_params(params, args, also_flagged={"eps"} if args.eps else set())
    target: str | int | None = args.target
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    eps_values = args.eps or [None]
    specs = []
    for eps in eps_values:
        p = dict(params)
        if eps is not None:
            p["eps"] = eps
        specs.append(make_spec(args.attack, p, target=target))
    return specs


def _table_attacks(tables: Any, path: str) -> list[Any]:
    from .evaluate import make_spec

    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{path}: 'attack' must be a list of tables ([[attack]] sections)")
    specs = []
    for k, t in enumerate(tables, start=1):
        if "name" not in t:
            raise UsageError(f"{path}: attack #{k} has no 'name' (e.g. name = \"pgd\")")
        params = {key: v for key, v in t.items() if key not in ATTACK_TABLE_KEYS}
        specs.append(
            make_spec(
                t["name"], params, id=t.get("id"), target=t.get("target"), only_unbroken=t.get("only_unbroken", ())
            )
        )
    return specs


def _parse_subset(text: str) -> tuple[int, int]:
    a, sep, b = text.lower().partition("x")
    if not sep or not a.isdigit() or not b.isdigit() or int(a) < 1 or int(b) < 1:
        raise UsageError(f"--subset takes CLASSESxPER_CLASS like 30x5, got {text!r}")
    return int(a), int(b)


def _open_data(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, Any]]:
    from .data import load_dataset, select_subset, transform_for

    data = str(args.data)
    meta: dict[str, Any] = {"source": data}
    if data.startswith("fashion-mnist"):
        dataset: Any = load_dataset(data)
        meta["provenance"] = f"Fashion-MNIST {dataset.split} split"
    else:
        dataset = load_dataset(data, transform=transform_for(model))
        meta["provenance"] = getattr(dataset, "provenance", "")
    if args.subset:
        classes, per_class = _parse_subset(args.subset)
        dataset = select_subset(model, dataset, classes=classes, per_class=per_class, seed=args.seed)
        meta["provenance"] = dataset.provenance
        meta["subset"] = args.subset
    if args.limit is not None:
        from .data import LimitedDataset

        dataset = LimitedDataset(dataset, args.limit)
        meta["limit"] = args.limit
    return dataset, meta


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, summary_line

    if args.attack_tables is not None and args.attack is not None:
        raise UsageError("give the attacks either with --attack or as [[attack]] tables in --config, not both")
    if args.suite is not None and args.attack is not None:
        raise UsageError("give either --attack or --suite (list several attacks with --config)")
    specs: list[Any] = []
    if args.attack_tables is not None:
        specs += _table_attacks(args.attack_tables, args.config)
    if args.attack is not None:
        specs += _flag_attack(args)
    if args.suite is not None:
        from .evaluate import with_suites

        specs = with_suites(specs, _suite_specs(args))  # the per-sample worst case of the listed attacks
    if not specs:
        raise UsageError("no attack given: use --attack NAME (e.g. --attack pgd --eps 8/255), --suite or --config")
    if args.attack is None and args.suite is None and (args.eps or args.alpha or args.steps or args.targeted):
        raise UsageError("--eps/--alpha/--steps/--targeted describe an --attack; none was given")

    from . import runtime
    from .evaluate.sharded import evaluate_sharded
    from .models import check_device, load_model

    if args.device is not None:
        with as_usage_error(ValueError):  # the models package's check of a --device value
            check_device(args.device)
    # One process unless torchrun started several: then join them (before the model, so "cuda" is this rank's GPU).
    info = runtime.setup(args.device)
    with as_usage_error(ValueError, FileNotFoundError, ModuleNotFoundError):  # its check of --model and --weights
        model = load_model(args.model, weights=args.weights, device=args.device)
    dataset, data_meta = _open_data(args, model)
    model_meta = {**getattr(model, "config", {}), "name": args.model, "weights": args.weights}
    command = "advlab " + " ".join(shlex.quote(a) for a in args.argv)
    result = (evaluate_sharded if info.distributed else evaluate)(
        model,
        dataset,
        specs,
        out=args.out,
        batch_size=args.batch_size,
        seed=args.seed,
        model_meta=model_meta,
        data_meta=data_meta,
        extra={"command": command},
        quiet=args.quiet,
        replace=args.replace,
        prepare=bool(args.prepare),
    )
    if not info.is_main:  # rank 0 reports for the whole distributed run
        return 0
    for a in result.summary["attacks"]:
        print(summary_line(a))
    if not args.quiet:
        print(f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    return 0


def _suite_specs(args: argparse.Namespace) -> list[Any]:
    """``--suite strong --eps E...``: the worst-case suite (advlab.evaluate.suite) as one attack per eps."""
    from .evaluate import available_suites, suite_specs

    available = available_suites()
    if args.suite not in available:
        raise UsageError(f"unknown suite {args.suite!r}; available: {', '.join(available) or 'none installed'}")
    if not args.eps:
        raise UsageError("--suite needs --eps (one or more budgets, e.g. --eps 8/255)")
    # The suite fixes its own steps, losses and targets; a flag that would be dropped is a mistake to report.
    ignored = [
        "--" + name
        for name in ("alpha", "steps", "restarts", "loss", "target")
        if getattr(args, name, None) is not None
    ] + (["--targeted"] if args.targeted else [])
    if ignored:
        raise UsageError(
            f"--suite takes only --eps, --norm and -p KEY=VALUE; {', '.join(ignored)} would be ignored "
            "(the suite sets its own steps and targets)"
        )
    params: dict[str, Any] = {}
    if args.norm is not None:
        params["norm"] = args.norm
    _add_params(params, args, also_flagged={"eps"})
    return suite_specs(args.suite, args.eps, params)


# ------------------------------------------------------------------------------------------ reproduce


def _reproduce_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reproduce",
        help="the seed paper's Tables 1-3 and Figures 2, 4, 6 as a self-contained HTML report",
        description="Run the protocol of 'Robust Deep Learning' (Madan & Anand) end to end and write "
        "RUN_DIR/report.html, tables.md, the figures as PNG and summary.json. Without --data it runs on the "
        "default 20-image sample (and says so); with --data ../shared/data/imagenet-30x5 (or an ImageNet val "
        "folder) it runs the full 30 classes x 5 images protocol. A killed run resumes with the same command.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--model", default=None, help="model name (default: the embedded efficientnet_lite0)")
    p.add_argument("--data", default=None, help="ImageNet-style folder or labels CSV (default: the 20-image sample)")
    p.add_argument("--out", default="runs/reproduce", help="run directory")
    _add_replace_flag(p)
    _add_prepare_flag(p)
    p.add_argument("--classes", type=_int_arg(), default=30, help="classes to select")
    p.add_argument("--per-class", dest="per_class", type=_int_arg(), default=5, help="images per class")
    p.add_argument(
        "--select-seed",
        dest="select_seed",
        type=_int_arg(),
        default=0,
        help="seed of the 30 x 5 selection (which classes and images)",
    )
    p.add_argument("--seed", type=_int_arg(), default=0, help="seed of targets and random starts")
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=_int_arg(),
        default=None,
        help="images per batch (default: equal batches of at most 24)",
    )
    p.add_argument("--limit", type=_int_arg(), default=None, help="attack only the first N selected images")
    p.add_argument(
        "--cw-steps",
        dest="cw_steps",
        type=_int_arg(),
        default=None,
        help="CW-L2 Adam steps per binary-search round (default 20)",
    )
    p.add_argument(
        "--cw-search",
        dest="cw_search",
        type=_int_arg(),
        default=None,
        help="CW-L2 binary-search rounds (default 2)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(run=cmd_reproduce)
    return p


def cmd_reproduce(args: argparse.Namespace) -> int:
    if _under_torchrun():
        raise UsageError(
            "advlab reproduce runs in one process; under torchrun use advlab eval or advlab train (docs/distributed.md)"
        )
    from .paper import Protocol, ReproduceOptions, run_reproduce

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


# ---------------------------------------------------------------------------------------------- train


def _train_parser(sub: Any, full: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="adversarial training (PGD-AT, FGSM-RS, TRADES) on Fashion-MNIST",
        description="Train a small CNN with Madry's PGD adversarial training, fast FGSM-RS, TRADES or standard "
        "training; checkpoints are atomic and --resume continues a killed run.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with any of the flags below (as key = value)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if not full:  # the training flags import torch: only build them when `advlab train` is what runs
        return p
    try:
        from .train.config import add_arguments
    except ImportError:
        p.set_defaults(run=_train_missing)
        return p
    add_arguments(p)
    p.set_defaults(run=cmd_train)
    return p


def _train_missing(args: argparse.Namespace) -> int:
    raise UsageError("training (advlab.train) is not part of this installation")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run_training

    if args.quiet:
        args.progress = False
    try:
        config = TrainConfig.from_namespace(args)  # validated on construction
        run_training(config, log=(lambda *_: None) if args.quiet else print)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as e:
        if not isinstance(e, UsageError) and not _raised_by_train_checks(e):
            raise  # a bug in training, not a mistake on the command line: show the traceback
        # The checks name TrainConfig's fields (Python API); on the command line, name the flags.
        message = str(e)
        for f in dataclasses.fields(TrainConfig):
            if "_" in f.name:
                message = re.sub(rf"\b{f.name}\b", "--" + f.name.replace("_", "-"), message)
        raise UsageError(message) from None
    return 0


# Where advlab.train checks its settings and raises plain ValueError/TypeError/FileExistsError for a bad one,
# as (file, function) of the raise: TrainConfig's checks, the split of the data, fit's refusal to overwrite or
# to resume with other settings, the device check and a missing checkpoint for --resume.
# TODO(issue 15): once advlab.train raises advlab.errors.UsageError itself, cmd_train catches only that.
_TRAIN_CHECKS = frozenset(
    {
        ("config.py", "validate"),
        ("config.py", "from_dict"),
        ("config.py", "_choice"),
        ("config.py", "_number"),
        ("config.py", "_int"),
        ("run.py", "split_indices"),
        ("run.py", "load_data"),
        ("loop.py", "fit"),
        ("zoo.py", "check_device"),
        ("checkpoint.py", "load_checkpoint"),
    }
)


def _raised_by_train_checks(error: BaseException) -> bool:
    """Whether ``error`` was raised by one of advlab.train's checks of its settings (:data:`_TRAIN_CHECKS`),
    not by something that went wrong while training."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    return (Path(code.co_filename).name, code.co_name) in _TRAIN_CHECKS


# ----------------------------------------------------------------------------------------------- main


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="advlab",
        description="Attack, evaluate and harden image classifiers against adversarial examples.",
    )
    parser.add_argument("--version", action="version", version=f"advlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{eval,reproduce,train}")
    sub.required = True
    _eval_parser(sub)
    _reproduce_parser(sub)
    _train_parser(sub, full=argv is None or "train" in argv)
    return parser


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        table = _read_toml(args.config)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        if args.command == "eval":
            attack_tables = table.pop("attack", None)
            allowed = [k for k in EVAL_CONFIG_KEYS if k != "attack"]
            args = _apply_config(sub, list(argv)[1:], table, allowed, args.config)
            args.attack_tables = attack_tables
        else:
            allowed = [a.dest for a in sub._actions if a.dest not in ("help", "config")]
            args = _apply_config(sub, list(argv)[1:], table, allowed, args.config)
        args.command = argv[0]
    args.argv = list(argv)
    return args


def _under_torchrun() -> bool:
    """Whether several processes were started (``WORLD_SIZE`` other than 1); a malformed value counts, so that
    the distributed setup reports it as the usage mistake it is."""
    return (os.environ.get("WORLD_SIZE") or "1").strip() != "1"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advlab`` console script and ``python -m advlab``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("ADVLAB_DEBUG"))
    try:
        args = _parse(argv)
        _progress(bool(getattr(args, "quiet", False)))
        if _under_torchrun():  # tell the other ranks how this ends
            from .runtime import guard

            with guard():
                return int(args.run(args) or 0)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if argv[:1] == ["train"]:
            why = "checkpoint.pt in --out holds the last finished epoch; the same command with --resume continues"
        else:
            why = "the run directory holds every finished batch; run again to resume"
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
