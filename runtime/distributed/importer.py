"""Importing shard files into an index in bulk.

Every shard is checked before anything is added: its metadata must name the index's
space and dim (else :class:`~crossmodal.errors.IncompatibleTowersError`) and its paths
must lie inside the index root (else :class:`~crossmodal.errors.InputError`). Then the
rows go in through :meth:`Index.add <crossmodal.index.Index.add>` in large batches (usearch
adds a batch on all cores) with the same rules as ``crossmodal index add``: a key already
present is skipped, a file whose content changed replaces the old vector stored at its
path. Error rows are not added; the report lists them.

Bulk, so without the add journal (``journal=False``): a vector is written once, into the
graph file, instead of into SQLite first and the graph file at the next compaction. The
rows become durable at each compaction (every ``compact_every`` rows, or a quarter of the
index, and at the end), whose commit point stores them with the graph files; a killed
import keeps every compaction it finished and a rerun adds the rest (present keys are
skipped). Shards of images are imported before shards of captions, whose items an image
replaced at the same path would otherwise remove.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from ..errors import IncompatibleTowersError, InputError
from ..index import Index, key_from_sha256
from ..index.format import relative_item_path
from ..ingest import SkippedFile
from ..inputs import positive_int
from ..progress import progress_bar
from .extras import import_pyarrow
from .shards import ShardMeta, read_shard, read_shard_meta, shard_files


@dataclass
class ImportReport:
    """What one :func:`import_shards` call did."""

    index: str
    shards: int = 0
    rows: int = 0
    added: int = 0            # images
    captions_added: int = 0   # caption items (text shards)
    already_indexed: int = 0  # keys present before, or repeated across the shards
    replaced: int = 0         # paths whose earlier content was replaced
    errors: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.index}: {self.shards} shard(s), {self.rows} row(s); {self.added} added, "
                 + (f"{self.captions_added} caption(s) added, " if self.captions_added else "")
                 + f"{self.already_indexed} already indexed, {self.replaced} changed since the last build, "
                 f"{len(self.errors)} not embedded; {self.seconds:.1f} s"]
        lines += [f"  skipped {e.path}: {e.reason}" for e in self.errors]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "shards": self.shards, "rows": self.rows, "added": self.added,
                "captions_added": self.captions_added,
                "already_indexed": self.already_indexed, "replaced": self.replaced,
                "seconds": round(self.seconds, 3),
                "skipped": [{"path": e.path, "reason": e.reason} for e in self.errors]}


def check_shard(index: Index, meta: ShardMeta, path: Path) -> None:
    """IncompatibleTowersError unless the shard's vectors are of ``index``'s space and dim."""
    if meta.space != index.space or meta.dim != index.dim:
        raise IncompatibleTowersError(
            f"shard {path} holds vectors of bundle {meta.bundle!r} (space {meta.space!r}, dim {meta.dim}) but "
            f"index {index.path} was built by bundle {index.bundle!r} (space {index.space!r}, dim {index.dim}); "
            "import it into an index of the same space, or re-embed with the index's bundle.")


def _check_paths(index: Index, path: Path) -> None:
    pa = import_pyarrow()
    for p in pa.parquet.read_table(path, columns=["path"]).column("path").to_pylist():
        relative_item_path(p, index.root)  # InputError naming the path and the root


def _vectors(table: Any, dim: int) -> np.ndarray:
    flat = table.column("vector").combine_chunks().flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def import_shards(index: Index, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 16384,
                  compact_every: int = 65536, progress: bool = True, stream: IO[str] | None = None) -> ImportReport:
    """Add the rows of shard files (or directories of them) to ``index``; see the module docstring.

    ``batch_size`` rows go into each :meth:`Index.add` call; the index is saved (the rows
    committed) every ``max(compact_every, len(index) // 4)`` rows added and at the end.
    """
    batch_size = positive_int("batch_size", batch_size)
    compact_every = positive_int("compact_every", compact_every)
    t0 = time.monotonic()
    files = shard_files(paths)
    modality = {}
    for f in files:  # refuse before changing anything
        meta = read_shard_meta(f)
        check_shard(index, meta, f)
        _check_paths(index, f)
        modality[f] = meta.modality
    files.sort(key=lambda f: modality[f] != "image")  # stable: images first, else in the order given
    pa = import_pyarrow()
    pc = pa.compute
    report = ImportReport(index=str(index.path), shards=len(files))
    bar = progress_bar(len(files), desc="importing", enabled=progress, stream=stream)
    since_compact = 0
    try:
        for f in files:
            meta, table = read_shard(f)
            report.rows += table.num_rows
            failed = table.filter(pc.is_valid(table.column("error")))
            report.errors += [SkippedFile(str(p), str(e)) for p, e in
                              zip(failed.column("path").to_pylist(), failed.column("error").to_pylist())]
            good = table.filter(pc.is_null(table.column("error")))
            for start in range(0, good.num_rows, batch_size):
                chunk = good.slice(start, batch_size)
                added = _add(index, meta, chunk, f, report)
                since_compact += added
                if since_compact >= max(compact_every, len(index) // 4):
                    index.save()
                    since_compact = 0
            bar.update()
        index.save()
    finally:
        bar.close()
        report.seconds = time.monotonic() - t0
    return report


def _add(index: Index, meta: ShardMeta, chunk: Any, shard: Path, report: ImportReport) -> int:
    keys = chunk.column("key").to_pylist()
    shas = chunk.column("sha256").to_pylist()
    paths = chunk.column("path").to_pylist()
    captions = chunk.column("caption").to_pylist()
    for k, s in zip(keys, shas):
        if k is None or s is None or key_from_sha256(s) != k:
            raise InputError(f"shard {shard}: key {k} does not match its sha256 {s!r}; the file was not written "
                             "by crossmodal or is damaged: re-create it.")
    metas = [{"path": p, "caption": c, "sha256": s} for p, c, s in zip(paths, captions, shas)]
    tower = meta.modality
    new = set(int(k) for k in index.add(_vectors(chunk, meta.dim), metas, keys=keys, tower=tower, journal=False))
    if tower == "image":
        report.added += len(new)
    else:
        report.captions_added += len(new)
    report.already_indexed += len(keys) - len(new)
    if tower == "image":
        for k, p in zip(keys, paths):
            if p is None or k not in new:
                continue
            # The file at this path changed: its old content is no longer there (as `index add` does).
            stale = [old for old in index.find_path(p) if old != k]
            if stale:
                index.remove(stale)
                index.remove(index.find_path(p, tower="text"), tower="text")
                report.replaced += 1
    return len(new)


__all__ = ["import_shards", "ImportReport", "check_shard"]
