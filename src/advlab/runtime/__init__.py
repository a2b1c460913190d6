"""The process-group runtime of a ``torchrun`` run: ranks, the heartbeat, collectives, clean endings.

At the bottom of advlab with :mod:`advlab.attacks` and :mod:`advlab.data` (it imports nothing of advlab but
:mod:`advlab.errors`): the evaluation (:mod:`advlab.evaluate.sharded`) and training (:mod:`advlab.train.ddp`)
build their distributed runs on it.

- :mod:`.ranks`: :class:`RankInfo` from the environment, the timeouts, sharding by rank;
- :mod:`.heartbeat`: a thread per rank that beats and watches the next ranks through the rendezvous store;
- :mod:`.state`: this process's session and what another rank said when it failed;
- :mod:`.collectives`: barriers, gathers and same-value checks that end every rank with one clear line;
- :mod:`.group`: :func:`setup`, :func:`teardown`, :func:`guard` and :func:`session`;
- :mod:`.lock` and :mod:`.files`: one writer per output folder, and atomic writes that name a full disk's file
  (what eval, reproduce and train share; docs/reliability.md).

Faults. A rank that dies stops sending heartbeats; the ranks that watch it notice within
``ADVLAB_DIST_HEARTBEAT_TIMEOUT`` seconds (default 60), mark the run failed in the store, and every rank stops
with :class:`DistributedError` naming the dead rank. A rank that stops with an error tells the others the same
way. A rank that is alive but stuck is caught by the collective timeout ``ADVLAB_DIST_TIMEOUT`` (default 1800 s).
"""

from .collectives import all_gather, broadcast, check_same, check_same_command, gather, wait_for_all
from .group import command_digest, guard, session, setup, teardown
from .ranks import (
    SINGLE,
    DistributedError,
    DistributedSettingError,
    RankInfo,
    backend_for,
    collective_timeout,
    heartbeat_timeout,
    rank_info_from_env,
    shard_batches,
    shard_range,
)
from .state import current, peer_failure

__all__ = [
    "SINGLE",
    "DistributedError",
    "DistributedSettingError",
    "RankInfo",
    "all_gather",
    "backend_for",
    "broadcast",
    "check_same",
    "check_same_command",
    "collective_timeout",
    "command_digest",
    "current",
    "gather",
    "guard",
    "heartbeat_timeout",
    "peer_failure",
    "rank_info_from_env",
    "session",
    "setup",
    "shard_batches",
    "shard_range",
    "teardown",
    "wait_for_all",
]
