"""Crash-safe writes for one file: an in-memory page overlay and a rollback journal.

`JournaledFile` is a file object (for h5py's ``fileobj`` driver, or anything that seeks,
reads and writes) that changes nothing on disk until `commit`. A commit saves the original
bytes of every page it will overwrite or cut off to ``FILE-journal``, then writes the
pages, truncates, fsyncs and deletes the journal. Every write is checked for a short
count, and no page of the file is written before the whole journal is durable.

The journal is a 64-byte header followed by its body. The commit writes the body with the
header left zero, fsyncs, writes the header (sizes and checksums of both), fsyncs, and only
then touches the file. So a journal whose header is all zeros belongs to a commit that died
before touching the file, and is discarded; one whose header and body check out is rolled
back, once it is shown to describe the file as it is (`_check_fits`); anything else stops
with a `RunFileError` naming both files, and nothing is deleted or changed.

Locks. The writer holds an exclusive flock on the file while it is open, and an exclusive
OFD lock on one byte far beyond the end of the file (`COMMIT_LOCK`) for the length of each
commit. Readers take that byte shared while they read (`open_for_reading`, `read_lock`),
so they never see a commit half-done; a reader that comes back after commits compares
`stamp` (the writer makes the file's mtime grow at every commit) and re-opens. Pure
os-level code: no h5py here.

    >>> jf = JournaledFile(path); jf.seek(0); jf.write(b"..."); jf.commit(); jf.close()
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ZgdynError
from .locks import bump_mtime, commit_lock, lock_shared

JOURNAL_SUFFIX = "-journal"
PAGE = 4096
_MAGIC = b"ZGDYNJ02"
# magic, body length, body crc32, old size, new size, records, written pages, header crc32
_HEADER = struct.Struct("<8sQIQQQQI")
HEADER_SIZE = 64
_RECORD = struct.Struct("<QI")  # offset, length; the original bytes follow
_WRITE = struct.Struct("<QII")  # page offset, length, crc32 of the bytes the commit writes


class RunFileError(ZgdynError):
    """A run file that is missing, locked, corrupt, or not a zgdyn run."""


def journal_path(path: Path) -> Path:
    """FILE-journal beside FILE; for a name too long for that, .zgdyn-<its hash>-journal."""
    name = path.name + JOURNAL_SUFFIX
    if len(os.fsencode(name)) > 255:
        name = f".zgdyn-{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:32]}" \
            f"{JOURNAL_SUFFIX}"
    return path.with_name(name)


def written_error(path: Path) -> RunFileError:
    """The refusal of a file whose write lock another process holds."""
    return RunFileError(f"{path}: is being written by another process; "
                        "wait for it to finish or stop it first")


def lock_for_writing(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise written_error(path) from None


# -- raw I/O: every write checked for its count ----------------------------------------------


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_all(fd: int, data: Any) -> None:
    """os.write until every byte is written (a full disk writes short, then fails)."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.write(fd, view)
        if n <= 0:
            raise _no_space()
        view = view[n:]


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise _no_space()
        view, offset = view[n:], offset + n


def pread_all(fd: int, n: int, offset: int) -> bytes:
    """Up to `n` bytes at `offset` (fewer only at the end of the file)."""
    out = bytearray()
    while len(out) < n:
        chunk = os.pread(fd, n - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# -- the journal ----------------------------------------------------------------------------


@dataclass
class Journal:
    """One commit: the file's size before and after, the original bytes of every page it
    overwrites or cuts off, and (offset, length, crc32) of every page it writes."""

    old_size: int
    new_size: int
    records: list[tuple[int, bytes]]
    writes: list[tuple[int, int, int]]

    def encode(self) -> tuple[bytes, bytes]:
        """(header, body)."""
        body = bytearray()
        for off, data in self.records:
            body += _RECORD.pack(off, len(data)) + data
        for w in self.writes:
            body += _WRITE.pack(*w)
        fields = (_MAGIC, len(body), zlib.crc32(body), self.old_size, self.new_size,
                  len(self.records), len(self.writes))
        head = _HEADER.pack(*fields, zlib.crc32(_HEADER.pack(*fields, 0)))
        return head.ljust(HEADER_SIZE, b"\0"), bytes(body)


class _Discard:
    """The journal of a commit that died before touching the file."""


DISCARD = _Discard()


def _corrupt(path: Path, jpath: Path, why: str) -> RunFileError:
    return RunFileError(f"{jpath}: the journal of an interrupted commit of {path} is "
                        f"damaged ({why}); nothing was changed or deleted: restore both "
                        "files from a backup, or move the journal away to open the file as "
                        "it is")


def check_journal_path(path: Path, jpath: Path) -> os.stat_result | None:
    """The journal's lstat, None if there is none; refuses anything but a regular file."""
    try:
        st = os.lstat(jpath)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise RunFileError(f"{jpath}: is {kind}, not a journal of {path}; zgdyn neither "
                           "follows nor removes it: move it away")
    return st


def _load_journal(path: Path, jpath: Path) -> Journal | _Discard | None:
    """The journal at `jpath`: None if there is none, DISCARD if its commit never reached
    its header; a RunFileError if it is damaged."""
    if check_journal_path(path, jpath) is None:
        return None
    try:
        fd = os.open(jpath, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        blob = pread_all(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    head = blob[:HEADER_SIZE]
    if not any(head):  # empty, or a body without its header: the file was never touched
        return DISCARD
    if len(blob) < HEADER_SIZE:
        raise _corrupt(path, jpath, f"{len(blob)} bytes, shorter than its header")
    magic, body_len, body_crc, old, new, n_rec, n_wr, crc = _HEADER.unpack_from(head)
    if magic != _MAGIC or zlib.crc32(_HEADER.pack(magic, body_len, body_crc, old, new,
                                                  n_rec, n_wr, 0)) != crc:
        raise _corrupt(path, jpath, "its header fails its checksum")
    body = blob[HEADER_SIZE:]
    if len(body) != body_len or zlib.crc32(body) != body_crc:
        raise _corrupt(path, jpath, f"its body ({len(body)} of {body_len} bytes) fails its "
                       "checksum")
    records, pos = [], 0
    try:
        for _ in range(n_rec):
            off, length = _RECORD.unpack_from(body, pos)
            pos += _RECORD.size
            if pos + length > len(body):
                raise struct.error("a record runs past the body")
            records.append((off, body[pos:pos + length]))
            pos += length
        writes = [_WRITE.unpack_from(body, pos + k * _WRITE.size) for k in range(n_wr)]
    except struct.error as e:
        raise _corrupt(path, jpath, f"its records do not parse: {e}") from None
    if pos + n_wr * _WRITE.size != len(body):
        raise _corrupt(path, jpath, "its records do not fill its body")
    return Journal(old, new, records, writes)


def _check_fits(j: Journal, fd: int, path: Path, jpath: Path) -> None:
    """Refuse a journal that does not describe an interrupted commit of this file: records
    outside the old size, an old size the records cannot restore, a file longer than the
    commit could have made it, or a page that holds neither its old nor its new bytes."""
    def refuse(why: str) -> RunFileError:
        return RunFileError(f"{jpath}: does not describe an interrupted commit of {path} "
                            f"({why}); nothing was changed: move the journal away to open "
                            "the file as it is")

    size = os.fstat(fd).st_size
    old = {}
    for off, data in j.records:
        if off % PAGE or off in old or len(data) != min(PAGE, j.old_size - off) \
                or off >= j.old_size:
            raise refuse(f"a record of {len(data)} bytes at offset {off} does not fit the "
                         f"old size {j.old_size}")
        old[off] = data
    written = {}
    for off, length, crc in j.writes:
        if off % PAGE or off in written or length != min(PAGE, j.new_size - off) \
                or off >= j.new_size:
            raise refuse(f"a written page of {length} bytes at offset {off} does not fit the "
                         f"new size {j.new_size}")
        written[off] = (length, crc)
    top = max([j.old_size, j.new_size] + [off + PAGE for off in written])
    if size > top:
        raise refuse(f"the file has {size:,} bytes, more than the {top:,} the commit could "
                     "have made")
    if size < j.old_size:  # the bytes between the file's end and the old size: all saved?
        first = size // PAGE * PAGE
        if sum(off >= first for off in old) < -(-(j.old_size - first) // PAGE):
            raise refuse(f"its old size {j.old_size:,} is larger than the file ({size:,} "
                         "bytes) and it does not hold the original bytes there")
    for off in range(0, size, PAGE):
        if off < j.old_size and off not in old and off not in written:
            continue  # a page the commit did not touch
        cur = pread_all(fd, PAGE, off)
        before = old.get(off, b"")
        unchanged = cur[:len(before)] == before and not any(cur[len(before):])
        if off in written:
            length, crc = written[off]
            if len(cur) >= length and zlib.crc32(cur[:length]) == crc:
                continue
        if not unchanged:
            raise refuse(f"the page at offset {off:,} holds neither its old nor its new bytes")


def undo(fd: int, j: Journal) -> None:
    """Put the file back as the journal says it was."""
    before = os.fstat(fd).st_mtime_ns
    for off, data in j.records:
        pwrite_all(fd, data, off)
    os.ftruncate(fd, j.old_size)
    os.fsync(fd)
    bump_mtime(fd, before)


def rollback(fd: int, path: Path, jpath: Path) -> bool:
    """Undo an interrupted commit on `fd` (flocked and commit-locked by the caller).
    Returns whether there was one."""
    j = _load_journal(path, jpath)
    if j is None:
        return False
    if isinstance(j, Journal):  # the file may be half-written: restore it
        _check_fits(j, fd, path, jpath)
        try:
            undo(fd, j)
        except OSError as e:
            raise RunFileError(f"{path}: rolling back an interrupted commit failed "
                               f"({e.strerror or e}); nothing is lost, the journal {jpath} "
                               "is kept: free space (or fix the error) and open it again") \
                from None
    jpath.unlink()
    return True


# -- the file objects ------------------------------------------------------------------------


# -- recovery and readers --------------------------------------------------------------------


def recover(path: str | Path, *, wait_s: float = 5.0) -> bool:
    """Roll back an interrupted commit, if any. Returns whether there was one.

    While a live writer holds the file, waits up to `wait_s` for it to finish.
    """
    path = Path(path)
    jpath = journal_path(path)
    deadline = time.monotonic() + wait_s
    while check_journal_path(path, jpath) is not None:
        try:
            fd = os.open(path, (os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)
                         | os.O_NOFOLLOW)
        except OSError as e:
            raise RunFileError(f"{path}: cannot be opened ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a writer is at work
            os.close(fd)
            if time.monotonic() > deadline:
                raise RunFileError(f"{path}: a commit by another process did not finish "
                                   f"within {wait_s:.0f} s") from None
            time.sleep(0.05)
            continue
        try:
            with commit_lock(fd, exclusive=True):
                return rollback(fd, path, jpath)
        except OSError as e:
            raise RunFileError(f"{path}: has an interrupted commit that needs write access "
                               f"to roll back ({e.strerror})") from None
        finally:
            os.close(fd)
    return False


def open_for_reading(path: Path) -> tuple[int, bool]:
    """(fd, rolled back): `path` opened read-only with the commit byte held shared, so no
    commit runs until `unlock(fd)`; an interrupted commit is rolled back first."""
    rolled = False
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise RunFileError(f"{path}: cannot be opened ({e.strerror or e})") from None
        try:
            lock_shared(fd)
            if check_journal_path(path, journal_path(path)) is None:
                return fd, rolled
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # releases the lock: a live writer may be rolling back its own commit
        rolled = recover(path) or rolled
    raise RunFileError(f"{path}: keeps showing an interrupted commit; is a writer failing?")


__all__ = ["JOURNAL_SUFFIX", "RunFileError", "Journal", "DISCARD", "recover", "open_for_reading",
           "journal_path", "check_journal_path", "lock_for_writing", "written_error", "pread_all",
           "pwrite_all", "write_all", "rollback", "undo", "PAGE", "HEADER_SIZE"]
