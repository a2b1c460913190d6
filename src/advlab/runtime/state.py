"""The process group session of this process: its rank, its namespace in the store, its heartbeat, and what
another rank said when it failed.

:mod:`advlab.runtime.group` begins and ends the session; :mod:`advlab.runtime.collectives` reads it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch.distributed as dist

from .heartbeat import Heartbeat
from .ranks import SINGLE, RankInfo


@dataclass
class Session:
    """A joined process group: this rank, the run's namespace in the store, the heartbeat and a store client."""

    info: RankInfo
    namespace: str
    heartbeat: Heartbeat
    store: dist.TCPStore
    barriers: int = 0
    finished: bool = False


_SESSION: Session | None = None


def active() -> Session | None:
    """The session joined by :func:`advlab.runtime.setup`, None in a single process or after teardown."""
    return _SESSION


def begin(session: Session) -> None:
    global _SESSION
    _SESSION = session


def end() -> Session | None:
    """Forget the session and return it (None when there was none)."""
    global _SESSION
    session, _SESSION = _SESSION, None
    return session


def current() -> RankInfo:
    """This process's :class:`RankInfo` once :func:`advlab.runtime.setup` ran; a single process otherwise."""
    return _SESSION.info if _SESSION is not None else SINGLE


def peer_failure() -> str | None:
    """The reason another rank gave for stopping, once the heartbeat saw it (None while all is well)."""
    return _SESSION.heartbeat.failure if _SESSION is not None else None


def recorded_failure(wait: float = 0.0) -> str | None:
    """The reason another rank wrote into the store, read there directly (the heartbeat only polls every few
    seconds), waiting up to ``wait`` seconds for it: a peer that fails closes its connections a moment before
    it has written why, so a backend error here is often the first sign of a failure about to be recorded."""
    state = _SESSION
    if state is None:
        return None
    deadline = time.monotonic() + wait
    while True:
        failure = peer_failure()
        if failure is None:
            with contextlib.suppress(Exception):  # the store may be gone with the failed rank
                key = f"{state.namespace}/failed"
                if state.store.check([key]):
                    failure = state.store.get(key).decode(errors="replace")
        if failure is not None or time.monotonic() >= deadline:
            return failure
        time.sleep(0.05)
