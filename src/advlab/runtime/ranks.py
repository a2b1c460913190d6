"""Where a process stands in a torchrun run, and how work is cut between the ranks.

``torchrun --nproc_per_node=N -m advlab eval ...`` starts N copies of the same command; each reads its place
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from the environment.
:func:`rank_info_from_env` reads it, :func:`shard_range` / :func:`shard_batches` split work by rank without
padding (every item goes to exactly one rank, shares differ by at most one), and the timeouts come from
``$ADVLAB_DIST_TIMEOUT`` and ``$ADVLAB_DIST_HEARTBEAT_TIMEOUT``.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import RunError, UsageError

ENV_TIMEOUT = "ADVLAB_DIST_TIMEOUT"
ENV_HEARTBEAT = "ADVLAB_DIST_HEARTBEAT_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_HEARTBEAT_S = 60.0
# After telling the main thread that a peer is gone, give it this long to stop by itself (it may be inside a
# long C++ call) before the process is ended with the message.
ABORT_GRACE_S = 10.0
WATCHED_PEERS = 2
# Sent by the heartbeat thread to the main thread when the run has failed elsewhere.
PEER_SIGNAL = signal.SIGUSR1


class DistributedError(RunError):
    """The ranks of a distributed run disagree or lost each other (one line: which rank, what, what to do)."""


class DistributedSettingError(DistributedError, UsageError):
    """An environment variable of a distributed run that is not valid: a usage mistake (exit status 2)."""


# ------------------------------------------------------------------------------------------ rank info


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the run: its rank among ``world_size`` processes, its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = RankInfo()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedSettingError(
            f"environment variable {name}={raw!r} must be an integer (set by torchrun)"
        ) from None


def rank_info_from_env(env: Mapping[str, str] | None = None) -> RankInfo:
    """The rank, world size and local rank torchrun put in the environment (a single process when absent)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local = _env_int(env, "LOCAL_RANK", rank if world > 1 else 0)
    if world < 1:
        raise DistributedSettingError(f"WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise DistributedSettingError(f"RANK must be in 0..{world - 1} (WORLD_SIZE={world}), got {rank}")
    if local < 0:
        raise DistributedSettingError(f"LOCAL_RANK must be >= 0, got {local}")
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise DistributedSettingError(
                f"WORLD_SIZE={world} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
                "start the processes with torchrun (see docs/distributed.md)"
            )
    return RankInfo(rank, world, local, None)


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DistributedSettingError(f"{name}={raw!r} must be a number of seconds > 0") from None
    if not (math.isfinite(value) and value > 0):
        raise DistributedSettingError(f"{name}={raw!r} must be a number of seconds > 0")
    return value


def collective_timeout() -> float:
    """Seconds a collective (and the process group's rendezvous) may wait: ``$ADVLAB_DIST_TIMEOUT`` or 1800."""
    return _seconds_from_env(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a rank counts as dead: ``$ADVLAB_DIST_HEARTBEAT_TIMEOUT`` or 60."""
    return _seconds_from_env(ENV_HEARTBEAT, DEFAULT_HEARTBEAT_S)


def backend_for(device: str | torch.device | None) -> str:
    """NCCL for CUDA devices, gloo otherwise (CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        if not dist.is_nccl_available():
            raise DistributedError("device is CUDA but this torch build has no NCCL backend")
        return "nccl"
    if not dist.is_gloo_available():
        raise DistributedError("this torch build has no gloo backend; distributed CPU runs need it")
    return "gloo"


# ------------------------------------------------------------------------------------------- sharding


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``: shares cover it exactly once, sizes differ by <= 1.

    Unlike ``DistributedSampler`` nothing is padded: with n = 5 and 2 ranks the shares are [0, 3) and [3, 5).
    """
    _check_shard_args(n, rank, world_size)
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def shard_batches(num_batches: int, rank: int, world_size: int) -> list[int]:
    """Positions in a batch plan that rank ``rank`` processes: ``rank, rank + W, rank + 2W, ...``.

    Round-robin over the engine's fixed batches (not over samples) keeps every batch exactly as a
    single-process run forms it, so even batch-size-dependent floating-point kernels give identical records.
    Each batch goes to one rank; counts differ by at most one; nothing is padded or repeated.
    """
    _check_shard_args(num_batches, rank, world_size)
    return list(range(rank, num_batches, world_size))


def _check_shard_args(n: int, rank: int, world_size: int) -> None:
    for name, value in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
