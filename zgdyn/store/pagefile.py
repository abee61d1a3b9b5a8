"""The run file as HDF5 sees it: a file object whose writes go to an overlay of pages, kept
in memory until a commit journals the originals (`journal`) and writes them through, so
the file on disk changes only inside a commit; and a read-only one for readers."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

from .journal import (HEADER_SIZE, PAGE, Journal, RunFileError, check_journal_path,
                      journal_path, lock_for_writing, pread_all, pwrite_all, rollback, undo,
                      write_all)
from .locks import bump_mtime, commit_lock


def _open_rw(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except IsADirectoryError:
        raise RunFileError(f"{path}: is a directory, not a run file") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot be opened for writing ({e.strerror or e})") \
            from None


class _FileObject:
    """seek, tell and read on top of `readinto`, over a file of `size` bytes."""

    size = 0
    pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else \
            self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: Any) -> int:  # pragma: no cover (overridden)
        raise NotImplementedError

    def read(self, n: int = -1) -> bytes:
        n = max(0, self.size - self.pos) if n < 0 else n
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def flush(self) -> None:
        """Nothing: a JournaledFile reaches the disk only in `commit`."""


class ReadOnlyFile(_FileObject):
    """A read-only file object over `fd`, for h5py's ``fileobj`` driver. Each one is a file
    of its own to HDF5, so its cache never mixes with another opening's."""

    def __init__(self, fd: int) -> None:
        self.fd, self.pos = fd, 0
        self.size = os.fstat(fd).st_size

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        n = max(0, min(len(out), self.size - self.pos))
        done = 0
        while done < n:
            got = os.preadv(self.fd, [out[done:n]], self.pos + done)
            if got <= 0:
                break
            done += got
        self.pos += done
        return done


class JournaledFile(_FileObject):
    """A file object for h5py's ``fileobj`` driver: writes stay in memory until `commit`.

    Holds an exclusive flock on the file while open (`fd`: a descriptor of `path` that
    already holds it).
    """

    def __init__(self, path: Path, *, fd: int | None = None) -> None:
        self.path = Path(path)
        self.jpath = journal_path(self.path)
        self.fd = _open_rw(self.path) if fd is None else fd
        try:
            if fd is None:
                lock_for_writing(self.fd, self.path)
            with commit_lock(self.fd, exclusive=True):
                rollback(self.fd, self.path, self.jpath)
        except BaseException:
            os.close(self.fd)
            raise
        self.disk_size = os.fstat(self.fd).st_size
        self.size = self.disk_size
        self.pos = 0
        self.pages: dict[int, bytearray] = {}
        self.made_journal = False  # by the commit under way

    def _page(self, i: int) -> bytearray:
        page = self.pages.get(i)
        if page is None:
            page = bytearray(PAGE)
            if i * PAGE < self.disk_size:
                data = pread_all(self.fd, PAGE, i * PAGE)
                page[:len(data)] = data
            self.pages[i] = page
        return page

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        n = max(0, min(len(out), self.size - self.pos))
        done = 0
        while done < n:
            addr = self.pos + done
            i, off = divmod(addr, PAGE)
            take = min(PAGE - off, n - done)
            page = self.pages.get(i)
            if page is not None:
                out[done:done + take] = page[off:off + take]
            else:
                data = pread_all(self.fd, take, addr) if addr < self.disk_size else b""
                out[done:done + len(data)] = data
                out[done + len(data):done + take] = bytes(take - len(data))
            done += take
        self.pos += n
        return n

    def write(self, data: Any) -> int:
        src = memoryview(data).cast("B")
        done = 0
        while done < len(src):
            i, off = divmod(self.pos + done, PAGE)
            take = min(PAGE - off, len(src) - done)
            self._page(i)[off:off + take] = src[done:done + take]
            done += take
        self.pos += done
        self.size = max(self.size, self.pos)
        return done

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        for i in [i for i in self.pages if i * PAGE >= size]:
            del self.pages[i]
        i, off = divmod(size, PAGE)
        if off and i in self.pages:
            self.pages[i][off:] = bytes(PAGE - off)
        self.size = size
        return size

    def _journal(self) -> Journal:
        """The journal of committing the overlay: originals of the dirty pages on disk and
        of every page a shrink cuts off, and the checksums of the pages to write."""
        old, new = self.disk_size, self.size
        saved = {i for i in self.pages if i * PAGE < old}
        if new < old:
            saved.update(range(new // PAGE, -(-old // PAGE)))
        records = [(i * PAGE, pread_all(self.fd, min(PAGE, old - i * PAGE), i * PAGE))
                   for i in sorted(saved)]
        writes = []
        for i in sorted(self.pages):
            if i * PAGE < new:
                n = min(PAGE, new - i * PAGE)
                writes.append((i * PAGE, n, zlib.crc32(memoryview(self.pages[i])[:n])))
        return Journal(old, new, records, writes)

    def _write_journal(self, head: bytes, body: bytes) -> None:
        """Write the journal: body, fsync, header, fsync. The path must hold no journal or a
        stale regular one (removed first); the journal is created exclusively, unfollowed."""
        if check_journal_path(self.path, self.jpath) is not None:
            self.jpath.unlink()  # stale (a failed unlink of an earlier commit)
        try:
            jfd = os.open(self.jpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          0o644)
        except FileExistsError:
            raise RunFileError(f"{self.jpath}: appeared while {self.path} was committing; "
                               "another program is using the journal's name") from None
        self.made_journal = True
        try:
            os.lseek(jfd, HEADER_SIZE, os.SEEK_SET)
            write_all(jfd, body)
            os.fsync(jfd)
            os.lseek(jfd, 0, os.SEEK_SET)
            write_all(jfd, head)
            os.fsync(jfd)
        finally:
            os.close(jfd)

    def _write_pages(self) -> None:
        run_start, run = None, bytearray()
        for i in sorted(self.pages):  # coalesce consecutive pages into one pwrite
            if i * PAGE >= self.size:
                break
            if run_start is not None and i * PAGE == run_start + len(run):
                run += self.pages[i]
            else:
                if run_start is not None:
                    pwrite_all(self.fd, run, run_start)
                run_start, run = i * PAGE, bytearray(self.pages[i])
        if run_start is not None:
            pwrite_all(self.fd, run, run_start)

    def commit(self) -> None:
        """Atomically make the file on disk equal to the in-memory view.

        On a failure (a full disk, say) the file is put back as it was, and the error is
        raised; if even that fails, the journal stays for the next opening to roll back.
        """
        if not self.pages and self.size == self.disk_size:
            return
        j = self._journal()
        head, body = j.encode()
        with commit_lock(self.fd, exclusive=True):
            before = os.fstat(self.fd).st_mtime_ns
            touched = self.made_journal = False
            try:
                self._write_journal(head, body)
                touched = True  # from here on the file may differ from its last commit
                self._write_pages()
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
                bump_mtime(self.fd, before)
                self.jpath.unlink()
            except BaseException:
                self._abandon(j, touched)
                raise
        self.pages.clear()
        self.disk_size = self.size

    def _abandon(self, j: Journal, touched: bool) -> None:
        """After a failed commit: undo what it wrote, then remove the journal it made."""
        try:
            if touched:
                undo(self.fd, j)
            if self.made_journal:
                self.jpath.unlink()
        except OSError:
            pass  # the journal (complete, if the file was touched) stays for the next open

    def discard(self) -> None:
        """Forget every write since the last commit."""
        self.pages.clear()
        self.size = self.disk_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


__all__ = ["ReadOnlyFile", "JournaledFile"]
