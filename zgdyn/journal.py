"""Crash-safe writes for one file: an in-memory page overlay and a rollback journal.

`JournaledFile` is a file object (for h5py's ``fileobj`` driver, or anything that seeks,
reads and writes) that changes nothing on disk until `commit`. A commit first saves the
original bytes of every page it will overwrite, with the old length and a checksum, to
``FILE-journal`` (fsynced); then writes the pages, truncates, fsyncs and deletes the
journal. A process that dies at any moment leaves either no journal (the file is at a
commit) or one, which `recover` (or the next `JournaledFile`) rolls back. The writer holds
an exclusive flock on the file. Pure os-level code: no h5py here.

    >>> jf = JournaledFile(path); jf.seek(0); jf.write(b"..."); jf.commit(); jf.close()
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from .config import ZgdynError

JOURNAL_SUFFIX = "-journal"
_PAGE = 4096
_JMAGIC, _JEND = b"ZGDYNJNL", b"JEND"


class RunFileError(ZgdynError):
    """A run file that is missing, locked, corrupt, or not a zgdyn run."""


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def _read_journal(jpath: Path) -> tuple[int, list[tuple[int, bytes]]] | None:
    """(old size, [(offset, original bytes)]) if the journal is complete, else None."""
    try:
        blob = jpath.read_bytes()
    except FileNotFoundError:
        return None
    if len(blob) < 28 or blob[:8] != _JMAGIC or blob[-4:] != _JEND:
        return None
    body, crc = blob[:-8], struct.unpack("<I", blob[-8:-4])[0]
    if zlib.crc32(body) != crc:
        return None
    old_size, n = struct.unpack_from("<QQ", body, 8)
    records, pos = [], 24
    for _ in range(n):
        off, length = struct.unpack_from("<QI", body, pos)
        pos += 12
        records.append((off, body[pos:pos + length]))
        pos += length
    return old_size, records


def _rollback(fd: int, jpath: Path) -> bool:
    """Undo an interrupted commit on `fd` (locked by the caller). Returns whether it did."""
    if not jpath.exists():
        return False
    journal = _read_journal(jpath)
    if journal is not None:  # complete journal: the file may be half-written, restore it
        old_size, records = journal
        for off, data in records:
            os.pwrite(fd, data, off)
        os.ftruncate(fd, old_size)
        os.fsync(fd)
    # an incomplete journal means the commit died before touching the file
    jpath.unlink()
    return True


def _try_lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFileError(f"{path}: is being written by another process; "
                           "wait for it to finish or stop it first") from None


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


class JournaledFile:
    """A file object for h5py's ``fileobj`` driver: writes stay in memory until `commit`.

    Holds an exclusive flock on the file while open.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.jpath = _journal_path(self.path)
        self.fd = os.open(self.path, os.O_RDWR)
        try:
            _try_lock(self.fd, self.path)
            _rollback(self.fd, self.jpath)
        except BaseException:
            os.close(self.fd)
            raise
        self.disk_size = os.fstat(self.fd).st_size
        self.size = self.disk_size
        self.pos = 0
        self.pages: dict[int, bytearray] = {}

    # file-object protocol used by h5py
    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else \
            self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _page(self, i: int) -> bytearray:
        page = self.pages.get(i)
        if page is None:
            page = bytearray(_PAGE)
            if i * _PAGE < self.disk_size:
                data = os.pread(self.fd, _PAGE, i * _PAGE)
                page[:len(data)] = data
            self.pages[i] = page
        return page

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        n = max(0, min(len(out), self.size - self.pos))
        done = 0
        while done < n:
            addr = self.pos + done
            i, off = divmod(addr, _PAGE)
            take = min(_PAGE - off, n - done)
            page = self.pages.get(i)
            if page is not None:
                out[done:done + take] = page[off:off + take]
            else:
                data = os.pread(self.fd, take, addr) if addr < self.disk_size else b""
                out[done:done + len(data)] = data
                out[done + len(data):done + take] = bytes(take - len(data))
            done += take
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        n = max(0, self.size - self.pos) if n < 0 else n
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def write(self, data: Any) -> int:
        src = memoryview(data).cast("B")
        done = 0
        while done < len(src):
            i, off = divmod(self.pos + done, _PAGE)
            take = min(_PAGE - off, len(src) - done)
            self._page(i)[off:off + take] = src[done:done + take]
            done += take
        self.pos += done
        self.size = max(self.size, self.pos)
        return done

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        for i in [i for i in self.pages if i * _PAGE >= size]:
            del self.pages[i]
        i, off = divmod(size, _PAGE)
        if off and i in self.pages:
            self.pages[i][off:] = bytes(_PAGE - off)
        self.size = size
        return size

    def flush(self) -> None:
        """Nothing: data reaches the disk only in `commit`."""

    def commit(self) -> None:
        """Atomically make the file on disk equal to the in-memory view."""
        if not self.pages and self.size == self.disk_size:
            return
        records = []
        for i in sorted(self.pages):
            if i * _PAGE < self.disk_size:
                records.append((i * _PAGE, os.pread(self.fd, _PAGE, i * _PAGE)))
        body = bytearray(_JMAGIC + struct.pack("<QQ", self.disk_size, len(records)))
        for off, data in records:
            body += struct.pack("<QI", off, len(data)) + data
        body += struct.pack("<I", zlib.crc32(body)) + _JEND
        jfd = os.open(self.jpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(jfd, body)
            os.fsync(jfd)
        finally:
            os.close(jfd)
        run_start, run = None, bytearray()
        for i in sorted(self.pages):  # coalesce consecutive pages into one pwrite
            if i * _PAGE >= self.size:
                break
            if run_start is not None and i * _PAGE == run_start + len(run):
                run += self.pages[i]
            else:
                if run_start is not None:
                    os.pwrite(self.fd, run, run_start)
                run_start, run = i * _PAGE, bytearray(self.pages[i])
        if run_start is not None:
            os.pwrite(self.fd, run, run_start)
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        self.jpath.unlink()
        self.pages.clear()
        self.disk_size = self.size

    def discard(self) -> None:
        """Forget every write since the last commit."""
        self.pages.clear()
        self.size = self.disk_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def recover(path: str | Path, *, wait_s: float = 5.0) -> bool:
    """Roll back an interrupted commit, if any. Returns whether there was one.

    While a live writer holds the file, waits up to `wait_s` for its commit to finish.
    """
    path = Path(path)
    jpath = _journal_path(path)
    deadline = time.monotonic() + wait_s
    while jpath.exists():
        fd = os.open(path, os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a writer is committing right now
            os.close(fd)
            if time.monotonic() > deadline:
                raise RunFileError(f"{path}: a commit by another process did not finish "
                                   f"within {wait_s:.0f} s") from None
            time.sleep(0.05)
            continue
        try:
            return _rollback(fd, jpath)
        except OSError as e:
            raise RunFileError(f"{path}: has an interrupted commit that needs write access "
                               f"to roll back ({e.strerror})") from None
        finally:
            os.close(fd)
    return False
