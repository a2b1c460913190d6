"""Durable whole-file writes, and a full disk reported as one line naming the file.

:func:`atomic_write_bytes` writes to a temporary name in the target's folder, syncs it, and renames it over
the target (``os.replace`` is atomic on POSIX), so a reader, or a run resumed after a kill at any moment
(SIGKILL included), sees the old file or the new one, whole, never a part. A write that fails for lack of
space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) removes its temporary file, leaves the previous file as it was, and
raises :class:`DiskFullError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..errors import RunError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(RunError, OSError):
    """No space left to write a file: the message names the file; the previous version of it is intact."""


def disk_full(path: str | os.PathLike[str], err: OSError) -> DiskFullError:
    why = os.strerror(err.errno) if err.errno is not None else str(err)
    return DiskFullError(
        f"cannot write {path}: {why.lower()}; the previous {Path(path).name} (if any) is intact: free space "
        "and run the same command again to resume"
    )


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in FULL:
            raise disk_full(path, e) from e
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
    with contextlib.suppress(OSError):  # make the rename itself durable (not every file system allows this)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
