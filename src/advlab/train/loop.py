"""The adversarial training loop: any classifier, any loader, any optimiser (Madry et al. 2018's min-max).

:func:`fit` is the whole run (epochs, held-out evaluation, checkpoints, resume, logs); :func:`train_epoch` and
:func:`evaluate` are its parts. They take a model, loaders and an optimiser built by the caller, so a
distributed run can hand in a DistributedDataParallel model and loaders over a DistributedSampler (``fit``
calls ``set_epoch`` on a loader or its sampler when they have one, and writes files on rank 0 only).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advlab import attacks
from advlab.errors import RunError, RunExistsError, UsageError
from advlab.models import prepare as prepare_model

from .checkpoint import (
    CHECKPOINT_NAME,
    check_architecture,
    load_checkpoint,
    remove_stale_temporaries,
    restore,
    save_checkpoint,
    save_weights,
)
from .config import TrainConfig
from .history import plot_history, write_history
from .inner import attack_module, method_loss

Batch = tuple[Tensor, Tensor]


class TrainingDivergedError(RunError):
    """The training loss became NaN or infinite; the last good checkpoint is kept as it was."""


def _finite_tensors(model: nn.Module) -> set[str]:
    """The names of the model's floating parameters and buffers whose every value is finite (one host sync each,
    once an epoch)."""
    return {
        name
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
        if t.is_floating_point() and bool(torch.isfinite(t).all())
    }


class TensorLoader:
    """Batches of in-memory tensors, reshuffled each epoch from ``(seed, epoch)`` alone.

    Deriving the order from the epoch number, not from a generator's running state, is what lets a resumed
    run see exactly the batches the uninterrupted run would have seen. ``set_epoch`` follows
    DistributedSampler's interface, so :func:`fit` treats both the same way.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
        if images.shape[0] == 0:
            raise ValueError("the dataset is empty; expected at least one image")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = self.labels.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images[index], self.labels[index]


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_batch(x: Tensor, y: Tensor) -> None:
    """Raise unless the batch is float images in [0, 1] with integer labels: never clip silently."""
    if not x.is_floating_point():
        raise TypeError(f"training images must be floating point in [0, 1], got dtype {x.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(
            f"training images must lie in [0, 1] after the dataset's transform, got a batch with min {lo:.4g} "
            f"and max {hi:.4g}; drop the normalisation from the transform and put it inside the model"
        )
    if y.is_floating_point():
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")


def eps_at(config: TrainConfig, epoch: int, batch: int, batches: int | None) -> float:
    """The eps of a batch: ramped linearly from 0 over ``eps_ramp_epochs`` epochs, then constant.

    Per batch when the loader's length (``batches``) is known; for a loader without ``__len__`` the ramp moves
    per epoch (every batch of epoch e gets the value at its end), since a batch's share of the epoch is unknown.
    """
    if config.eps_ramp_epochs == 0:
        return config.eps
    share = 1.0 if not batches else (batch + 1) / batches
    return config.eps * min(1.0, (epoch + share) / config.eps_ramp_epochs)


def _autocast(config: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    # bfloat16 keeps float32's exponent range, so input gradients in the inner loop do not underflow and
    # no loss scaling is needed.
    if config.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _progress(iterable: Iterable[Any], enabled: bool, desc: str, total: int | None) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def train_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    epoch: int = 0,
    scheduler: Any | None = None,
) -> EpochStats:
    """One pass over ``loader``: inner max by ``config.method``, then an optimiser (and scheduler) step per batch.

    Raises TrainingDivergedError as soon as a batch's loss is not finite (before the step that would spread the
    NaN into the weights).
    """
    device = _device_of(model)
    if config.amp and device.type != "cuda":
        raise UsageError(f"amp (mixed precision) is supported on CUDA only, but the model is on {device}")
    model.train()
    batches = len(loader) if hasattr(loader, "__len__") else None
    alpha_ratio = config.inner_alpha / config.eps if config.eps > 0 else 0.0
    total_loss, correct, seen = 0.0, 0, 0
    bar = _progress(loader, config.progress, f"epoch {epoch + 1}/{config.epochs}", batches)
    for b, batch in enumerate(bar):
        x, y = batch[0], batch[1]  # (images, labels, ...): advlab's datasets add the index
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _check_batch(x, y)
        eps = eps_at(config, epoch, b, batches)
        with _autocast(config, device):
            loss, logits = method_loss(
                config.method,
                model,
                x,
                y,
                eps=eps,
                alpha=alpha_ratio * eps,
                steps=config.steps,
                beta=config.beta,
                prepare=config.prepare,
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training loss became {value} at epoch {epoch + 1}, batch {b + 1}; stopped before updating the "
                "weights. The last good checkpoint (end of the previous epoch) is kept; lower the learning rate "
                "(--lr) or ramp eps up (--eps-ramp-epochs)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = y.shape[0]
        total_loss += value * n
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += n
        if config.progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", eps=f"{eps:.3f}")
    if seen == 0:
        raise ValueError("the training loader yielded no batches")
    return EpochStats(total_loss / seen, correct / seen, seen)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    restarts: int = 1,
    seed: int = 0,
    progress: bool = False,
    prepare: bool = True,
) -> tuple[float, float]:
    """Clean and PGD (Linf, random start) accuracy of ``model`` on ``loader``, in eval mode.

    Sample i of the loader (in its order) gets random-start seed ``seed + i``, so the result does not depend
    on the batch size and never touches the global random generators (the training's RNG stream stays as it
    was, which bit-identical resume relies on). ``eps == 0`` reports the clean accuracy twice. With ``prepare``
    PGD attacks :func:`advlab.models.prepare`'s copy of the model, made from the first batch.
    """
    target = attack_module(model)
    was_training = target.training
    target.eval()
    device = _device_of(target)
    clean = robust = seen = 0
    attacked: nn.Module | None = None
    try:
        for batch in _progress(loader, progress, "held-out PGD", None):
            x, y = batch[0], batch[1]
            x, y = x.to(device), y.to(device)
            n = y.shape[0]
            with torch.no_grad():
                ok = target(x).argmax(1) == y
            if eps > 0:
                seeds = torch.arange(seed + seen, seed + seen + n, dtype=torch.int64)
                if attacked is None:
                    attacked = prepare_model(target, x) if prepare else target
                x_adv = attacks.pgd(attacked, x, y, eps, alpha, steps, restarts=restarts, seed=seeds)
                with torch.no_grad():
                    ok_adv = target(x_adv).argmax(1) == y
            else:
                ok_adv = ok
            clean += int(ok.sum())
            robust += int((ok & ok_adv).sum())
            seen += n
    finally:
        target.train(was_training)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no batches")
    return clean / seen, robust / seen


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


@dataclass
class FitResult:
    """What :func:`fit` leaves: the trained model (final weights), the history, and the best epoch (1-based)."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    run_dir: Path


def _weights_metadata(config: TrainConfig, epoch: int, row: dict[str, Any] | None) -> dict[str, str]:
    meta = {"architecture": config.model, "method": config.method, "eps": repr(config.eps), "epoch": str(epoch)}
    if row is not None:
        meta.update(val_clean_acc=repr(row["val_clean_acc"]), val_pgd_acc=repr(row["val_pgd_acc"]))
    return meta


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    scheduler: Any | None = None,
    log: Any = print,
) -> FitResult:
    """Train for ``config.epochs`` epochs, writing into ``config.out`` after every epoch:

    - ``checkpoint.pt``: everything needed to resume (atomic; see :mod:`advlab.train.checkpoint`);
    - ``history.csv`` / ``history.json``: train loss and accuracy, held-out clean and PGD accuracy, eps, lr;
    - ``best.safetensors``: the weights of the epoch with the best held-out PGD accuracy (clean accuracy for
      ``method="standard"``), which guards against catastrophic overfitting of FGSM training (Wong et al.
      2020, section 5.1); ``final.safetensors`` and ``curves.png`` at the end.

    With ``config.resume`` the run continues from ``checkpoint.pt`` after checking that it was written for the
    same architecture and the same training settings; on CPU the final weights are then bit-identical to an
    uninterrupted run's. Without it, an ``out`` folder that already holds a checkpoint is refused.
    """
    run_dir = config.run_dir
    main = _is_main_process()
    ckpt_path = run_dir / CHECKPOINT_NAME
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "metric": -1.0}
    start = 0
    if config.resume:
        payload = load_checkpoint(ckpt_path)
        # Settings first: a resume without the original flags differs in them, which says more than shapes do.
        diffs = config.differences(payload["config"])
        if diffs:
            raise UsageError(
                f"cannot resume {ckpt_path} with different settings: {'; '.join(diffs)} (resume with the original "
                "settings: advlab train keeps them in config.json next to the checkpoint)"
            )
        check_architecture(payload, attack_module(model), ckpt_path)
        restore(payload, attack_module(model), optimizer, scheduler)
        if not main:
            # The checkpoint holds rank 0's generator: give every other rank its own stream again (derived from
            # that state and the rank, so a resume is reproducible), or all ranks would draw the same noise.
            digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).digest()
            rank = torch.distributed.get_rank()
            torch.manual_seed((int.from_bytes(digest[:8], "little") + 1_000_003 * rank) % 2**63)
        start, history, best = payload["epoch"], list(payload["history"]), dict(payload["best"])
        log(f"resumed {ckpt_path} after epoch {start}/{config.epochs}")
    elif ckpt_path.exists():
        raise RunExistsError(
            f"{ckpt_path} already exists; resume it (resume=True, --resume) or choose another out (--out)"
        )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)

    select_on = "val_clean_acc" if config.method == "standard" else "val_pgd_acc"
    for epoch in range(start, config.epochs):
        for obj in (train_loader, getattr(train_loader, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        t0 = time.perf_counter()
        lr_first = optimizer.param_groups[0]["lr"]  # after the epoch the scheduler already points past it
        finite_before = _finite_tensors(model)  # a buffer may be inf on purpose (a clamp limit, a mask)
        stats = train_epoch(model, train_loader, optimizer, config, epoch=epoch, scheduler=scheduler)
        seconds = time.perf_counter() - t0
        # A finite loss can still have a NaN or infinite gradient (the norm of a zero vector): the weights it
        # broke must not be evaluated, marked best and saved over the last good checkpoint.
        broken = sorted(finite_before - _finite_tensors(model))
        if broken:
            kept = ("The last good checkpoint (end of the previous epoch) is kept" if epoch > 0
                    else "No checkpoint was written")  # fmt: skip
            raise TrainingDivergedError(
                f"the weights became non-finite during epoch {epoch + 1} ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}: a NaN or infinite gradient with a finite loss); stopped "
                f"before evaluating or saving them. {kept}; lower the learning rate (--lr) or ramp eps up "
                "(--eps-ramp-epochs)"
            )
        if val_loader is not None:
            val_clean, val_pgd = evaluate(
                model,
                val_loader,
                eps=config.eps,
                steps=config.val_pgd_steps,
                seed=config.seed,
                progress=False,
                prepare=config.prepare,
            )
        else:
            val_clean = val_pgd = float("nan")
        batches = len(train_loader) if hasattr(train_loader, "__len__") else None
        row = {
            "epoch": epoch + 1,
            "eps": eps_at(config, epoch, (batches or 1) - 1, batches),
            "lr": lr_first,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "val_clean_acc": val_clean,
            "val_pgd_acc": val_pgd,
            "seconds": seconds,
        }
        history.append(row)
        # Without a held-out split every epoch counts as the best so far, so best = final.
        improved = val_loader is None or row[select_on] > best["metric"]
        if improved:
            best = {"epoch": epoch + 1, "metric": row[select_on]}
        log(
            f"epoch {epoch + 1}/{config.epochs}  loss {stats.loss:.4f}  train acc {stats.accuracy:.4f}  "
            f"held-out clean {val_clean:.4f}  PGD-{config.val_pgd_steps} {val_pgd:.4f}  eps {row['eps']:.4f}  "
            f"{seconds:.0f}s" + ("  (best)" if improved else "")
        )
        if main:
            net = attack_module(model)
            # best.safetensors first: if a kill lands between the two writes, the checkpoint still says the
            # previous epoch, and the resumed run rewrites both.
            if improved:
                save_weights(run_dir / "best.safetensors", net.state_dict(), _weights_metadata(config, epoch + 1, row))
            save_checkpoint(
                ckpt_path,
                model=net,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch + 1,
                history=history,
                best=best,
                config=config.to_dict(),
            )
            write_history(run_dir, history)
    if main:
        net = attack_module(model)
        last = history[-1] if history else None
        save_weights(run_dir / "final.safetensors", net.state_dict(), _weights_metadata(config, config.epochs, last))
        write_history(run_dir, history)
        if history and importlib.util.find_spec("matplotlib") is not None:
            plot_history(run_dir, history, f"{config.model} {config.method} eps={config.eps}")
        elif history:  # the core install has no plotting: history.csv/json hold the same numbers
            print(f"curves.png not drawn (pip install 'advlab[report]' for plots); see {run_dir / 'history.csv'}")
    return FitResult(model, history, best["epoch"], run_dir)
