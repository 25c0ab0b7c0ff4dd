"""An index on a read-only file system (issue 14: N replicas over shared read-only storage).

The readers run in a subprocess inside a private mount namespace where the index folder is
bind-mounted read-only (``unshare -rm``: no root needed where the kernel allows user
namespaces). There SQLite cannot create ``meta.sqlite-shm``, so the reader opens the
database ``immutable``; these tests prove that the library, ``crossmodal search`` and
``crossmodal serve --read-only`` answer from such a mount exactly what they answer from
the writable original, that a writer is refused with a clear message, and that an index
whose writer was killed (a non-empty ``-wal``) is refused rather than read as an older state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import crossmodal
import numpy as np
import pytest
from crossmodal.cli import main
from crossmodal.index import Index
from crossmodal.index.meta import on_read_only_file_system
from crossmodal.retriever import Retriever

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "images"
LISTENING = re.compile(r"crossmodal serve: listening on (http://[\d.]+:\d+)")


def read_only_prefix(src: Path, dst: Path) -> list[str]:
    """argv prefix that runs a command with ``src`` bind-mounted read-only at ``dst`` (private namespace)."""
    script = 'mount --bind -o ro "$0" "$1" && shift && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, str(src), str(dst)]


@pytest.fixture(scope="module")
def mount_works(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (with the kernel's reason) where no read-only bind mount can be made without root."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux `unshare` is not installed: cannot make a private read-only bind mount")
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "src").mkdir()
    (tmp / "dst").mkdir()
    proc = subprocess.run(read_only_prefix(tmp / "src", tmp / "dst") + ["true"], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        pytest.skip("this kernel does not let an unprivileged process make a read-only bind mount "
                    f"(unshare -rm + mount --bind -o ro: exit {proc.returncode}, {proc.stderr.strip()[:200]})")
    probe = [sys.executable, "-c", "import os, sys; sys.exit(0 if os.statvfs(sys.argv[1]).f_flag & os.ST_RDONLY "
             "else 3)", str(tmp / "dst")]
    assert subprocess.run(read_only_prefix(tmp / "src", tmp / "dst") + probe, timeout=60).returncode == 0


def run_read_only(src: Path, dst: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` with ``src`` mounted read-only at ``dst``; its stdout/stderr are returned."""
    dst.mkdir(exist_ok=True)
    return subprocess.run(read_only_prefix(src, dst) + [sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=300)


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(path: Path, *, unsaved: int) -> None:
    """An index with 40 saved items (with captions) and ``unsaved`` more left in the journal."""
    with Index.create(path, bundle="b", space="s", dim=8) as idx:
        idx.add(unit(40, 8, 1), [{"path": f"/p/{i}.jpg", "caption": f"a photo number {i}"} for i in range(40)])
        idx.add(unit(5, 8, 2), [{"path": f"/p/{i}.jpg", "caption": f"caption {i}"} for i in range(5)], tower="text")
    idx = Index.open(path)
    idx.add(unit(unsaved, 8, 3), [{"path": f"/q/{i}.jpg"} for i in range(unsaved)])
    idx.close()  # not saved: the last vectors live in the journal of meta.sqlite only


READER = """
import json, sys
import numpy as np
from crossmodal.errors import IndexStoreError
from crossmodal.index import Index
path = sys.argv[1]
with Index.open(path, read_only=True) as idx:
    q = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
    hits = [[h.key for h in row] for row in idx.search(q, k=5, exact=True)]
    words = [h.key for h in idx.keyword_search("photo number 7", 3)]
    caps = {str(k): v for k, v in idx.captions_of(sorted(idx.keys())[:40]).items() if v}
    out = {"count": [idx.count("image"), idx.count("text")], "hits": hits, "words": words, "caps": len(caps)}
try:
    Index.open(path)
except IndexStoreError as exc:
    out["writer"] = str(exc)
print(json.dumps(out))
"""


def test_writer_leaves_no_wal_and_a_read_only_mount_reads_everything(mount_works: None, tmp_path: Path) -> None:
    src = tmp_path / "src" / "a.idx"
    src.parent.mkdir()
    build(src, unsaved=6)
    wal = src / "meta.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed by the writer's close

    with Index.open(src, read_only=True) as idx:  # the writable original, for comparison
        q = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
        want = {"count": [46, 5], "hits": [[h.key for h in row] for row in idx.search(q, k=5, exact=True)],
                "words": [h.key for h in idx.keyword_search("photo number 7", 3)],
                "caps": sum(1 for v in idx.captions_of(sorted(idx.keys())[:40]).values() if v)}
    assert want["caps"] > 0 and want["words"]
    before = sorted(p.name for p in src.iterdir())
    proc = run_read_only(tmp_path / "src", tmp_path / "ro", READER, str(tmp_path / "ro" / "a.idx"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "read-only file system" in got.pop("writer")  # a writer is refused, saying why
    assert got == want
    assert sorted(p.name for p in src.iterdir()) == before  # nothing was created beside the index


def test_a_reader_open_during_the_writers_close_still_leaves_an_empty_wal(tmp_path: Path) -> None:
    path = tmp_path / "a.idx"
    build(path, unsaved=0)
    writer = Index.open(path)
    reader = Index.open(path, read_only=True)
    writer.add(unit(3, 8, 9), [{"path": f"/r/{i}.jpg"} for i in range(3)])
    writer.close()  # the reader's connection keeps the WAL file; the checkpoint empties it
    wal = path / "meta.sqlite-wal"
    assert wal.exists() and wal.stat().st_size == 0
    reader.close()
    with Index.open(path, read_only=True) as idx:
        assert idx.count("image") == 43


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from crossmodal.index import Index
idx = Index.open(sys.argv[1])
idx.add(np.eye(8, dtype=np.float32)[:2], [{"path": "/late/0.jpg"}, {"path": "/late/1.jpg"}])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_index_whose_writer_was_killed_is_refused_on_a_read_only_mount(mount_works: None,
                                                                          tmp_path: Path) -> None:
    src = tmp_path / "src" / "a.idx"
    src.parent.mkdir()
    build(src, unsaved=0)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(src)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (src / "meta.sqlite-wal").stat().st_size > 0  # the last add lives in the WAL only
    proc = run_read_only(tmp_path / "src", tmp_path / "ro", READER, str(tmp_path / "ro" / "a.idx"))
    assert proc.returncode != 0
    assert "meta.sqlite-wal is not empty" in proc.stderr and "Index.open(" in proc.stderr
    Index.open(src).close()  # the fix the message gives: one writable open and close
    proc = run_read_only(tmp_path / "src", tmp_path / "ro", READER, str(tmp_path / "ro" / "a.idx"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == [42, 5]  # the killed writer's add is there


def test_on_read_only_file_system_is_false_here(tmp_path: Path) -> None:
    assert not on_read_only_file_system(tmp_path)


# --------------------------------------------------------------------------- CLI and service


@pytest.fixture(scope="module")
def photos(tiny_clip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`crossmodal index build` of the example images, captions embedded; under OUT/src/photos.idx."""
    out = tmp_path_factory.mktemp("ro") / "src" / "photos.idx"
    assert main(["index", "build", str(tiny_clip_bundle), "--images", str(EXAMPLES), "--captions",
                 str(EXAMPLES / "captions.jsonl"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_cli_search_on_a_read_only_mount(mount_works: None, tiny_clip_bundle: Path, photos: Path) -> None:
    want = Retriever(crossmodal.load(tiny_clip_bundle), Index.open(photos, read_only=True))
    expected = [h.key for h in want.search_text("a red circle", k=4, fuse="captions")]
    want.index.close()
    ro = photos.parent.parent / "ro"
    code = "import sys; from crossmodal.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = run_read_only(photos.parent, ro, code, "search", str(ro / photos.name), "a red circle", "-k", "4",
                         "--fuse", "captions", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [h["key"] for h in json.loads(proc.stdout)["results"]] == expected


def test_serve_read_only_on_a_read_only_mount(mount_works: None, tiny_clip_bundle: Path, photos: Path,
                                              tmp_path: Path) -> None:
    with Index.open(photos, read_only=True) as idx:
        want = [h.key for h in Retriever(crossmodal.load(tiny_clip_bundle), idx).search_text("a stop sign", k=3)]
    ro = tmp_path / "ro"
    ro.mkdir()
    log = tmp_path / "serve.log"
    cmd = read_only_prefix(photos.parent, ro) + [
        sys.executable, "-m", "crossmodal.serve", str(tiny_clip_bundle), "--index", str(ro / photos.name),
        "--read-only", "--host", "127.0.0.1", "--port", "0"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url, deadline = None, time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            if url is None:
                m = LISTENING.search(log.read_text(errors="replace"))
                url = m.group(1) if m else None
            if url and _get(f"{url}/health/ready") == 200:
                break
            time.sleep(0.1)
        req = urllib.request.Request(f"{url}/v1/search", data=json.dumps({"text": "a stop sign", "k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert [int(h["key"]) for h in json.loads(r.read())["hits"]] == want
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except OSError:
        return 0
