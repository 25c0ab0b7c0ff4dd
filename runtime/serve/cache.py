"""An LRU of text-query embeddings: production search traffic repeats its queries.

The key is the bundle fingerprint plus the query's *token ids*: the text as the model's
own tokenizer normalises it (cleaning, lower-casing, whitespace, truncation), so two
spellings the model cannot tell apart share one entry and two it can never do. The
fingerprint keeps entries of another bundle or variant from ever answering. Used on the
event loop only (no lock).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray


class EmbeddingCache:
    """At most ``size`` embeddings (0 disables the cache: every lookup misses, nothing is kept)."""

    def __init__(self, size: int, fingerprint: str) -> None:
        self.size = size
        self.fingerprint = fingerprint
        self._entries: OrderedDict[tuple[str, bytes], NDArray[np.float32]] = OrderedDict()

    def key(self, token_ids: NDArray[np.integer]) -> tuple[str, bytes]:
        return self.fingerprint, np.ascontiguousarray(token_ids, dtype=np.int64).tobytes()

    def get(self, key: tuple[str, bytes]) -> NDArray[np.float32] | None:
        row = self._entries.get(key)
        if row is not None:
            self._entries.move_to_end(key)
        return row

    def put(self, key: tuple[str, bytes], row: NDArray[np.float32]) -> None:
        if self.size == 0:
            return
        self._entries[key] = np.array(row, dtype=np.float32)  # a copy: the caller's array may be reused
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["EmbeddingCache"]
