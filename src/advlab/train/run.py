"""``run_training(config)``: build data, model, optimiser and schedule from a :class:`TrainConfig` and fit.

This is what ``advlab train`` calls; the same run from Python is ``run_training(TrainConfig(...))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advlab.data.fashion_mnist import load_fashion_mnist, to_float_images
from advlab.errors import UsageError
from advlab.models import check_device
from advlab.models.small import build
from advlab.runtime.lock import lock_folder
from advlab.train import ddp as distributed

from ..runtime.files import atomic_write_bytes
from .config import TrainConfig
from .loop import FitResult, TensorLoader, fit


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of 0..n-1 cut into (train, held-out) index tensors."""
    if val_size >= n:
        raise UsageError(f"val_size {val_size} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The per-step multiplier of the base learning rate.

    "onecycle" is the triangular cycle of Wong et al. 2020 (section 5.3): linear from ~0 up to the base rate
    at 40% of the steps, then linear down to 0. "cosine" decays from the base rate to 0 (Loshchilov & Hutter
    2017, without restarts).
    """
    total = max(total_steps, 1)
    if schedule == "constant":
        return lambda t: 1.0
    if schedule == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    peak = 0.4 * total
    return lambda t: max(0.0, min((t + 1) / peak, (total - t) / (total - peak)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, config.epochs * steps_per_epoch))


def load_data(config: TrainConfig) -> tuple[TensorLoader, TensorLoader | None]:
    """Training and held-out loaders for ``config.dataset`` (a seeded split of the training set)."""
    images, labels = load_fashion_mnist("train", config.data_root)
    x = to_float_images(images)
    train_idx, val_idx = split_indices(labels.shape[0], config.val_size, config.seed)
    if config.train_subset is not None:
        if config.train_subset > train_idx.numel():
            raise UsageError(
                f"train_subset {config.train_subset} is more than the {train_idx.numel()} training images left "
                f"after val_size {config.val_size}; lower one of them"
            )
        train_idx = train_idx[: config.train_subset]
    train = TensorLoader(x[train_idx], labels[train_idx], config.batch_size, shuffle=True, seed=config.seed)
    val = TensorLoader(x[val_idx], labels[val_idx], 500) if config.val_size > 0 else None
    return train, val


def run_training(config: TrainConfig, *, log: Callable[[str], Any] = print) -> FitResult:
    """Train ``config.model`` on ``config.dataset`` with ``config.method`` and write the run into ``config.out``.

    Returns the :class:`FitResult` (final model in eval mode, per-epoch history, best epoch). See
    :func:`advlab.train.fit` for the files written. The model and data are built the same way on every call
    (seeded), so ``resume=True`` after a kill finishes with the weights an uninterrupted run would have.
    """
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = check_device(config.device)
    # One process unless torchrun started several: then DistributedDataParallel, each global batch split by
    # rank, files written by rank 0 (see advlab.train.ddp, advlab.runtime and docs/distributed.md).
    info = distributed.setup(config.device)
    if not info.is_main:
        config = dataclasses.replace(config, progress=False)
        log = _silent
    # One writer per run folder: rank 0 holds its lock until every file of the run is written.
    with lock_folder(config.run_dir, enabled=info.is_main):
        train_loader, val_loader = load_data(config)
        torch.manual_seed(config.seed)
        model = net = build(config.model).to(device)
        optimizer = make_optimizer(model, config)
        if info.distributed:
            model, train_loader = distributed.distribute_training(model, train_loader, info)
        scheduler = make_scheduler(optimizer, config, len(train_loader))
        if not config.resume and info.is_main:
            config.run_dir.mkdir(parents=True, exist_ok=True)
            if not (config.run_dir / "checkpoint.pt").exists():
                blob = json.dumps(config.to_dict(), indent=1)
                atomic_write_bytes(config.run_dir / "config.json", (blob + "\n").encode("utf-8"))
        result = fit(model, train_loader, val_loader, optimizer, config, scheduler=scheduler, log=log)
        distributed.wait_for_all("the end of training", info)  # rank 0's files are complete before any rank returns
    result.model = net
    result.model.eval()
    return result


def _silent(*_: Any) -> None:
    """The log of ranks other than 0 (rank 0 reports for the whole distributed run)."""
