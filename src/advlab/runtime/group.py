"""Joining and leaving the process group torchrun prepared, and ending every rank the same way.

:func:`setup` joins the process group (gloo on CPU, NCCL on CUDA, ``env://`` rendezvous), checks that every
rank runs the same command (a hash of ``sys.argv`` compared across ranks) and starts the heartbeat;
:func:`guard` leaves it, telling the other ranks how this one ended (done, failed with a reason, interrupted),
so that all ranks stop within moments of each other; a failure seen by the heartbeat reaches the main thread
as a signal (``SIGUSR1``) that raises :class:`~advlab.runtime.ranks.DistributedError` there.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import RunError
from .collectives import check_same_command, collective
from .heartbeat import Heartbeat, client_store, one_line
from .ranks import (
    PEER_SIGNAL,
    DistributedError,
    RankInfo,
    backend_for,
    collective_timeout,
    heartbeat_timeout,
    rank_info_from_env,
)
from .state import Session, active, begin, current, end, peer_failure, recorded_failure


def command_digest(command: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(command)).encode()).hexdigest()


def setup(
    device: str | torch.device | None = None,
    *,
    command: Sequence[str] | None = None,
    timeout: float | None = None,
    heartbeat: float | None = None,
) -> RankInfo:
    """Join the process group torchrun prepared, or do nothing in a single process.

    Args:
        device: where this rank computes; CUDA picks NCCL and the GPU ``LOCAL_RANK`` (made the current
            device, so ``"cuda"`` means this rank's GPU from here on), anything else gloo.
        command: the command every rank must share (default ``sys.argv``); a rank whose command differs
            makes every rank stop with :class:`DistributedError` naming both commands.
        timeout: seconds for the rendezvous and each collective (default ``$ADVLAB_DIST_TIMEOUT`` or 1800).
        heartbeat: seconds of silence after which a rank counts as dead (default
            ``$ADVLAB_DIST_HEARTBEAT_TIMEOUT`` or 60).

    Calling it again returns the same :class:`RankInfo`. The group is left at exit (or by :func:`teardown`).
    """
    if active() is not None:
        return current()
    info = rank_info_from_env()
    if not info.distributed:
        return info
    timeout = collective_timeout() if timeout is None else float(timeout)
    beat = heartbeat_timeout() if heartbeat is None else float(heartbeat)
    backend = backend_for(device)
    device_id = None
    if backend == "nccl":
        if info.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {info.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(info.local_rank)
        device_id = torch.device("cuda", info.local_rank)
    if not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            dist.init_process_group(
                backend, init_method="env://", timeout=timedelta(seconds=timeout), device_id=device_id
            )
        except Exception as e:
            raise DistributedError(
                f"rank {info.rank} of {info.world_size} could not join the process group at {where} within "
                f"{timeout:g} s ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check that every "
                "node runs torchrun with the same --rdzv-endpoint / --master-addr and --nnodes"
            ) from None
    info = dataclasses.replace(info, backend=backend)
    # A fresh namespace per run (and per torchrun restart) for this module's keys in the shared store.
    box: list[Any] = [uuid.uuid4().hex if info.is_main else None]
    collective(lambda: dist.broadcast_object_list(box, src=0), info, "agreeing on a run id")
    namespace = f"advlab/{box[0]}"
    hb = Heartbeat(info, namespace, beat)
    begin(Session(info, namespace, hb, client_store(timeout)))
    if threading.current_thread() is threading.main_thread() and signal.getsignal(PEER_SIGNAL) == signal.SIG_DFL:
        signal.signal(PEER_SIGNAL, _on_peer_signal)
        hb.signal_main = True
    hb.start()
    atexit.register(_at_exit)
    check_same_command(sys.argv if command is None else command)
    return info


def teardown(failed: str | None = None) -> None:
    """Leave the process group: record this rank as finished (or failed, with the reason) and stop beating."""
    state = end()
    if state is None:
        return
    state.heartbeat.stop("failed" if failed is not None else "done", failed or "")
    if state.heartbeat.signal_main:
        signal.signal(PEER_SIGNAL, signal.SIG_DFL)
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _on_peer_signal(signum: int, frame: Any) -> None:
    raise DistributedError(peer_failure() or "another rank of the run failed")


def _at_exit() -> None:
    # An uncaught exception leaves sys.last_value behind; then the others must not wait for this rank.
    error = getattr(sys, "last_value", None)
    teardown(None if error is None else f"rank {current().rank} stopped with an error: {one_line(error)}")


def _backend_error(e: BaseException) -> bool:
    """An error raised by a collective or the backend (gloo/NCCL), not by advlab or the user's code."""
    return isinstance(e, RuntimeError) and not isinstance(e, RunError)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Leave the process group (if one was joined) when the block ends, telling the others how it ended.

    An error inside the block is passed on to the other ranks at once (they stop with "rank R stopped with
    an error: ..." instead of waiting for the heartbeat timeout); when the heartbeat stopped this rank because
    another one failed, the block ends with :class:`DistributedError` saying which. Outside a distributed
    run it does nothing.
    """
    try:
        yield
    except BaseException as e:
        if active() is None:
            raise
        failure = recorded_failure(wait=2.0 if _backend_error(e) else 0.0)
        clean_exit = isinstance(e, SystemExit) and e.code in (0, None)
        if clean_exit and failure is None:
            teardown()
            raise
        if isinstance(e, KeyboardInterrupt) and failure is None:
            teardown(f"rank {current().rank} was interrupted (Ctrl-C or SIGINT)")
            raise
        teardown(failure or f"rank {current().rank} stopped with an error: {one_line(e)}")
        if failure is not None and not isinstance(e, DistributedError):
            raise DistributedError(failure) from None
        raise
    else:
        teardown()


@contextlib.contextmanager
def session(device: str | torch.device | None = None, *, command: Sequence[str] | None = None) -> Iterator[RankInfo]:
    """``with session(device) as info:`` a distributed block: :func:`setup`, then :func:`guard`'s ending."""
    with guard():
        yield setup(device, command=command)
