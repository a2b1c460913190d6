"""Collectives that fail clearly: a broken peer ends every rank with one :class:`DistributedError` line
(which rank, what happened, what to do) instead of a backend traceback or a wait without end.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist

from .heartbeat import one_line
from .ranks import ENV_TIMEOUT, DistributedError, RankInfo, collective_timeout
from .state import active, current, peer_failure, recorded_failure


def collective(fn: Callable[[], Any], info: RankInfo, what: str) -> Any:
    """Run a collective; a broken peer becomes one clear DistributedError instead of a backend traceback."""
    try:
        return fn()
    except KeyboardInterrupt:
        failure = peer_failure()
        if failure is not None:
            raise DistributedError(failure) from None
        raise
    except Exception as e:
        failure = recorded_failure(wait=2.0)
        if failure is not None:
            raise DistributedError(failure) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {info.rank} of {info.world_size} failed while {what} ({type(e).__name__}: {first}); another rank "
            f"probably died or hangs (collective timeout ${ENV_TIMEOUT}={collective_timeout():g} s). "
            "Start the same command again to resume"
        ) from None


def wait_for_all(what: str, info: RankInfo | None = None, *, timeout: float | None = None) -> None:
    """A barrier through the store that stays responsive: it polls, so a failure is seen at once.

    Ranks may arrive far apart (one had one more batch to attack): a live rank is waited for up to
    ``timeout`` seconds (default: the collective timeout); a dead one ends the wait within the heartbeat
    timeout.
    """
    info = info or current()
    state = active()
    if not info.distributed or state is None:
        return
    state.barriers += 1
    key = f"{state.namespace}/barrier/{state.barriers}"
    store = state.store
    limit = collective_timeout() if timeout is None else timeout
    start = time.monotonic()
    pause = 0.01
    try:
        store.set(f"{key}/{info.rank}", "1")
        arrived = store.add(key, 1)
        while arrived < info.world_size:
            failure = recorded_failure()
            if failure is not None:
                raise DistributedError(failure)
            if time.monotonic() - start > limit:
                missing = [r for r in range(info.world_size) if not store.check([f"{key}/{r}"])]
                raise DistributedError(
                    f"rank(s) {', '.join(map(str, missing))} did not reach '{what}' within {limit:g} s "
                    f"(${ENV_TIMEOUT}); they hang or are far slower than rank {info.rank}"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            arrived = store.add(key, 0)
    except KeyboardInterrupt:
        failure = peer_failure()
        if failure is not None:
            raise DistributedError(failure) from None
        raise
    except DistributedError:
        raise
    except Exception as e:
        raise DistributedError(
            f"rank {info.rank} lost the rendezvous store while waiting for '{what}' ({one_line(e)}); "
            "rank 0 or the first node's torchrun has stopped"
        ) from None


def all_gather(obj: Any, info: RankInfo | None = None, what: str = "exchanging data") -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    info = info or current()
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    collective(lambda: dist.all_gather_object(out, obj), info, what)
    return out


def gather(obj: Any, info: RankInfo | None = None, what: str = "gathering results") -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
    info = info or current()
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    collective(lambda: dist.gather_object(obj, out, dst=0), info, what)
    return out


def broadcast(obj: Any, info: RankInfo | None = None, what: str = "sharing results") -> Any:
    """Rank 0's ``obj`` on every rank."""
    info = info or current()
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    collective(lambda: dist.broadcast_object_list(box, src=0), info, what)
    return box[0]


def check_same(value: Any, what: str, info: RankInfo | None = None, *, show: Callable[[Any], str] = repr) -> None:
    """Raise DistributedError on every rank unless all ranks hold the same ``value`` (compared by sha256).

    Only the hashes travel unless they differ; then the message shows rank 0's value and the first other.
    """
    info = info or current()
    if not info.distributed:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests = all_gather(digest, info, f"comparing {what}")
    if len(set(digests)) == 1:
        return
    values = all_gather(value, info, f"comparing {what}")
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    raise DistributedError(
        f"ranks disagree on {what}: rank 0 has {show(values[0])} but rank {odd[0]} has {show(values[odd[0]])}"
        + (f" (and {len(odd) - 1} more ranks differ)" if len(odd) > 1 else "")
        + "; every rank must run the same command on the same files"
    )


def check_same_command(command: Sequence[str], info: RankInfo | None = None) -> None:
    """Raise DistributedError on every rank unless all ranks run ``command`` (normally ``sys.argv``)."""

    def show(argv: Sequence[str]) -> str:
        args = list(argv)
        if args and args[0].endswith(("__main__.py", "cli.py")):
            args[0] = "advlab"
        return f"`{shlex.join(args)}`"

    check_same(list(command), "the command", info, show=show)
