"""Open-time recovery of an index: pick the graph file that matches the committed digest,
roll a save forward or back, replay the journal, and check the header mirror.

See the durability model in :mod:`crossmodal.index.store` for why each case is safe.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..durable_files import atomic_write_bytes, fsync_dir, matches_digest
from ..errors import IndexStoreError
from .format import HEADER_FILE, META_FILE, TOWERS, header_bytes, new_graph, vectors_file
from .meta import MetaStore

if TYPE_CHECKING:  # pragma: no cover
    from usearch.index import Index as UsearchIndex


def load_graph(path: Path, state: Mapping[str, Any], tower: str, *, read_only: bool, repair: bool,
               verify: bool, repairs: list[str]) -> tuple["UsearchIndex", bool]:
    """``(graph, dirty)`` for ``tower`` of the index at ``path``; ``dirty``: it must be saved again.

    ``verify``: check the final file's sha256 (else only its size). With ``repair`` a file
    matching no committed digest gives an empty graph (noted in ``repairs``) instead of an error.
    """
    graph = new_graph(int(state["dim"]), str(state["metric"]), str(state["dtype"]), state["connectivity"],
                      state["expansion_add"], state["expansion_search"])
    committed = (state.get("files") or {}).get(tower)
    final = path / vectors_file(tower)
    tmp = final.with_name(final.name + ".tmp")
    if committed is None:
        if tmp.exists() and not read_only:
            tmp.unlink()  # a save that died before its commit point
        return graph, False
    source = None
    if final.exists() and matches_digest(final, committed, full=verify or tmp.exists()):
        source = final
    elif tmp.exists() and matches_digest(tmp, committed, full=True):
        source = tmp
    if source is None:
        msg = f"{final} does not match the committed digest in {META_FILE} (missing, truncated or replaced)"
        if not repair:
            raise IndexStoreError(msg + ". Restore it from a backup, or open with repair=True to drop its "
                                  "items (the next build re-embeds them).")
        repairs.append(msg + ": started from an empty graph")
        return graph, True
    try:
        graph.load(str(source))
    except (RuntimeError, ValueError, OSError) as exc:
        raise IndexStoreError(f"{source} cannot be read by usearch ({exc}); it is corrupt.") from exc
    if graph.ndim != state["dim"]:
        raise IndexStoreError(f"{source} holds {graph.ndim}-d vectors but the index records dim {state['dim']}.")
    graph.expansion_search = int(state["expansion_search"])
    if not read_only:
        if source is tmp:
            os.replace(tmp, final)  # crash after the commit point: roll forward
            fsync_dir(path)
        elif tmp.exists():
            tmp.unlink()
    return graph, False


def replay_journal(graph: "UsearchIndex", journal: list[tuple[int, bytes]], present: set[int], dim: int,
                   meta_path: Path) -> list[int]:
    """Add journaled vectors the graph file lacks (committed by ``add`` since the last save)."""
    keys, vecs = [], []
    for key, blob in journal:
        if key not in present:
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape != (dim,):
                raise IndexStoreError(f"{meta_path}: journal vector {key} has {vec.size} "
                                      f"values, expected {dim}; the file is corrupt.")
            keys.append(key)
            vecs.append(vec)
    if keys:
        graph.add(np.asarray(keys, dtype=np.uint64), np.stack(vecs))
    return keys


def header_agrees(path: Path, state: Mapping[str, Any]) -> bool:
    """Whether ``header.json`` exists and names the same format, bundle, space, dim, metric and dtype."""
    try:
        header = json.loads((path / HEADER_FILE).read_bytes())
        return isinstance(header, dict) and all(
            header.get(k) == state[k] for k in ("format_version", "bundle", "space", "dim", "metric", "dtype"))
    except (OSError, ValueError):
        return False


def header_is_current(path: Path, generation: int, count: int) -> bool:
    """Whether ``header.json`` records this generation and count (a kill between the commit
    point and the header rewrite leaves stale counts, which the writer rolls forward)."""
    try:
        header = json.loads((path / HEADER_FILE).read_bytes())
    except (OSError, ValueError):
        header = {}
    return header.get("generation") == generation and header.get("count") == count


@dataclass
class Recovered:
    """What :func:`recover` found: the committed state, one graph per tower, towers to save, repairs made."""

    state: dict[str, Any]
    graphs: dict[str, "UsearchIndex"] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    repairs: list[str] = field(default_factory=list)


def recover(path: Path, meta: MetaStore, *, read_only: bool, repair: bool, verify: bool) -> Recovered:
    """Load every tower of the index at ``path`` and apply the consistency policy of
    :mod:`crossmodal.index.store`: refuse, or with ``repair`` drop and record, what does not fit."""
    state, item_keys, journal, bad_paths = meta.snapshot()
    out = Recovered(state)
    meta_path = path / META_FILE
    if not header_agrees(path, state):
        msg = f"{path / HEADER_FILE} is missing, unreadable or disagrees with {META_FILE}"
        if not repair:
            raise IndexStoreError(msg + ". Open with repair=True to rewrite it from the metadata store.")
        atomic_write_bytes(path / HEADER_FILE, header_bytes(state, {}))  # no graph loaded yet
        out.repairs.append(msg + ": rewritten")
    dim = int(state["dim"])
    for tower in TOWERS:
        graph, dirty = load_graph(path, state, tower, read_only=read_only, repair=repair, verify=verify,
                                  repairs=out.repairs)
        if dirty:
            out.dirty.add(tower)
        present = set(int(k) for k in np.asarray(graph.keys, dtype=np.uint64)) if len(graph) else set()
        replayed = replay_journal(graph, journal[tower], present, dim, meta_path)
        if replayed:
            present.update(replayed)
            out.dirty.add(tower)
        orphans = present - item_keys[tower]
        if orphans:
            # Left by remove() before the next save (or a crash): not part of the index.
            graph.remove(np.fromiter(orphans, dtype=np.uint64, count=len(orphans)))
            out.dirty.add(tower)
        missing = item_keys[tower] - present
        if missing:
            msg = (f"{len(missing)} {tower} item(s) in {meta_path} have no vector "
                   f"(e.g. key {min(missing)}); the graph file was replaced or truncated")
            if not repair:
                raise IndexStoreError(msg + ". Open with repair=True (`crossmodal index add --repair`) to drop "
                                      "them; the next build re-embeds their files.")
            meta.delete_items(tower, sorted(missing))
            out.repairs.append(msg + ": dropped")
        out.graphs[tower] = graph
    if bad_paths:
        msg = (f"{len(bad_paths)} item path(s) in {meta_path} point outside the index root "
               f"{state.get('root')!r} (e.g. {bad_paths[0][2]!r})")
        if not repair:
            raise IndexStoreError(msg + "; the metadata was edited by hand. Open with repair=True to drop them.")
        for tower, key, _ in bad_paths:
            out.graphs[tower].remove(key)
            meta.delete_items(tower, [key])
            out.dirty.add(tower)
        out.repairs.append(msg + ": dropped")
    return out
