"""The locks that keep a run file's readers and its one writer apart: an OFD lock on one byte
past the end of the file (`COMMIT_LOCK`), shared while reading and exclusive while a commit
runs, and the file's flock that marks a writer."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

COMMIT_LOCK = 1 << 62  # the byte readers and the committing writer lock (never data)


def _ofd(fd: int, kind: int, *, wait: bool = True) -> bool:
    """Set the OFD lock `kind` (F_RDLCK, F_WRLCK, F_UNLCK) on COMMIT_LOCK of `fd`.
    Returns False where the file system has no such locks (nothing is locked then)."""
    flock = struct.pack("hhqqi4x", kind, os.SEEK_SET, COMMIT_LOCK, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, flock)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True


@contextmanager
def commit_lock(fd: int, *, exclusive: bool) -> Iterator[None]:
    """Hold the commit byte of `fd`: exclusive to commit or roll back, shared to read."""
    locked = _ofd(fd, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK)
    try:
        yield
    finally:
        if locked:
            _ofd(fd, fcntl.F_UNLCK)


def lock_shared(fd: int) -> None:
    _ofd(fd, fcntl.F_RDLCK)


def unlock(fd: int) -> None:
    _ofd(fd, fcntl.F_UNLCK)


def stamp(fd_or_path: int | Path) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): changes at every commit and every replacement."""
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def bump_mtime(fd: int, before_ns: int) -> None:
    """Make the mtime larger than `before_ns` (a coarse clock may not have moved)."""
    st = os.fstat(fd)
    if st.st_mtime_ns <= before_ns:
        os.utime(fd, ns=(st.st_atime_ns, before_ns + 1))


def writer_active(path: Path) -> bool:
    """Whether a writer holds the file's lock right now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken


@contextmanager
def read_lock(fd: int) -> Iterator[None]:
    """Hold the commit byte of `fd` shared: no commit runs meanwhile."""
    lock_shared(fd)
    try:
        yield
    finally:
        unlock(fd)


__all__ = ["COMMIT_LOCK", "commit_lock", "lock_shared", "unlock", "read_lock", "stamp",
           "bump_mtime", "writer_active"]
