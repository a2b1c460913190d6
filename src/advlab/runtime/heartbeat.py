"""The heartbeat: a daemon thread per rank that beats through the rendezvous store and watches its peers.

A rank that dies (killed, out of memory, machine lost) stops beating; the ranks that watch it notice within
the heartbeat timeout, write the reason into the store, and every rank stops with
:class:`~advlab.runtime.ranks.DistributedError` naming the dead rank instead of waiting forever in a collective.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from .ranks import ABORT_GRACE_S, ENV_HEARTBEAT, PEER_SIGNAL, WATCHED_PEERS, RankInfo


class Heartbeat:
    """A daemon thread that beats for this rank and watches the next live ranks of the ring.

    Each rank increments its counter ``<ns>/beat/<rank>`` in the rendezvous store every ``interval`` seconds
    and watches the next ``WATCHED_PEERS`` ranks (ring order) that have not finished. A watched counter that
    does not move for ``timeout`` seconds (measured on the watcher's own monotonic clock: no clock skew
    between machines) means the rank is gone; the watcher writes ``<ns>/failed`` with the reason, and every
    rank polls that key, so all ranks stop within about ``timeout + interval`` of the death. A store that no
    longer answers (it lives on the torchrun agent of the first node) counts as a failure too.
    """

    def __init__(self, info: RankInfo, namespace: str, timeout: float) -> None:
        self.info, self.ns, self.timeout = info, namespace, timeout
        self.interval = min(5.0, max(0.2, timeout / 6))
        self.failure: str | None = None
        self.signal_main = False  # set by setup() once the SIGUSR1 handler is installed
        self._stop = threading.Event()
        self._store = client_store(timeout)
        self._store.add(self._key("beat", info.rank), 1)
        self._thread = threading.Thread(target=self._run, name="advlab-heartbeat", daemon=True)

    def _key(self, *parts: object) -> str:
        return "/".join([self.ns, *map(str, parts)])

    def start(self) -> None:
        self._thread.start()

    def stop(self, outcome: str = "done", message: str = "") -> None:
        """Stop beating; record that this rank finished (``done``) or failed (``failed``, with ``message``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            if outcome == "done":
                self._store.set(self._key("done", self.info.rank), "1")
            elif not self._store.check([self._key("failed")]):
                self._store.set(self._key("failed"), message)
        self._thread.join(timeout=self.interval + 1)

    def _run(self) -> None:
        world, rank = self.info.world_size, self.info.rank
        last: dict[int, tuple[int, float]] = {}
        done: set[int] = set()
        try:
            while not self._stop.wait(self.interval):
                self._store.add(self._key("beat", rank), 1)
                if self._store.check([self._key("failed")]):
                    self._abort(self._store.get(self._key("failed")).decode(errors="replace"))
                    return
                now = time.monotonic()
                watched = 0
                for step in range(1, world):
                    peer = (rank + step) % world
                    if peer in done:
                        continue
                    if self._store.check([self._key("done", peer)]):
                        done.add(peer)
                        continue
                    count = self._store.add(self._key("beat", peer), 0)
                    if peer not in last or last[peer][0] != count:
                        last[peer] = (count, now)
                    elif now - last[peer][1] > self.timeout:
                        message = (
                            f"rank {peer} of {world} sent no heartbeat for {now - last[peer][1]:.0f} s (it died or "
                            f"hangs; limit ${ENV_HEARTBEAT}={self.timeout:g} s), so rank {rank} stops too; "
                            "start the same command again to resume from what each rank wrote"
                        )
                        if not self._store.check([self._key("failed")]):
                            self._store.set(self._key("failed"), message)
                        self._abort(message)
                        return
                    watched += 1
                    if watched == WATCHED_PEERS:
                        break
        except Exception as e:  # the store is gone: its host (the first node's torchrun agent or rank 0) died
            if not self._stop.is_set():
                host = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                self._abort(
                    f"rank {rank} lost the rendezvous store at {host} ({one_line(e)}); the first node's "
                    "torchrun or rank 0 has stopped. Start the same command again to resume"
                )

    def _abort(self, message: str) -> None:
        """Stop the main thread with ``message``; end the process if it does not stop within the grace period.

        A real signal (not ``_thread.interrupt_main``) is sent, so that a main thread sleeping or waiting in a
        system call wakes up at once; its handler raises :class:`DistributedError` there.
        """
        self.failure = message
        if self.signal_main and threading.main_thread().ident is not None:
            signal.pthread_kill(threading.main_thread().ident, PEER_SIGNAL)
        if self._stop.wait(ABORT_GRACE_S):
            return
        sys.stderr.write(f"advlab: error: {message}\n")
        sys.stderr.flush()
        os._exit(1)


def client_store(timeout: float) -> dist.TCPStore:
    """A client of the rendezvous store torchrun (or rank 0) serves at MASTER_ADDR:MASTER_PORT."""
    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout),
        wait_for_workers=False,
    )


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
