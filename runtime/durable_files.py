"""Crash-safe file primitives: fsync, atomic replace, streamed digests, advisory locks.

A rename is durable only once the directory entry is, so every replace is followed by
an fsync of the parent directory. Used by the index store and by ``crossmodal verify``.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import IndexStoreError


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename or create) to disk; a no-op on Windows."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file written by someone else (e.g. a native library) to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def matches_digest(path: Path, committed: Mapping[str, Any], *, full: bool) -> bool:
    """Whether ``path`` has the committed ``size`` (and, if ``full``, ``sha256``); False if unreadable."""
    try:
        if path.stat().st_size != int(committed["size"]):
            return False
        if not full:
            return True
        return file_digest(path)[0] == committed["sha256"]
    except OSError:
        return False


class FileLock:
    """An advisory ``flock`` on a file: shared (readers) or exclusive (the writer).

    Our own rather than the ``filelock`` package because the index needs shared locks
    (many readers beside one writer, each blocking the writer's file swap) and
    ``filelock`` only has exclusive ones. A lock that cannot be set up is an error, never a
    silent no-op: continuing without it would let two writers, or a writer and a reader,
    corrupt or misread the index. Two cases stay lock-free on purpose: platforms without
    ``fcntl`` (Windows), and a reader whose index sits on a read-only file system, where
    no writer can exist to race with.

    ``create``: the writer's side, make the lock file if it is missing. A reader
    (``create=False``) makes it too when it can (an index copied without its lock file).
    Raises :class:`~crossmodal.errors.IndexStoreError` naming the file and what to do.
    """

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.fd: int | None = None
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, 0o644)
            return
        except OSError as exc:
            if create or not isinstance(exc, FileNotFoundError):
                raise self._error("it cannot be opened", exc) from exc
        # A reader and no lock file yet: make it, so a writer that starts later is still seen.
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise self._error("it is missing and cannot be created", exc) from exc

    def _error(self, what: str, exc: OSError) -> IndexStoreError:
        return IndexStoreError(
            f"cannot lock {self.path}: {what} ({exc.strerror or exc}). The lock keeps other processes from "
            "changing the index under this one; make its folder writable by this user, or copy the index to a "
            "writable place (read-only media need no lock)."
        )

    def acquire(self, *, exclusive: bool, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False instead of waiting."""
        if self.fd is None:
            return True
        import fcntl

        op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            op |= fcntl.LOCK_NB
        try:
            fcntl.flock(self.fd, op)
        except BlockingIOError:
            return False
        except OSError as exc:  # e.g. ENOLCK: a network file system without lock support
            raise self._error("the file system refuses the lock", exc) from exc
        return True

    def release(self) -> None:
        """Drop the lock (the file stays open for the next acquire)."""
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file, which also drops any lock held through it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
