"""Folder ingestion: walk a folder, hash, decode in worker threads while the model runs, add to an index.

The pipeline keeps both cores busy: the shared decode pool (:mod:`crossmodal.decode_pool`)
reads, hashes and decodes/preprocesses upcoming files (PIL and numpy release the GIL)
while the main thread runs the image tower on the current fixed-size batch (onnxruntime
releases the GIL too).

Resumable by construction: every batch is committed to the index journal as soon as it
is embedded, and a file's key is the sha256 of its bytes, so a rerun only hashes files
already indexed and never embeds them twice. Unreadable files are skipped and reported
with the reason; nothing else is lost.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np
from numpy.typing import NDArray

from .decode_pool import cancel, decode_pool
from .errors import CrossmodalError, InputError
from .index import Index, content_key, key_from_sha256
from .index.format import caption_key
from .inputs import positive_int
from .progress import progress_bar

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTION_IMAGE_FIELDS = ("image", "filename", "file", "path")
CAPTION_TEXT_FIELDS = ("caption", "text", "captions")


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not indexed and why."""

    path: str
    reason: str


@dataclass
class IngestReport:
    """What one :func:`ingest_folder` run did."""

    folder: str
    found: int = 0
    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    replaced: int = 0
    captions_added: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Newly embedded images per second of wall time."""
        return self.added / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """Human-readable summary listing every skipped file."""
        lines = [
            f"{self.folder}: {self.found} image file(s); {self.added} embedded, {self.already_indexed} already "
            f"indexed, {self.duplicates} duplicate content, {self.replaced} changed since the last build, "
            f"{len(self.skipped)} skipped"
            + (f"; {self.captions_added} caption(s) embedded" if self.captions_added else "")
            + f"; {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        ]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "found": self.found, "added": self.added,
                "already_indexed": self.already_indexed, "duplicates": self.duplicates, "replaced": self.replaced,
                "captions_added": self.captions_added, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


# --------------------------------------------------------------------------- walking


def walk_images(folder: str | os.PathLike[str]) -> tuple[list[Path], list[SkippedFile]]:
    """Image files under ``folder`` (sorted, symlinks followed once) and the files passed over.

    Directories reached twice through symlinks (loops, or two links to one place) are
    entered once; broken links, non-regular files and files whose extension is not an
    image format are reported as skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--images {root} is not a directory; point it at a folder of images.")
    images: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: dict[tuple[int, int], str] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(SkippedFile(str(d), f"cannot list directory ({exc.strerror or exc})"))
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            skipped.append(SkippedFile(str(d), f"directory already visited as {seen[ident]} (symlink loop or alias)"))
            continue
        seen[ident] = str(d)
        subdirs = []
        for e in entries:
            p = Path(e.path)
            try:
                s = os.stat(p)  # follows symlinks
            except OSError:
                skipped.append(SkippedFile(str(p), "broken symbolic link" if e.is_symlink() else "cannot stat file"))
                continue
            if stat.S_ISDIR(s.st_mode):
                subdirs.append(p)
            elif not stat.S_ISREG(s.st_mode):
                skipped.append(SkippedFile(str(p), "not a regular file"))
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(str(p), f"not an image file (extension {p.suffix or 'none'!r})"))
            else:
                images.append(p)
        stack.extend(reversed(subdirs))
    return images, skipped


def read_captions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Captions from a ``.jsonl`` (one object per line) or ``.csv`` (header row) file.

    Each record names the image in one of ``image``/``filename``/``file``/``path``
    (relative to the images folder, or a bare file name) and its text in
    ``caption``/``text`` (or a ``captions`` list). Several records may name one image.
    """
    p = Path(path)
    records: list[Mapping[str, Any]] = []
    try:
        if p.suffix.lower() == ".jsonl":
            with open(p, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise InputError(f"{p}:{n}: expected a JSON object per line.")
                        records.append(obj)
        elif p.suffix.lower() == ".csv":
            with open(p, encoding="utf-8", newline="") as f:
                records = list(csv.DictReader(f))
        else:
            raise InputError(f"--captions {p}: use a .jsonl or .csv file.")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"--captions {p} is unreadable ({exc}).") from exc
    out: dict[str, list[str]] = {}
    for n, rec in enumerate(records, 1):
        image = next((rec[k] for k in CAPTION_IMAGE_FIELDS if rec.get(k)), None)
        text = next((rec[k] for k in CAPTION_TEXT_FIELDS if rec.get(k)), None)
        if not isinstance(image, str) or text is None:
            raise InputError(f"{p} record {n} needs an image field ({'/'.join(CAPTION_IMAGE_FIELDS)}) and a "
                             f"caption field ({'/'.join(CAPTION_TEXT_FIELDS)}).")
        texts = text if isinstance(text, list) else [text]
        out.setdefault(image.replace("\\", "/"), []).extend(str(t) for t in texts)
    return out


# --------------------------------------------------------------------------- pipeline


@dataclass
class _Prepared:
    path: Path
    status: str  # "new", "known", "duplicate", "skip"
    sha256: str = ""
    pixels: NDArray[np.float32] | None = None
    reason: str = ""


class _Preparer:
    """Reads, hashes and decodes one file in a worker thread."""

    def __init__(self, index: Index, tower: Any) -> None:
        # Keys present before this run, as a plain set: workers must not query the graph while
        # the main thread adds to it; keys added during the run are tracked in `claimed`.
        self.known = index.keys("image")
        self.tower = tower
        self.claimed: dict[int, Path] = {}
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> _Prepared:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return _Prepared(path, "skip", reason=f"unreadable ({exc.strerror or exc})")
        if not data:
            return _Prepared(path, "skip", reason="empty file")
        key, digest = content_key(data)
        if key in self.known:
            return _Prepared(path, "known", digest)
        with self.lock:
            first = self.claimed.setdefault(key, path)
        if first != path:
            return _Prepared(path, "duplicate", digest, reason=f"same content as {first}")
        try:
            pixels = self.tower.preprocess_one(data)
        except CrossmodalError as exc:
            return _Prepared(path, "skip", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not stop the build
            return _Prepared(path, "skip", reason=f"decoder failed: {type(exc).__name__}: {exc}")
        return _Prepared(path, "new", digest, pixels)


def _run_tower(tower: Any, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    run = getattr(tower, "run_pixels", None) or tower.run
    return np.asarray(run(pixels), dtype=np.float32)


def caption_lookup(captions: Mapping[str, list[str]] | None, folder: Path, path: Path) -> list[str]:
    """The captions of the image at ``path`` under ``folder``: those listed under its path relative
    to the folder, else under its file name (the rule of ``index build --captions``)."""
    if not captions:
        return []
    rel = path.relative_to(folder).as_posix()
    return list(captions.get(rel) or captions.get(path.name) or [])


def ingest_folder(index: Index, encoder: Any, folder: str | os.PathLike[str], *,
                  captions: Mapping[str, list[str]] | None = None, batch_size: int = 32, workers: int = 2,
                  progress: bool = True, stream: IO[str] | None = None,
                  compact_every: int = 4096) -> IngestReport:
    """Embed every new image under ``folder`` into ``index`` and return a report.

    ``batch_size`` images go through the model at once (the last batch may be smaller);
    ``workers`` threads of the shared decode pool decode ahead. ``progress`` draws a
    bar on ``stream`` (stderr by default). With ``captions`` (see :func:`read_captions`) each
    new image's first caption is stored as its metadata and, when the encoder has a text
    tower, every caption is embedded into the index's ``text`` tower (image -> text search).
    The index journal makes every batch durable; the graph files are compacted when the
    journal exceeds ``max(compact_every, len(index) // 4)`` vectors and at the end, so an
    interrupted run loses at most the batch in flight.
    """
    batch_size = positive_int("batch_size", batch_size)
    workers = positive_int("workers", workers)
    compact_every = positive_int("compact_every", compact_every)
    if encoder.image is None:
        raise InputError(f"bundle {encoder.bundle.name!r} was loaded without an image tower; load it with "
                         "modality=None or 'image' to index images.")
    index.check_encoder(encoder)
    # Absolute paths: the index stores them relative to its own root, not to the cwd.
    folder = Path(os.path.abspath(folder))
    t0 = time.monotonic()
    files, skipped = walk_images(folder)
    report = IngestReport(folder=str(folder), found=len(files), skipped=skipped)
    bar = progress_bar(len(files), desc="indexing", enabled=progress, stream=stream)
    preparer = _Preparer(index, encoder.image)
    embed_text = bool(captions) and getattr(encoder, "text", None) is not None
    batch: list[_Prepared] = []
    since_compact = 0

    text_rows: list[tuple[str, dict[str, Any]]] = []

    def queue_captions(item: _Prepared, caps: list[str]) -> None:
        # Captions are keyed by (image content, text): re-running adds only new ones, and a
        # duplicate file's own captions are kept under its own path.
        if embed_text:
            for c in caps:
                sha = caption_key(item.sha256, c)[1]
                text_rows.append((c, {"path": str(item.path), "caption": c, "sha256": sha}))

    def flush() -> None:
        nonlocal since_compact
        if batch:
            vecs = _run_tower(encoder.image, np.stack([b.pixels for b in batch]))  # type: ignore[misc]
            metas = []
            for b in batch:
                caps = caption_lookup(captions, folder, b.path)
                metas.append({"path": str(b.path), "caption": caps[0] if caps else None, "sha256": b.sha256})
            report.added += len(index.add(vecs, metas))
            for b in batch:
                # The file at this path changed: its old content is no longer in the folder.
                new_key = key_from_sha256(b.sha256)
                stale = [k for k in index.find_path(b.path) if k != new_key]
                if stale:
                    index.remove(stale)
                    index.remove(index.find_path(b.path, tower="text"), tower="text")
                    report.replaced += 1
                queue_captions(b, caption_lookup(captions, folder, b.path))
            since_compact += len(batch)
            batch.clear()
        if text_rows:
            tvecs = encoder.encode_text([t for t, _ in text_rows])
            report.captions_added += len(index.add(tvecs, [m for _, m in text_rows], tower="text"))
            since_compact += len(text_rows)
            text_rows.clear()
        if since_compact >= max(compact_every, len(index) // 4):
            index.save()
            since_compact = 0

    window = 2 * batch_size + workers  # enough queued work for the pool to decode the next batch meanwhile
    pool = decode_pool(workers)
    pending: deque[Future[_Prepared]] = deque()
    todo = iter(files)
    try:
        for path in todo:
            pending.append(pool.submit(preparer, path))
            if len(pending) >= window:
                break
        while pending:
            item = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(preparer, nxt))
            if item.status == "new":
                batch.append(item)
                if len(batch) >= batch_size:
                    flush()
            elif item.status in ("known", "duplicate"):
                if item.status == "known":
                    report.already_indexed += 1
                else:
                    report.duplicates += 1
                queue_captions(item, caption_lookup(captions, folder, item.path))
                if len(text_rows) >= batch_size:
                    flush()
            else:
                report.skipped.append(SkippedFile(str(item.path), item.reason))
            bar.set_postfix(embedded=report.added + len(batch), refresh=False)
            bar.update()
        flush()
        index.save()
    finally:
        # Files queued but not started are dropped; running ones only read and decode.
        cancel(pending)
        report.seconds = time.monotonic() - t0
        bar.set_postfix(embedded=report.added, refresh=False)
        bar.close()
    return report


__all__ = ["IngestReport", "SkippedFile", "walk_images", "read_captions", "caption_lookup", "ingest_folder",
           "IMAGE_EXTENSIONS"]
