"""Metadata filters on index items: a path prefix, an added-after time, has-a-caption.

A :class:`Filter` narrows :meth:`crossmodal.index.Index.search` and
:meth:`~crossmodal.index.Index.keyword_search` (``where=``). Its fields are ANDed; a field
left at None does not filter. How each search applies it (before top-k for an exact
scan, as a widened post-filter for HNSW) is described in :mod:`crossmodal.index.search`.

The filter is evaluated in SQL over the ``items`` table of ``meta.sqlite`` (the metadata
the vectors were added with): :func:`filter_sql` turns it into a WHERE clause.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from ..errors import InputError
from .format import relative_item_path


@dataclass(frozen=True)
class Filter:
    """Which items a search may return (every field given must hold; None = no condition).

    ``path_prefix``: the item's stored path starts with this string (relative to the
    index root when the index has one; an absolute path inside the root is made relative).
    It is a plain string prefix: ``"2024"`` also matches ``"2024-old/x.jpg"``, ``"2024/"``
    only the folder. Case-sensitive, ``/`` as separator.
    ``added_after``: unix seconds; only items added strictly after it.
    ``has_caption``: True keeps only items with a caption, False only items without. An image
    has a caption when it was stored with one or a caption item (text tower) shares its path.

    >>> Filter(path_prefix="2024/", has_caption=True).is_empty()
    False
    """

    path_prefix: str | None = None
    added_after: float | None = None
    has_caption: bool | None = None

    def __post_init__(self) -> None:
        if self.path_prefix is not None and (not isinstance(self.path_prefix, str) or not self.path_prefix):
            raise InputError(f"filter path_prefix must be a non-empty string, got {self.path_prefix!r}.")
        if self.added_after is not None:
            t = self.added_after
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise InputError(f"filter added_after must be unix seconds (a finite number), got {t!r}; "
                                 "Filter.from_mapping also accepts an ISO 8601 date such as '2024-05-01'.")
            object.__setattr__(self, "added_after", float(t))
        if self.has_caption is not None and not isinstance(self.has_caption, bool):
            raise InputError(f"filter has_caption must be true or false, got {self.has_caption!r}.")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "Filter":
        """A filter from a JSON object / CLI options: ``{"path_prefix": ..., "added_after": ..., "has_caption": ...}``.

        ``added_after`` may be unix seconds or an ISO 8601 date/time string (``"2024-05-01"``,
        ``"2024-05-01T12:00:00+02:00"``; without a zone it is UTC). ``has_caption`` may be a
        bool or the strings ``"true"``/``"false"``. Unknown fields are an InputError naming them.
        """
        if not isinstance(d, Mapping):
            raise InputError(f"a filter must be an object with fields {list(FILTER_FIELDS)}, got {type(d).__name__}.")
        unknown = sorted(str(k) for k in d if k not in FILTER_FIELDS)
        if unknown:
            raise InputError(f"unknown filter field(s) {unknown}; filters are {list(FILTER_FIELDS)}.")
        values = {k: v for k, v in d.items() if v is not None}
        if "added_after" in values:
            values["added_after"] = _seconds(values["added_after"])
        if isinstance(values.get("has_caption"), str):
            values["has_caption"] = _truth(values["has_caption"])
        return cls(**values)

    def is_empty(self) -> bool:
        """True when no field is set (the filter keeps every item)."""
        return self.path_prefix is None and self.added_after is None and self.has_caption is None


FILTER_FIELDS = tuple(f.name for f in fields(Filter))


def _seconds(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # numbers are checked by Filter itself
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"filter added_after={value!r} is neither unix seconds nor an ISO 8601 date "
                         "(e.g. '2024-05-01' or '2024-05-01T12:00:00+02:00').") from None
    if when.tzinfo is None:
        # UTC, not the server's zone: the same request means the same thing on every machine.
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _truth(value: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise InputError(f"filter has_caption={value!r}: use true or false.")


def as_filter(where: Any) -> Filter | None:
    """``where`` as given to a search: None, a :class:`Filter` or a mapping; None when it filters nothing."""
    if where is None:
        return None
    if not isinstance(where, Filter):
        if not isinstance(where, Mapping):
            raise InputError(f"where must be a crossmodal.index.Filter or a mapping, got {type(where).__name__}.")
        where = Filter.from_mapping(where)
    return None if where.is_empty() else where


def stored_prefix(prefix: str, root: str | None) -> str:
    """``prefix`` as item paths are stored: relative to ``root`` (when absolute), ``/``-separated."""
    trailing = prefix.endswith(("/", os.sep))
    s = prefix
    if root is not None and os.path.isabs(s):
        rel = relative_item_path(s, root) or "."  # InputError when outside the root
        # relative_item_path drops a trailing slash, which matters to a prefix.
        s = "" if rel == "." else rel + ("/" if trailing else "")
    s = s.replace(os.sep, "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def filter_sql(where: Filter, tower: str, root: str | None, alias: str = "i") -> tuple[str, list[Any]]:
    """``(clause, params)``: the SQL condition on ``items AS alias`` rows of ``tower`` that ``where`` keeps."""
    clauses: list[str] = []
    params: list[Any] = []
    if where.path_prefix is not None:
        prefix = stored_prefix(where.path_prefix, root)
        if prefix:  # the root itself: every item is under it
            # substr, not LIKE/GLOB: their wildcard characters (% _ * ?) are legal in file names.
            clauses.append(f"substr({alias}.path, 1, ?) = ?")
            params += [len(prefix), prefix]
    if where.added_after is not None:
        clauses.append(f"{alias}.added_at > ?")
        params.append(where.added_after)
    if where.has_caption is not None:
        own = f"({alias}.caption IS NOT NULL AND {alias}.caption != '')"
        if tower == "image":
            # Captions added later (or all but the first) live as text-tower items under the image's path.
            own = (f"({own} OR EXISTS (SELECT 1 FROM items c WHERE c.tower = 'text' AND c.path = {alias}.path "
                   "AND c.caption IS NOT NULL AND c.caption != ''))")
        clauses.append(own if where.has_caption else f"NOT {own}")
    return (" AND ".join(clauses) or "1"), params


__all__ = ["Filter", "FILTER_FIELDS", "as_filter", "filter_sql", "stored_prefix"]
