"""Crash-safe file primitives: fsync, atomic replace, streamed digests, advisory locks.

A rename is durable only once the directory entry is, so every replace is followed by
an fsync of the parent directory. Used by the index store and by ``crossmodal verify``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping


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
    """An advisory ``flock`` on a file; a no-op where fcntl is missing (Windows)."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.fd: int | None = None
        try:
            import fcntl  # noqa: F401

            flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
            self.fd = os.open(path, flags, 0o644)
        except (ImportError, OSError):
            # A read-only copy on a read-only medium has no writer to race with.
            self.fd = None

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
