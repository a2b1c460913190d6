"""The typed configuration of a training run, shared by the Python API and ``advlab train``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from advlab.errors import UsageError, UsageTypeError

METHODS: tuple[str, ...] = ("standard", "pgd", "fgsm-rs", "trades")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "onecycle")
DATASETS: tuple[str, ...] = ("fashion-mnist",)

# Fields that do not change what is computed: they may differ between a run and its --resume.
RUNTIME_FIELDS: frozenset[str] = frozenset({"out", "resume", "progress", "threads", "data_root", "device"})


def default_alpha(method: str, eps: float, steps: int) -> float:
    """The step size the papers use when none is given.

    pgd and trades: 2.5 * eps / steps, a rule from Madry-lab's later work, enough to reach the ball's boundary
    and move along it (Madry et al. 2018 themselves ran 40 steps of 0.01 at eps 0.3 on MNIST and 7 of 2/255 at
    8/255 on CIFAR-10: 1.3 and 1.75 eps in all). fgsm-rs: 1.25 * eps (Wong, Rice & Kolter 2020, section 4).
    """
    if method == "fgsm-rs":
        return 1.25 * eps
    return 2.5 * eps / steps


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``advlab train`` maps its flags one to one onto these fields.

    Attributes:
        dataset: "fashion-mnist" (the full 60k training split minus ``val_size`` held-out images).
        model: architecture name from :mod:`advlab.models.small` ("mnist_cnn", "mnist_cnn_small").
        method: "standard", "pgd" (Madry et al. 2018), "fgsm-rs" (Wong et al. 2020) or "trades" (Zhang et al.
            2019).
        eps: Linf budget in pixel units, in [0, 1].
        alpha: inner step size; None gives :func:`default_alpha`.
        steps: inner PGD / TRADES steps (ignored by fgsm-rs and standard).
        beta: TRADES' weight of the KL term (1/lambda in the paper).
        eps_ramp_epochs: grow eps linearly from 0 over this many epochs (per batch), then hold it.
        epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule: the outer minimisation. The
            schedule is stepped per batch; "onecycle" rises linearly to ``lr`` over the first 40% of the
            steps and falls linearly to 0 (the cyclic schedule of Wong et al.), "cosine" decays to 0.
        val_size: held-out images taken from the training split (seeded) for per-epoch clean and PGD accuracy.
        val_pgd_steps: steps of the held-out PGD (alpha = 2.5 * eps / steps, one random start).
        train_subset: use only the first N images of the shuffled training split (for quick runs and tests).
        seed: seeds the split, the shuffling, the initialisation and the random starts.
        amp: bfloat16 autocast on CUDA (no effect on what is stored; refused on CPU).
        prepare: inner attacks of 4 steps or more, and the held-out PGD, attack :func:`advlab.models.prepare`'s
            copy of the current weights (the same function up to float rounding, faster per step).
        out: run directory (checkpoint, logs, plot, weights).
        resume: continue from ``out/checkpoint.pt``; the run's other fields must match the checkpoint's.
    """

    dataset: str = "fashion-mnist"
    model: str = "mnist_cnn"
    method: str = "pgd"
    eps: float = 0.1
    alpha: float | None = None
    steps: int = 7
    beta: float = 6.0
    eps_ramp_epochs: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    val_size: int = 1000
    val_pgd_steps: int = 10
    train_subset: int | None = None
    seed: int = 0
    amp: bool = False
    prepare: bool = True
    device: str = "cpu"
    threads: int | None = None
    data_root: str | None = None
    out: str = "runs/train"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad field and what is expected."""
        _choice(self.method, "method", METHODS)
        _choice(self.dataset, "dataset", DATASETS)
        from advlab.models.small import ARCHITECTURES

        _choice(self.model, "model", tuple(ARCHITECTURES))
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _choice(self.schedule, "schedule", SCHEDULES)
        _number(self.eps, "eps")
        if not 0.0 <= self.eps <= 1.0:
            raise UsageError(f"eps must be in [0, 1] (pixel units, images in [0, 1]), got {self.eps}")
        if self.method != "standard" and self.eps == 0:
            raise UsageError(
                f"method {self.method!r} needs eps > 0; for eps = 0 use method 'standard' (--method standard)"
            )
        if self.alpha is not None:
            _number(self.alpha, "alpha")
            if not 0 < self.alpha <= 1:
                raise UsageError(f"alpha must be in (0, 1] (pixel units), got {self.alpha}")
        for name in ("steps", "epochs", "batch_size", "val_pgd_steps"):
            _int(getattr(self, name), name, minimum=1)
        for name in ("eps_ramp_epochs", "val_size", "seed"):
            _int(getattr(self, name), name, minimum=0)
        if self.train_subset is not None:
            _int(self.train_subset, "train_subset", minimum=1)
        if self.threads is not None:
            _int(self.threads, "threads", minimum=1)
        for name in ("lr", "beta"):
            _number(getattr(self, name), name)
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay"):
            _number(getattr(self, name), name)
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.amp and not str(self.device).startswith("cuda"):
            raise UsageError(f"amp (mixed precision) is supported on CUDA only, but device is {self.device!r}")

    @property
    def inner_alpha(self) -> float:
        return self.alpha if self.alpha is not None else default_alpha(self.method, self.eps, self.steps)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """The config from an argparse namespace filled by :func:`add_arguments` (other attributes ignored)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Fields (other than runtime ones) whose value differs from ``other`` (a stored config dict)."""
        mine = self.to_dict()
        # A field the checkpoint does not name did not exist when it was written: it ran with the default.
        then = {f.name: other.get(f.name, f.default) for f in fields(self)}
        return [
            f"{k}: checkpoint {then[k]!r} vs now {mine[k]!r}"
            for k in mine
            if k not in RUNTIME_FIELDS and then[k] != mine[k]
        ]


_HELP: dict[str, str] = {
    "dataset": "training data",
    "model": "architecture (advlab.models.small): mnist_cnn (Madry et al.) or mnist_cnn_small",
    "method": "inner maximisation: standard, pgd (Madry et al. 2018), fgsm-rs (Wong et al. 2020), trades",
    "eps": "Linf budget in pixel units, in [0, 1]",
    "alpha": "inner step size (default: 2.5*eps/steps for pgd/trades, 1.25*eps for fgsm-rs)",
    "steps": "inner PGD/TRADES steps",
    "beta": "TRADES weight of the KL term",
    "eps_ramp_epochs": "grow eps linearly from 0 over this many epochs",
    "epochs": "training epochs",
    "batch_size": "training batch size",
    "optimizer": "outer optimiser",
    "lr": "(peak) learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule, stepped per batch",
    "val_size": "held-out training images for per-epoch clean/PGD accuracy (0: none)",
    "val_pgd_steps": "steps of the held-out PGD",
    "train_subset": "train on only this many images",
    "seed": "seed of the split, shuffling, initialisation and random starts",
    "amp": "bfloat16 mixed precision (CUDA only)",
    "prepare": "attack a prepared (BN-folded, channels-last) copy of the model in the inner maximisation",
    "device": "cpu, cuda, cuda:1, ...",
    "threads": "torch CPU threads (default: torch's choice)",
    "data_root": "folder holding the dataset files (default: the system copy)",
    "out": "run directory: checkpoint, logs, curves, weights",
    "resume": "continue the run in --out from its checkpoint",
    "progress": "progress bars",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "method": METHODS,
    "model": ("mnist_cnn", "mnist_cnn_small"),
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (``eps_ramp_epochs`` -> ``--eps-ramp-epochs``; booleans
    as ``--amp/--no-amp``), with the dataclass defaults (ArgumentDefaultsHelpFormatter shows them).
    ``TrainConfig.from_namespace(args)`` reads them back."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kind = {"int": int, "float": float, "str": str}
        base = str(f.type).replace(" | None", "")
        if base == "bool":
            parser.add_argument(
                flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction, help=_HELP[f.name]
            )
        else:
            # Budgets are written as in advlab eval: 0.1 or a fraction such as 8/255.
            parse = _pixel_budget(flag) if f.name in ("eps", "alpha") else kind[base]
            parser.add_argument(
                flag, dest=f.name, type=parse, default=default, choices=_CHOICES.get(f.name), help=_HELP[f.name]
            )


def _pixel_budget(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        from advlab.numbers import parse_number

        try:
            return parse_number(text, flag)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def _number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageTypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise UsageError(f"{name} must be finite, got {value}")


def _int(value: object, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageTypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
