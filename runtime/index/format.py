"""The index's on-disk format: file names, settings, keys, the header, and the checks on what goes in.

An index is one directory (format version :data:`FORMAT_VERSION`)::

    INDEX/header.json             bundle, space, dim, metric, dtype, counts, format version (a mirror, for humans)
    INDEX/meta.sqlite             items (key -> path, caption, sha256), the add journal, the committed state,
                                  the keyword (FTS5) tables; adding these kept format version 1
    INDEX/vectors.image.usearch   HNSW graph of the image vectors (absent until the first save)
    INDEX/vectors.text.usearch    HNSW graph of the caption vectors (only when captions were embedded)
    INDEX/.lock, .writer.lock     empty files the readers' and the writer's ``flock`` is taken on

This module holds those names, the supported metric/dtype/tower values, the HNSW
defaults, how a key is derived from content, the header mirror, item path rules, and
the constructor of an empty usearch graph with the recorded settings; the SQLite schema
is in :mod:`crossmodal.index.meta` (the FTS tables in :mod:`crossmodal.index.keyword`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InputError
from ..inputs import positive_int
from .native_imports import import_usearch

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as UsearchIndex

    from ..manifest import BundleInfo

FORMAT_VERSION = 1
HEADER_FILE = "header.json"
META_FILE = "meta.sqlite"
LOCK_FILE = ".lock"
WRITER_LOCK_FILE = ".writer.lock"
METRICS = ("cos", "ip")
DTYPES = ("f32", "f16", "i8")
TOWERS = ("image", "text")
# HNSW defaults chosen so that recall@10 against exact search is >= 0.99 on 100k random
# unit vectors of dim 64 (see crossmodal.bench.recall); random high-dim vectors are the hard case.
DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 256
DEFAULT_EXPANSION_SEARCH = 512
KEY_MASK = (1 << 63) - 1
# State fields the header mirrors (the rest of the state lives only in meta.sqlite).
HEADER_FIELDS = ("format_version", "bundle", "space", "dim", "metric", "dtype",
                 "connectivity", "expansion_add", "expansion_search", "generation")


def vectors_file(tower: str) -> str:
    """File name of the graph holding ``tower``'s vectors inside an index directory."""
    return f"vectors.{tower}.usearch"


def key_from_sha256(hexdigest: str) -> int:
    """A 63-bit key from a sha256 hex digest (63 bits: fits SQLite's signed INTEGER)."""
    return int(hexdigest[:16], 16) & KEY_MASK


def content_key(data: bytes) -> tuple[int, str]:
    """``(key, sha256 hex)`` of a file's bytes: identical content always gets the same key."""
    digest = hashlib.sha256(data).hexdigest()
    return key_from_sha256(digest), digest


def text_key(text: str) -> tuple[int, str]:
    """``(key, sha256 hex)`` of a caption's UTF-8 bytes."""
    return content_key(text.encode("utf-8"))


def caption_key(image_sha256: str, caption: str) -> tuple[int, str]:
    """``(key, sha256 hex)`` of a caption item of an image: of the image content's sha256 and
    the text, so the same words under another image are another item, and a rerun finds the
    captions it added (``index build --captions`` and ``index build --ray`` key them alike)."""
    return content_key(f"{image_sha256}\n{caption}".encode("utf-8"))


def check_setting(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else InputError naming the choices."""
    if value not in allowed:
        raise InputError(f"{name}={value!r} is not supported; use one of {list(allowed)}.")
    return str(value)


def as_matrix(vectors: ArrayLike, dim: int, what: str) -> tuple[NDArray[np.float32], bool]:
    """Float32 C-contiguous ``(n, dim)``; the flag says whether a single vector was given."""
    arr = np.asarray(vectors)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} must be a numeric array of shape (n, {dim}) or ({dim},), got dtype {arr.dtype}.")
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{what} have shape {tuple(np.asarray(vectors).shape)} but this index holds "
                         f"{dim}-dimensional vectors; encode with the bundle that built the index.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contain NaN or infinity; check the encoder output.")
    return arr, single


def escapes(rel: str) -> bool:
    """Whether a stored relative path leaves the index root (absolute, ``..`` or a drive letter)."""
    norm = posixpath.normpath(rel.replace("\\", "/"))
    return norm.startswith("/") or norm == ".." or norm.startswith("../") or (len(norm) > 1 and norm[1] == ":")


def relative_item_path(p: str | os.PathLike[str] | None, root: str | None) -> str | None:
    """How an item path is stored: POSIX, relative to ``root`` (as given when there is no root)."""
    if p is None:
        return None
    s = os.fspath(p)
    if root is None:
        return s
    rel = os.path.relpath(os.path.abspath(s), root) if os.path.isabs(s) else s
    rel = posixpath.normpath(rel.replace(os.sep, "/"))
    if escapes(rel):
        raise InputError(f"path {s!r} is outside the index root {root!r}; add files from inside it "
                         "or build a separate index.")
    return rel


def header_bytes(state: Mapping[str, Any], counts: Mapping[str, int]) -> bytes:
    """``header.json``: the settings and counts, a mirror for humans and tools."""
    header = {k: state[k] for k in HEADER_FIELDS}
    header["count"] = int(sum(counts.values()))
    header["counts"] = dict(counts)
    return (json.dumps(header, indent=2) + "\n").encode("utf-8")


def new_graph(dim: int, metric: str, dtype: str, connectivity: int, expansion_add: int,
              expansion_search: int) -> "UsearchIndex":
    """An empty usearch HNSW graph with these settings."""
    usearch_index = import_usearch()
    return usearch_index.Index(ndim=dim, metric=metric, dtype=dtype, connectivity=connectivity,
                               expansion_add=expansion_add, expansion_search=expansion_search)


def initial_state(bundle: "str | BundleInfo", *, dim: int | None, space: str | None, metric: str, dtype: str,
                  connectivity: int, expansion_add: int, expansion_search: int,
                  root: str | os.PathLike[str] | None, info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The validated state row of a new index (see :meth:`crossmodal.index.Index.create` for the arguments)."""
    if isinstance(bundle, str):
        name, bspace, bdim = bundle, space or bundle, dim
    else:
        name, bspace, bdim = bundle.name, bundle.space, bundle.dim
        if dim is not None and dim != bundle.dim:
            raise InputError(f"dim={dim} contradicts bundle {bundle.name!r} (dim {bundle.dim}).")
        if space is not None and space != bundle.space:
            raise InputError(f"space={space!r} contradicts bundle {bundle.name!r} (space {bundle.space!r}).")
    bdim = positive_int("dim", bdim)
    check_setting("metric", metric, METRICS)
    check_setting("dtype", dtype, DTYPES)
    connectivity = positive_int("connectivity", connectivity)
    expansion_add = positive_int("expansion_add", expansion_add)
    expansion_search = positive_int("expansion_search", expansion_search)
    return {
        "format_version": FORMAT_VERSION, "bundle": name, "space": bspace, "dim": bdim,
        "metric": metric, "dtype": dtype, "connectivity": connectivity,
        "expansion_add": expansion_add, "expansion_search": expansion_search,
        "root": None if root is None else os.path.abspath(root),
        "generation": 0, "files": {}, "created_at": time.time(), "info": dict(info or {}),
    }
