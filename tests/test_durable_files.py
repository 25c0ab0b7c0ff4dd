"""The index's advisory lock: readers share it, the writer excludes them, a lock that cannot be set up is an error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from crossmodal.durable_files import FileLock
from crossmodal.errors import IndexStoreError
from crossmodal.index import Index
from crossmodal.manifest import BundleInfo


def test_readers_share_and_the_writer_excludes(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    writer = FileLock(path, create=True)
    readers = [FileLock(path, create=False) for _ in range(2)]
    try:
        assert all(r.acquire(exclusive=False, blocking=False) for r in readers)  # readers coexist
        assert not writer.acquire(exclusive=True, blocking=False)  # the writer waits for them
        for r in readers:
            r.release()
        assert writer.acquire(exclusive=True, blocking=False)
        assert not readers[0].acquire(exclusive=False, blocking=False)  # and they wait for it
        writer.release()
        assert readers[0].acquire(exclusive=False, blocking=False)
    finally:
        for lock in (writer, *readers):
            lock.close()


def test_a_reader_creates_a_missing_lock_file_so_a_later_writer_is_seen(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    reader = FileLock(path, create=False)
    writer = FileLock(path, create=True)
    try:
        assert path.is_file() and reader.acquire(exclusive=False)
        assert not writer.acquire(exclusive=True, blocking=False)
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("create", [True, False])
def test_a_lock_that_cannot_be_opened_is_an_error_naming_the_file(tmp_path: Path, create: bool) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(IndexStoreError, match=r"cannot lock .*file/\.lock.*Not a directory.*writable"):
        FileLock(not_a_folder / ".lock", create=create)
    if create:  # a directory in the way: the writer cannot open it for writing
        (tmp_path / ".lock").mkdir()
        with pytest.raises(IndexStoreError, match=r"cannot lock .*\.lock.*Is a directory"):
            FileLock(tmp_path / ".lock", create=True)


def _refuse_creation(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    real_open = os.open

    def fake_open(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)


def test_only_a_reader_on_a_read_only_file_system_goes_without_a_lock(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".lock"
    _refuse_creation(monkeypatch, errno.EROFS)
    reader = FileLock(path, create=False)  # nobody can write there, so no writer to race with
    assert reader.fd is None and reader.acquire(exclusive=False)
    with pytest.raises(IndexStoreError, match="Read-only file system"):
        FileLock(path, create=True)
    _refuse_creation(monkeypatch, errno.EACCES)  # someone else may be allowed to write: refuse
    with pytest.raises(IndexStoreError, match="missing and cannot be created"):
        FileLock(path, create=False)


def test_a_file_system_that_refuses_locks_is_an_error_not_a_lock_free_run(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    lock = FileLock(tmp_path / ".lock", create=True)

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))  # NFS without a lock daemon

    monkeypatch.setattr(fcntl, "flock", no_locks)
    for exclusive in (True, False):
        with pytest.raises(IndexStoreError, match=r"cannot lock .*\.lock: the file system refuses the lock"):
            lock.acquire(exclusive=exclusive, blocking=False)
    monkeypatch.undo()
    assert lock.acquire(exclusive=True, blocking=False)
    lock.close()


def test_index_open_fails_loudly_when_its_lock_cannot_be_taken(tmp_path: Path) -> None:
    bundle = BundleInfo(name="b", family="clip", dim=4, space="s", logit_scale=100.0, towers={"image": "image"})
    Index.create(tmp_path / "idx", bundle=bundle, root=tmp_path).close()
    lock = tmp_path / "idx" / ".lock"
    assert lock.is_file()
    lock.unlink()
    lock.symlink_to(tmp_path / "gone" / ".lock")  # points into a folder that does not exist
    for read_only in (True, False):
        with pytest.raises(IndexStoreError, match=r"cannot lock .*idx/\.lock"):
            Index.open(tmp_path / "idx", read_only=read_only)
