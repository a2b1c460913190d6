"""Scale-out across processes and machines with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m advlab eval ...`` starts N copies of the same command; each reads its place
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from the environment that torchrun
sets. This module turns that into a process group and gives the evaluation engine and the training loop what
they need to split work without changing results:

- :func:`setup` joins the process group (gloo on CPU, NCCL on CUDA, ``env://`` rendezvous), checks that every
  rank runs the same command (a hash of ``sys.argv`` compared across ranks), and starts a heartbeat;
- :func:`shard_batches` / :func:`shard_range` split work by rank without padding: every batch (sample) goes to
  exactly one rank, none is duplicated or dropped, and shares differ by at most one;
- :func:`evaluate_sharded` runs :func:`advlab.evaluate.evaluate` on the rank's share of the engine's fixed
  batches, gathers the per-sample records on rank 0, merges them by sample index (:func:`merge_records`) and
  writes the summary. The batches are the single-process run's batches and every random choice is a function
  of (seed, sample index), so the summary equals the single-process one (all fields but the timings);
- :func:`distribute_training` wraps a model in DistributedDataParallel and splits each global batch by rank.

Faults. A rank that dies (killed, out of memory, machine lost) stops sending heartbeats through the
rendezvous store; the ranks that watch it notice within ``ADVLAB_DIST_HEARTBEAT_TIMEOUT`` seconds (default
60), mark the run failed in the store, and every rank stops with :class:`DistributedError` naming the dead
rank, instead of waiting forever in a collective. A rank that stops with an error tells the others the same
way. A rank that is alive but stuck is caught by the collective timeout ``ADVLAB_DIST_TIMEOUT`` (default
1800 s, torch's default). Work is saved batch by batch (atomically), so the same command started again
resumes from what each rank had written.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import RunError, UsageError

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


def _without_time(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "time_s"}


def merge_records(parts: Iterable[Mapping[str, Iterable[Mapping[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Merge per-rank ``{attack id: records}`` into one, each attack's records sorted by sample index.

    A sample present in several parts (a batch two ranks both read from a shared run directory) must have the
    same record in each, up to its ``time_s``; one copy is kept. Different records for one sample mean two
    different runs were mixed: ValueError naming the attack and the sample.
    """
    merged: dict[str, dict[int, dict[str, Any]]] = {}
    for part in parts:
        for attack_id, records in part.items():
            by_index = merged.setdefault(attack_id, {})
            for record in records:
                index = int(record["index"])
                old = by_index.get(index)
                if old is None:
                    by_index[index] = dict(record)
                elif _without_time(old) != _without_time(record):
                    raise ValueError(
                        f"attack {attack_id!r}: sample {index} has different records on different ranks; "
                        "the ranks did not run the same evaluation"
                    )
    return {aid: [by_index[i] for i in sorted(by_index)] for aid, by_index in merged.items()}


# ------------------------------------------------------------------------------------------ heartbeat


class _Heartbeat:
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
        self._store = _client_store(timeout)
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
                    f"rank {rank} lost the rendezvous store at {host} ({_one_line(e)}); the first node's "
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


def _client_store(timeout: float) -> dist.TCPStore:
    """A client of the rendezvous store torchrun (or rank 0) serves at MASTER_ADDR:MASTER_PORT."""
    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout),
        wait_for_workers=False,
    )


# ------------------------------------------------------------------------------------------ the session


@dataclass
class _State:
    info: RankInfo
    namespace: str
    heartbeat: _Heartbeat
    store: dist.TCPStore
    barriers: int = 0
    finished: bool = False


_STATE: _State | None = None


def current() -> RankInfo:
    """This process's :class:`RankInfo` once :func:`setup` ran; a single process otherwise."""
    return _STATE.info if _STATE is not None else SINGLE


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
    global _STATE
    if _STATE is not None:
        return _STATE.info
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
    _collective(lambda: dist.broadcast_object_list(box, src=0), info, "agreeing on a run id")
    namespace = f"advlab/{box[0]}"
    hb = _Heartbeat(info, namespace, beat)
    _STATE = _State(info, namespace, hb, _client_store(timeout))
    if threading.current_thread() is threading.main_thread() and signal.getsignal(PEER_SIGNAL) == signal.SIG_DFL:
        signal.signal(PEER_SIGNAL, _on_peer_signal)
        hb.signal_main = True
    hb.start()
    atexit.register(_at_exit)
    check_same_command(sys.argv if command is None else command)
    return info


def teardown(failed: str | None = None) -> None:
    """Leave the process group: record this rank as finished (or failed, with the reason) and stop beating."""
    global _STATE
    state = _STATE
    if state is None:
        return
    _STATE = None
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
    teardown(None if error is None else f"rank {current().rank} stopped with an error: {_one_line(error)}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def peer_failure() -> str | None:
    """The reason another rank gave for stopping, once the heartbeat saw it (None while all is well)."""
    return _STATE.heartbeat.failure if _STATE is not None else None


def _recorded_failure(wait: float = 0.0) -> str | None:
    """The reason another rank wrote into the store, read there directly (the heartbeat only polls every few
    seconds), waiting up to ``wait`` seconds for it: a peer that fails closes its connections a moment before
    it has written why, so a backend error here is often the first sign of a failure about to be recorded."""
    state = _STATE
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
        if _STATE is None:
            raise
        failure = _recorded_failure(wait=2.0 if _backend_error(e) else 0.0)
        clean_exit = isinstance(e, SystemExit) and e.code in (0, None)
        if clean_exit and failure is None:
            teardown()
            raise
        if isinstance(e, KeyboardInterrupt) and failure is None:
            teardown(f"rank {current().rank} was interrupted (Ctrl-C or SIGINT)")
            raise
        teardown(failure or f"rank {current().rank} stopped with an error: {_one_line(e)}")
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


# --------------------------------------------------------------------------------------- collectives


def _collective(fn: Callable[[], Any], info: RankInfo, what: str) -> Any:
    """Run a collective; a broken peer becomes one clear DistributedError instead of a backend traceback."""
    try:
        return fn()
    except KeyboardInterrupt:
        failure = peer_failure()
        if failure is not None:
            raise DistributedError(failure) from None
        raise
    except Exception as e:
        failure = _recorded_failure(wait=2.0)
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
    state = _STATE
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
            failure = _recorded_failure()
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
            f"rank {info.rank} lost the rendezvous store while waiting for '{what}' ({_one_line(e)}); "
            "rank 0 or the first node's torchrun has stopped"
        ) from None


def all_gather(obj: Any, info: RankInfo | None = None, what: str = "exchanging data") -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    info = info or current()
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    _collective(lambda: dist.all_gather_object(out, obj), info, what)
    return out


def gather(obj: Any, info: RankInfo | None = None, what: str = "gathering results") -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
    info = info or current()
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    _collective(lambda: dist.gather_object(obj, out, dst=0), info, what)
    return out


def broadcast(obj: Any, info: RankInfo | None = None, what: str = "sharing results") -> Any:
    """Rank 0's ``obj`` on every rank."""
    info = info or current()
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    _collective(lambda: dist.broadcast_object_list(box, src=0), info, what)
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


# ------------------------------------------------------------------------------------- evaluation


def evaluate_sharded(
    model: nn.Module,
    dataset: Any,
    attacks: Iterable[Any],
    *,
    out: str | Path | None = None,
    batch_size: int = 16,
    seed: int = 0,
    model_meta: Mapping[str, Any] | None = None,
    data_meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    quiet: bool = False,
    progress_desc: str = "evaluate",
    info: RankInfo | None = None,
    replace: bool = False,
) -> Any:
    """:func:`advlab.evaluate.evaluate` over the ranks of a distributed run; the same call in one process.

    Each rank attacks its share (:func:`shard_batches`) of the run's batches, writing records into ``out``
    as it goes (a resumed run skips batches on disk, whichever rank wrote them, so it may even resume with
    another number of processes). Rank 0 gathers the records, merges them by sample index, writes
    ``summary.json`` and shares the summary with all ranks. Returns the :class:`~advlab.evaluate.RunResult`
    (``records`` holds every sample on rank 0, the rank's own share elsewhere).

    Without a shared filesystem each machine's ``out`` holds the batches its ranks computed; the summary
    (on the first machine) is still complete because records travel through the process group.
    """
    from advlab.evaluate.engine import plan_batches
    from advlab.evaluate.records import atomic_write_text
    from advlab.evaluate.run import RunResult, evaluate, run_config
    from advlab.evaluate.rundir import RunDirectory
    from advlab.evaluate.specs import SpecError, validate_specs
    from advlab.evaluate.summary import build_summary

    info = info or current()
    common = {
        "model_meta": model_meta,
        "data_meta": data_meta,
        "extra": extra,
        "progress_desc": progress_desc,
        "batch_size": batch_size,
        "seed": seed,
    }
    if not info.distributed:
        return evaluate(model, dataset, attacks, out=out, quiet=quiet, replace=replace, **common)
    start = time.perf_counter()
    specs = validate_specs(attacks)
    n = len(dataset)
    if n == 0:
        raise SpecError("the dataset is empty; nothing to evaluate")
    plan = plan_batches(n, batch_size)
    config = run_config(
        model, specs, n_samples=n, batch_size=batch_size, seed=seed, model_meta=model_meta, data_meta=data_meta
    )
    # Same weights, data size, attacks and seed everywhere, or the merged records would mix two runs.
    what = "the run configuration (model weights, data, attacks, seed, advlab code)"
    check_same(config, what, info, show=_config_keys)
    if out is not None:
        # Open the run directory in turn: rank 0 first, then one rank per machine (whose disk may be its
        # own), then the rest: nobody sees a half-created folder, and a wrong folder fails on rank 0 first.
        # With ``replace`` the first opener of each disk clears a different run; the rest then find this one.
        for turn in (info.is_main, info.local_rank == 0 and not info.is_main, info.local_rank != 0):
            if turn:
                RunDirectory(out, config).open(replace=replace and info.local_rank == 0)
            wait_for_all("opening the run directory", info)
    mine = shard_batches(len(plan), info.rank, info.world_size)
    result = evaluate(
        model,
        dataset,
        specs,
        out=out,
        quiet=quiet or not info.is_main,
        batches=mine,
        write_summary=False,
        **common,
    )
    own = {i for k in mine for i in plan[k]}
    records = {aid: [r for r in rs if int(r["index"]) in own] for aid, rs in result.records.items()}
    wait_for_all("the end of the evaluation", info)
    parts = gather(records, info, "gathering the per-sample records on rank 0")
    summary = None
    if parts is not None:
        merged = merge_records(parts)
        merged = {s.id: merged.get(s.id, []) for s in specs}
        fingerprint = RunDirectory(out, config).fingerprint if out is not None else None
        summary = build_summary(
            merged,
            specs,
            config,
            fingerprint=fingerprint,
            complete={s.id: True for s in specs},  # every rank finished its share of the plan
            wall_s=time.perf_counter() - start,
            extra=extra,
        )
        if out is not None:
            atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
        records = merged
    summary = broadcast(summary, info, "sharing the summary")
    return RunResult(summary, records, Path(out) if out is not None else None)


def _config_keys(config: Mapping[str, Any]) -> str:
    model = config.get("model", {})
    return (
        f"model sha256 {str(model.get('state_dict_sha256', '?'))[:12]}, {config.get('data', {}).get('n_samples')} "
        f"samples, {len(config.get('attacks', []))} attacks, seed {config.get('seed')}, "
        f"advlab code {str(config.get('code_sha256', '?'))[:12]}"
    )


# ---------------------------------------------------------------------------------------- training


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
