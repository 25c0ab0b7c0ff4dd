"""Shard files: parquet files of embedded items, planned deterministically, written atomically.

A shard holds one deterministic slice of the sorted input list::

    shard-000042-<16 hex>.parquet   columns key (int64), path, caption, sha256 (strings),
                                    vector (fixed-size list of float32), error (string)
    shard-text-000003-<16 hex>.parquet   the same for caption items (text tower), embedded
                                    after the images (a caption's key needs its image's content)

The hex is a digest of the slice's inputs (paths, captions, file sizes and mtimes) and
of what embeds them (bundle, space, dim, variant, modality): a re-run finds the shards
it already wrote by name and skips them, and a changed input or bundle gets a new name
instead of a stale shard. Rows whose ``error`` is set have no vector. The parquet
schema metadata (key :data:`METADATA_KEY`) records the bundle, space, dim and variant,
which ``crossmodal index import`` checks against the index before adding anything.

Files appear atomically (written to ``<name>.tmp``, fsynced, renamed, directory
fsynced), so a shard file that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..durable_files import atomic_write_bytes
from ..errors import InputError
from ..inputs import positive_int
from .extras import import_pyarrow

SHARD_FORMAT = 1
METADATA_KEY = b"crossmodal.shard"
SHARD_COLUMNS = ("key", "path", "caption", "sha256", "vector", "error")
SHARD_GLOB = "shard-*.parquet"


@dataclass(frozen=True)
class ShardItem:
    """One input: an image file's path and its optional caption (for text shards: the caption
    is the text embedded, the path optional).

    ``of_sha256`` (text shards): the sha256 of the content of the image this caption
    describes; the item is then keyed as ``index build --captions`` keys a caption
    (:func:`crossmodal.index.format.caption_key`), else by its text alone.
    """

    path: str | None
    caption: str | None = None
    of_sha256: str | None = None


@dataclass(frozen=True)
class Embedding:
    """What turns the inputs into vectors; part of every shard's name and metadata."""

    bundle: str
    space: str
    dim: int
    variant: str
    modality: str = "image"
    bundle_path: str | None = None

    def identity(self) -> dict[str, Any]:
        """The fields that change the vectors (the bundle's location does not)."""
        return {"bundle": self.bundle, "space": self.space, "dim": self.dim, "variant": self.variant,
                "modality": self.modality}


@dataclass(frozen=True)
class ShardPlan:
    """Slice ``number`` of the sorted inputs and the digest that names its file."""

    number: int
    items: tuple[ShardItem, ...]
    digest: str
    modality: str = "image"

    @property
    def name(self) -> str:
        kind = "" if self.modality == "image" else f"{self.modality}-"
        return f"shard-{kind}{self.number:06d}-{self.digest[:16]}.parquet"


@dataclass(frozen=True)
class ShardMeta:
    """The schema metadata of a shard file."""

    format: int
    bundle: str
    space: str
    dim: int
    variant: str
    modality: str
    bundle_path: str | None
    shard: int
    inputs: str
    rows: int
    errors: int


def _stat_token(path: str) -> str:
    # Size and mtime: a file rewritten under the same name changes its shard's digest.
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def plan_shards(items: Iterable[ShardItem], shard_size: int, embedding: Embedding, *,
                stat_files: bool = True) -> list[ShardPlan]:
    """Cut the inputs, sorted by path then caption, into slices of ``shard_size`` items.

    ``stat_files``: fold each file's size and mtime into the digest (off for text shards).
    """
    shard_size = positive_int("shard_size", shard_size)
    ordered = sorted(items, key=lambda it: (it.path or "", it.caption or "", it.of_sha256 or ""))
    head = json.dumps(embedding.identity(), sort_keys=True).encode("utf-8")
    plans = []
    for number, start in enumerate(range(0, len(ordered), shard_size)):
        chunk = tuple(ordered[start:start + shard_size])
        h = hashlib.sha256(head)
        for it in chunk:
            fields = [it.path or "", it.caption or "", _stat_token(it.path) if stat_files and it.path else ""]
            if it.of_sha256 is not None:  # only then: the names of image shards stay as they were
                fields.append(it.of_sha256)
            h.update(json.dumps(fields).encode("utf-8") + b"\n")
        plans.append(ShardPlan(number, chunk, h.hexdigest(), embedding.modality))
    return plans


def shard_schema(dim: int) -> Any:
    from .embed import vector_type

    pa = import_pyarrow()
    return pa.schema([("key", pa.int64()), ("path", pa.string()), ("caption", pa.string()),
                      ("sha256", pa.string()), ("vector", vector_type(dim)), ("error", pa.string())])


def write_shard(path: Path, rows: Any, embedding: Embedding, plan: ShardPlan) -> ShardMeta:
    """Write ``rows`` (a pyarrow table with the shard columns) to ``path`` atomically; returns its metadata."""
    pa = import_pyarrow()
    pq = pa.parquet
    table = rows.select(list(SHARD_COLUMNS)).cast(shard_schema(embedding.dim))
    table = table.sort_by([("path", "ascending"), ("caption", "ascending")])
    meta = ShardMeta(format=SHARD_FORMAT, shard=plan.number, inputs=plan.digest, rows=table.num_rows,
                     errors=table.num_rows - table.column("error").null_count, **asdict(embedding))
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(asdict(meta)).encode("utf-8")})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return meta


def _meta_from_schema(path: Path, schema: Any) -> ShardMeta:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(f"{path} is not a crossmodal shard file (no {METADATA_KEY.decode()} metadata); "
                         "write shards with `crossmodal index build --ray` or crossmodal.distributed.")
    try:
        fields = json.loads(raw)
        meta = ShardMeta(**fields)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: malformed shard metadata ({exc}); re-create the shard.") from exc
    if meta.format != SHARD_FORMAT:
        raise InputError(f"{path}: shard format {meta.format} is not supported (expects {SHARD_FORMAT}); "
                         "re-create the shard with this version of crossmodal.")
    return meta


def read_shard_meta(path: str | os.PathLike[str]) -> ShardMeta:
    """The metadata of a shard file (reads only the parquet footer)."""
    pa = import_pyarrow()
    p = Path(path)
    try:
        schema = pa.parquet.read_schema(p)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{p} is not a readable parquet file ({exc}).") from exc
    return _meta_from_schema(p, schema)


def read_shard(path: str | os.PathLike[str]) -> tuple[ShardMeta, Any]:
    """``(metadata, table)`` of a shard file, its columns and vector width checked."""
    pa = import_pyarrow()
    p = Path(path)
    meta = read_shard_meta(p)
    try:
        table = pa.parquet.read_table(p)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{p} is not a readable parquet file ({exc}).") from exc
    expected = shard_schema(meta.dim)
    if table.schema.remove_metadata() != expected:
        raise InputError(f"{p}: columns {table.schema.names} with types {[str(t) for t in table.schema.types]} "
                         f"differ from a shard's ({expected.names}, vector of {meta.dim} float32); "
                         "re-create the shard.")
    return meta, table


def finished(path: Path, plan: ShardPlan) -> bool:
    """Whether ``path`` is a complete shard of ``plan`` (same inputs digest); a damaged file is not."""
    if not path.is_file():
        return False
    try:
        return read_shard_meta(path).inputs == plan.digest
    except InputError:
        return False


def shard_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Shard files named by ``paths``: files as given, directories expanded to their ``shard-*.parquet``."""
    out: list[Path] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(p.glob(SHARD_GLOB))
            if not found:
                raise InputError(f"{p} holds no shard files ({SHARD_GLOB}).")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"shard file {p} does not exist.")
    return out


__all__ = ["ShardItem", "Embedding", "ShardPlan", "ShardMeta", "plan_shards", "shard_schema", "write_shard",
           "read_shard", "read_shard_meta", "finished", "shard_files", "SHARD_COLUMNS", "SHARD_FORMAT",
           "METADATA_KEY", "SHARD_GLOB"]
