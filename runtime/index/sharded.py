"""One collection split across several index directories (shards), searched as one index.

:func:`open_many` opens the shards (read-only by default) as a :class:`ShardedIndex`: a
query goes to every shard at once (one thread per shard, in a pool the object owns) and
the shards' top-k lists are merged by score. Each shard is an ordinary
:class:`~crossmodal.index.Index`, so its hits, scores and search policy (exact scan up to
:attr:`~crossmodal.index.Index.exact_threshold` vectors, HNSW above) are its own; the
merged list of exact shard searches is exactly the exact search of the whole collection.

:func:`split_index` writes an existing index out as ``n`` shards, item ``key`` going to
shard ``key % n`` (keys are content hashes, so the shards come out about equal) and each
caption item to the shard of the image stored under the same path.

Shards are read through the same API as one index (``search``, ``get``, ``get_vectors``,
``captions_of``, ``keyword_search``, ``count``, ``uses_exact``, ``check_encoder``, ``warm_up``,
``close``), so
:class:`~crossmodal.retriever.Retriever` and the service take a ``ShardedIndex`` where
they take an ``Index``. Writing goes to one shard at a time (``sharded.shards[i]``): an
index has one writer, and which shard a new item belongs to is the writer's choice.

>>> from crossmodal.index.sharded import open_many, split_index                       # doctest: +SKIP
>>> paths = split_index("photos.idx", 4, "photos.shards")                             # doctest: +SKIP
>>> with open_many(paths) as shards:                                                  # doctest: +SKIP
...     Retriever(crossmodal.load("models/clip-vit-b-32"), shards).search_text("a dog", k=5)
"""

from __future__ import annotations

import heapq
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import IncompatibleTowersError, IndexStoreError, InputError
from ..inputs import optional_bool, positive_int
from .format import TOWERS, as_matrix, check_setting
from .records import ItemRecord, SearchResult
from .store import Index

# Items copied per step by split_index: bounds the vectors held in memory (64k x 512 f32 = 128 MB).
SPLIT_BATCH = 65536
_T = TypeVar("_T")


class ShardedIndex:
    """Several :class:`~crossmodal.index.Index` shards of one embedding space, searched as one.

    Build it with :func:`open_many` (which opens and owns the shards), or from open
    indexes: ``ShardedIndex([a, b])`` (closing it then closes them too). Shards of
    different spaces, dims or metrics are refused with
    :class:`~crossmodal.errors.IncompatibleTowersError` naming them; the same shard given
    twice is refused with :class:`~crossmodal.errors.InputError`.
    """

    def __init__(self, shards: Sequence[Index], *, threads: int | None = None) -> None:
        shards = list(shards)
        if not shards:
            raise InputError("a sharded index needs at least one shard; give one or more index directories.")
        seen: dict[str, int] = {}
        for i, s in enumerate(shards):
            real = os.path.realpath(s.path)
            if real in seen:
                raise InputError(f"shard {s.path} is given twice (positions {seen[real]} and {i}); "
                                 "each shard must be searched once or its hits would count twice.")
            seen[real] = i
        first = shards[0]
        for s in shards[1:]:
            if (s.space, s.dim, s.metric) != (first.space, first.dim, first.metric):
                raise IncompatibleTowersError(
                    f"shard {s.path} (space {s.space!r}, dim {s.dim}, metric {s.metric!r}) cannot be searched "
                    f"with shard {first.path} (space {first.space!r}, dim {first.dim}, metric {first.metric!r}): "
                    "their scores are not comparable. Search shards of one collection, split with "
                    "crossmodal.index.sharded.split_index or built by one bundle.")
        self._shards = shards
        self._closed = False
        # Default: one thread per core at most. An exact shard scan is a BLAS call that already
        # uses every core; more concurrent calls than cores only contend (measured: 4 threads on
        # 2 cores were slower than 1, see bench/shard_search.py).
        workers = min(len(shards), threads if threads is not None else (os.cpu_count() or 1))
        positive_int("threads", workers)
        # One shard needs no pool: its search runs in the caller's thread.
        self._pool = (ThreadPoolExecutor(workers, thread_name_prefix="crossmodal-shards")
                      if len(shards) > 1 else None)

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike[str]], *, read_only: bool = True, verify: bool = True,
             threads: int | None = None) -> "ShardedIndex":
        """Same as :func:`open_many`."""
        return open_many(paths, read_only=read_only, verify=verify, threads=threads)

    # ------------------------------------------------------------- properties

    @property
    def shards(self) -> tuple[Index, ...]:
        """The shard indexes, in the order given."""
        return tuple(self._shards)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The shard directories."""
        return tuple(s.path for s in self._shards)

    @property
    def path(self) -> str:
        """The shard directories as one string (``"a.idx, b.idx"``), for messages and reports."""
        return ", ".join(str(p) for p in self.paths)

    @property
    def bundle(self) -> str:
        return self._shards[0].bundle

    @property
    def space(self) -> str:
        return self._shards[0].space

    @property
    def dim(self) -> int:
        return self._shards[0].dim

    @property
    def metric(self) -> str:
        return self._shards[0].metric

    @property
    def info(self) -> dict[str, Any]:
        """The first shard's recorded facts (bundle path, variant, ...)."""
        return self._shards[0].info

    @property
    def root(self) -> str | None:
        """The first shard's root (each shard resolves its own item paths)."""
        return self._shards[0].root

    @property
    def read_only(self) -> bool:
        return all(s.read_only for s in self._shards)

    @property
    def exact_threshold(self) -> int:
        """The largest of the shards' exact thresholds; setting it sets every shard's."""
        return max(s.exact_threshold for s in self._shards)

    @exact_threshold.setter
    def exact_threshold(self, value: int) -> None:
        for s in self._shards:
            s.exact_threshold = value

    @property
    def expansion_search(self) -> int:
        return max(s.expansion_search for s in self._shards)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        for s in self._shards:
            s.expansion_search = value

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards)

    def count(self, tower: str | None = None) -> int:
        """Number of vectors of one tower (or all), over every shard."""
        return sum(s.count(tower) for s in self._shards)

    def uses_exact(self, tower: str = "image") -> bool:
        """Whether a default search of ``tower`` scans every vector of every shard."""
        return all(s.uses_exact(tower) for s in self._shards)

    def contains(self, key: int, tower: str = "image") -> bool:
        return any(s.contains(key, tower) for s in self._shards)

    def find_path(self, path: str | os.PathLike[str], *, tower: str = "image") -> list[int]:
        """Keys of ``tower`` items stored under ``path``, from every shard."""
        return [key for s in self._shards for key in s.find_path(path, tower=tower)]

    def keys(self, tower: str = "image") -> set[int]:
        out: set[int] = set()
        for s in self._shards:
            out |= s.keys(tower)
        return out

    def __repr__(self) -> str:
        return (f"ShardedIndex({len(self._shards)} shards, bundle={self.bundle!r}, dim={self.dim}, "
                f"metric={self.metric!r}, image={self.count('image')}, text={self.count('text')})")

    # ------------------------------------------------------------- reading

    def get(self, key: int, *, tower: str = "image") -> ItemRecord | None:
        """Metadata of one key from the shard that holds it, or None."""
        for s in self._shards:
            rec = s.get(key, tower=tower)
            if rec is not None:
                return rec
        return None

    def items(self, *, tower: str | None = None) -> Iterator[ItemRecord]:
        """Every shard's item records, shard after shard."""
        for s in self._shards:
            yield from s.items(tower=tower)

    def search(self, vectors: ArrayLike, k: int = 10, *, tower: str = "image", exact: bool | None = None,
               where: Any = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Top-``k`` over all shards for one query vector (-> list) or a batch (-> list of lists).

        Every shard answers its own top-``k`` (in parallel) and the lists are merged by score
        (ties by key, so the order is deterministic); a key held by two shards counts once.
        ``exact`` and ``where`` mean what they mean for :meth:`crossmodal.index.Index.search`
        and are applied by each shard.
        """
        self._check_open()
        k = positive_int("k", k)
        exact = optional_bool("exact", exact)
        check_setting("tower", tower, TOWERS)
        mat, single = as_matrix(vectors, self.dim, "query vectors")
        if len(mat) == 0:
            return []
        per_shard = self._each(lambda s: s.search(mat, k, tower=tower, exact=exact, where=where))
        out = [_merge([rows[i] for rows in per_shard], k) for i in range(len(mat))]
        return out[0] if single else out

    def keyword_search(self, query: str, k: int = 10, *, tower: str = "image", where: Any = None
                       ) -> list[SearchResult]:
        """Every shard's :meth:`crossmodal.index.Index.keyword_search` hits merged by BM25 score.

        Each shard ranks by its own word statistics, so the merged order is close to, not
        exactly, the order one index of all items would give.
        """
        self._check_open()
        k = positive_int("k", k)
        return _merge(self._each(lambda s: s.keyword_search(query, k, tower=tower, where=where)), k)

    def get_vectors(self, keys: int | Sequence[int] | NDArray[np.integer], *, tower: str = "image",
                    where: Any = None) -> tuple[NDArray[np.float32], list[int]]:
        """The stored vectors of ``keys``, each from the shard that holds it: ``(vectors, missing)``
        as :meth:`crossmodal.index.Index.get_vectors` (rows of keys no shard holds are NaN)."""
        self._check_open()
        karr = np.atleast_1d(np.asarray(keys)).reshape(-1)
        parts = self._each(lambda s: s.get_vectors(karr, tower=tower, where=where))
        vecs = np.full((len(karr), self.dim), np.nan, dtype=np.float32)
        found = np.zeros(len(karr), dtype=bool)
        for part, missing in parts:
            here = ~np.isin(karr.astype(np.uint64), np.asarray(missing, dtype=np.uint64)) & ~found
            vecs[here], found[here] = part[here], True
        return vecs, [int(k) for k in karr[~found]]

    def captions_of(self, image_keys: Sequence[int] | NDArray[np.integer]) -> dict[int, list[tuple[int, str]]]:
        """For each image key, its caption items ``(text key, caption)`` from every shard.

        A shard finds the captions stored under the paths of the images it holds:
        :func:`split_index` keeps each caption in its image's shard.
        """
        self._check_open()
        out: dict[int, list[tuple[int, str]]] = {}
        for part in self._each(lambda s: s.captions_of(image_keys)):
            for key, caps in part.items():
                out.setdefault(key, []).extend(caps)
        return out

    def _each(self, fn: Callable[[Index], _T]) -> list[_T]:
        """``fn(shard)`` for every shard, at once in the pool, in shard order."""
        if self._pool is None:
            return [fn(self._shards[0])]
        return list(self._pool.map(fn, self._shards))

    def _check_open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"sharded index [{self.path}] is closed.")

    def warm_up(self) -> None:
        """Warm every shard up (in parallel): see :meth:`crossmodal.index.Index.warm_up`."""
        self._each(lambda s: s.warm_up())

    def check_encoder(self, encoder: Any) -> None:
        """Raise IncompatibleTowersError unless ``encoder`` embeds into the shards' space and dim."""
        self._shards[0].check_encoder(encoder)

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close every shard and stop the search threads."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        _close_all(self._shards)

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            for s in self._shards:
                if not s.read_only:
                    s.save()
        self.close()


def _merge(lists: list[list[SearchResult]], k: int) -> list[SearchResult]:
    """The best ``k`` of several best-first hit lists; a key seen twice keeps its best hit."""
    out: list[SearchResult] = []
    seen: set[int] = set()
    for hit in heapq.merge(*lists, key=lambda h: (-h.score, h.key)):
        if hit.key in seen:
            continue
        seen.add(hit.key)
        out.append(hit)
        if len(out) == k:
            break
    return out


def _close_all(shards: Sequence[Index]) -> None:
    errors: list[BaseException] = []
    for s in shards:
        try:
            s.close()
        except BaseException as exc:  # noqa: BLE001 - every shard gets closed; the first error is raised
            errors.append(exc)
    if errors:
        raise errors[0]


def open_many(paths: Sequence[str | os.PathLike[str]], *, read_only: bool = True, verify: bool = True,
              threads: int | None = None) -> ShardedIndex:
    """Open index directories as the shards of one :class:`ShardedIndex`.

    ``read_only`` (default): no writer lock, so each shard can be written by its own writer
    process meanwhile (a reader sees the state of the moment it opened). ``verify``: as
    :meth:`crossmodal.index.Index.open`. ``threads``: shards searched at once (default: one per
    CPU core, at most one per shard).
    If one shard cannot be opened or does not match the others, the ones opened are closed.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    opened: list[Index] = []
    try:
        for p in paths:
            opened.append(Index.open(p, read_only=read_only, verify=verify))
        return ShardedIndex(opened, threads=threads)
    except BaseException:
        _close_all(opened)
        raise


def shard_of(key: int, n: int) -> int:
    """The shard (of ``n``) :func:`split_index` puts ``key`` in."""
    return int(key) % n


def split_index(src: "str | os.PathLike[str] | Index", n: int, out_dir: str | os.PathLike[str], *,
                connectivity: int | None = None, expansion_add: int | None = None) -> list[Path]:
    """Write the items of index ``src`` into ``n`` new indexes ``out_dir/shard-000`` ... by ``key % n``
    (a caption item follows the image stored under its path).

    Each shard keeps the source's bundle, space, dim, metric, dtype, root and info (plus
    ``info["shard"] = "i/n"``) and its HNSW settings unless ``connectivity`` /
    ``expansion_add`` are given. Both towers are split; keys, paths, captions and extras
    are kept, so searching the shards with :func:`open_many` answers what the source
    answers. ``src`` is read only (an open :class:`Index` or a directory, opened read-only).
    Returns the shard paths.
    """
    n = positive_int("n", n)
    own = not isinstance(src, Index)
    source = Index.open(src, read_only=True) if own else src  # type: ignore[arg-type]
    out = Path(out_dir)
    try:
        paths = [out / f"shard-{i:03d}" for i in range(n)]
        shards = []
        try:
            for i, p in enumerate(paths):
                shards.append(Index.create(
                    p, bundle=source.bundle, dim=source.dim, space=source.space, metric=source.metric,
                    dtype=source.dtype, connectivity=connectivity or source.connectivity,
                    expansion_add=expansion_add or source.expansion_add,
                    expansion_search=source.expansion_search, root=source.root,
                    info={**source.info, "shard": f"{i}/{n}"}))
            # A caption item goes to the shard of the image stored under its path (captions_of and
            # keyword search join them within one index); other items go by key.
            image_shard: dict[str, int] = {}
            for tower in ("image", "text"):
                batch: list[ItemRecord] = []
                for rec in source.items(tower=tower):
                    batch.append(rec)
                    if len(batch) == SPLIT_BATCH:
                        _copy(source, shards, tower, batch, image_shard)
                        batch = []
                _copy(source, shards, tower, batch, image_shard)
            for s in shards:
                s.save()  # commits the copied items (added without the journal) with the graph files
            _keep_added_times(source, shards)
        finally:
            _close_all(shards)
    finally:
        if own:
            source.close()
    return paths


def _keep_added_times(source: Index, shards: list[Index]) -> None:
    """Give each copied item its source's ``added_at`` (``where={"added_after": ...}`` filters on it)."""
    # Index.add stamps the time of the add and offers no way to pass one: same package, so the
    # metadata tables are read and updated directly, in one transaction per shard.
    with source._meta.guard():
        rows = source._meta.conn.execute("SELECT added_at, tower, key FROM items").fetchall()
    for shard in shards:
        mine = [r for r in rows if shard.contains(int(r[2]), r[1])]
        with shard._meta.transaction() as conn:
            conn.executemany("UPDATE items SET added_at = ? WHERE tower = ? AND key = ?", mine)


def _copy(source: Index, shards: list[Index], tower: str, batch: list[ItemRecord],
          image_shard: dict[str, int]) -> None:
    if not batch:
        return
    n = len(shards)
    keys = np.asarray([r.key for r in batch], dtype=np.uint64)
    vecs, _ = source.get_vectors(keys, tower=tower)  # every key is held: items() lists only those
    if tower == "image":
        dest = keys % np.uint64(n)
        image_shard.update((r.path, int(d)) for r, d in zip(batch, dest) if r.path is not None)
    else:
        dest = np.asarray([image_shard.get(r.path, shard_of(r.key, n)) if r.path is not None else shard_of(r.key, n)
                           for r in batch], dtype=np.uint64)
    for i, shard in enumerate(shards):
        rows = np.flatnonzero(dest == i)
        if len(rows):
            metas = [{"path": batch[j].path, "caption": batch[j].caption, "sha256": batch[j].sha256,
                      **batch[j].extra} for j in rows]
            # Without the journal: each vector is written once, by the shard's save.
            shard.add(vecs[rows], metas, keys=keys[rows], tower=tower, journal=False)


__all__ = ["ShardedIndex", "open_many", "split_index", "shard_of", "SPLIT_BATCH"]
