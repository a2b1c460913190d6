"""One writer per output folder: an exclusive OS lock (``fcntl.flock``) on ``<folder>/.advlab.lock``.

Every command that writes a run directory (``advlab eval``, ``reproduce``, ``train``) holds this lock for the
whole run, so two writers can never interleave their ``run.json``, records, checkpoints or summary: the
second is refused at once with :class:`RunLockedError`, a :class:`~advlab.errors.UsageError` naming the holder
(pid, host, start time) read from the lock file.

Staleness needs no heuristics: the kernel releases a ``flock`` when its process ends, however it ends
(SIGKILL included), so a lock file left by a killed process is simply taken over by the next run; the
holder it still names is reported as the previous, stale holder only in :attr:`RunLock.stale`. On a network
file system the lock is as good as that file system's ``flock``; where it has none, the run goes ahead with a
:class:`LockWarning`.

In a distributed run rank 0 holds the lock of the shared folder; ranks on other machines hold it for their
own disk (the same rule as who opens the run directory, see :mod:`advlab.evaluate.sharded`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import UsageError

LOCK_NAME = ".advlab.lock"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock


class LockWarning(UserWarning):
    """The folder's file system cannot lock: the run goes ahead unguarded."""


class RunLockedError(UsageError):
    """Another live process holds the output folder's lock: a second writer is refused."""


class RunLock:
    """The exclusive lock of one output folder, held from :meth:`acquire` (or ``with``) until :meth:`release`.

    Not re-entrant: acquiring the same folder twice in one process is refused like a second process.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.stale: dict[str, Any] | None = None  # the holder a killed process left in the file, if any
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder} is a file; give a folder path for --out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError, PermissionError) as e:  # a file on the way, or no rights
            raise UsageError(f"cannot create the folder {self.folder} for --out: {e.strerror}") from None
        try:  # never through a link: a planted .advlab.lock -> ~/.bashrc would be truncated by the holder record
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR):
                raise
            what = "a symbolic link" if e.errno == errno.ELOOP else "a folder"
            raise UsageError(
                f"{self.path} is {what}; advlab writes its lock only to a plain file there (remove it)"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"{self.path} is not a plain file; remove it (advlab keeps its lock there)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.folder} is being written by another advlab process ({_describe(holder)}); wait for it "
                "to finish, stop it, or use another --out"
            ) from None
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                os.close(fd)
                raise
            warnings.warn(  # some network file systems have no flock: run, but say that nothing guards it
                f"{self.folder} cannot be locked on this file system ({os.strerror(e.errno)}); nothing stops a "
                "second advlab process from writing it at the same time",
                LockWarning,
                stacklevel=2,
            )
        except BaseException:
            os.close(fd)
            raise
        self.stale = _read_holder(fd) or None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me, sort_keys=True) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock. The file stays (removing it would race with a process that opened it to wait)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown: it has not written its name yet"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def lock_folder(folder: str | os.PathLike[str] | None, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """``with lock_folder(out):`` hold ``out``'s lock for the block (nothing when ``out`` is None or not
    ``enabled``, e.g. on ranks that leave the folder to rank 0)."""
    if folder is None or not enabled:
        return contextlib.nullcontext()
    return RunLock(folder)
