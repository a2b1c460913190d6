"""DistributedDataParallel training: each global batch split by rank, the same steps as one process.

:func:`distribute_training` wraps a model in DistributedDataParallel and gives each rank its slice of every
global batch (:class:`RankBatches`), so that with DDP's gradient averaging each step is the single-process
step on the global batch. The process group itself is :mod:`advlab.runtime`'s; :func:`setup` and
:func:`wait_for_all` are passed on from there, so a training run finds its distributed API in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from advlab.runtime import RankInfo, current, setup, wait_for_all


class RankBatches:
    """Rank ``rank``'s slice ``[rank::world_size]`` of every global batch a loader yields.

    All ranks walk the same global batches (a loader shuffled from (seed, epoch) gives the same order on
    every rank), so together they see exactly the batches of a single-process run, and with
    DistributedDataParallel's gradient averaging each step is the single-process step on the global batch
    (exactly so when the batch divides evenly). A last global batch smaller than the number of ranks would
    leave a rank with nothing; it is skipped on every rank, so all ranks take the same number of steps.
    ``set_epoch`` is passed through.
    """

    def __init__(self, loader: Iterable[tuple[Tensor, Tensor]], info: RankInfo) -> None:
        self.loader, self.info = loader, info

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.loader, getattr(self.loader, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.loader)  # type: ignore[arg-type]
        labels, batch = getattr(self.loader, "labels", None), getattr(self.loader, "batch_size", None)
        if n and isinstance(labels, Tensor) and isinstance(batch, int):
            last = labels.shape[0] - (n - 1) * batch
            if last < self.info.world_size:
                n -= 1
        return n

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        world, rank = self.info.world_size, self.info.rank
        for x, y in self.loader:
            if y.shape[0] < world:
                continue
            yield x[rank::world], y[rank::world]


def distribute_training(
    model: nn.Module, train_loader: Iterable[tuple[Tensor, Tensor]], info: RankInfo | None = None
) -> tuple[nn.Module, RankBatches]:
    """DistributedDataParallel around ``model`` and this rank's slices of ``train_loader``'s global batches.

    The training loop attacks ``ddp.module`` (see :func:`advlab.train.inner.attack_module`): the inner
    maximisation's backward passes then touch no DDP hook and never all-reduce; only the outer step's
    backward does. Batch norm: attacks run the module in eval mode (running statistics, nothing updated);
    the training forward normalises with each rank's local batch, and DDP broadcasts rank 0's running
    statistics at every forward (DDP's default), so every rank evaluates the same network.
    Random starts draw from each rank's own stream (seeded with the rank), so the ranks' noise differs.
    """
    info = info or current()
    if not info.distributed:
        return model, RankBatches(train_loader, info)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # DDP's default buffer handling: rank 0's buffers (batch-norm running statistics) are sent to all ranks
    # before every forward.
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if not info.is_main:
        # Rank 0 keeps the single-process stream; the others get their own, so random starts differ by rank.
        seed = int(torch.initial_seed()) + 1_000_003 * info.rank
        torch.manual_seed(seed % (2**63))
    return ddp, RankBatches(train_loader, info)


__all__ = ["RankBatches", "distribute_training", "setup", "wait_for_all"]
