"""One rule for "one item or a batch", and the argument checks every entry point shares.

The rule (the same for the encoder, the retriever, the re-ranker and the service):

* texts: a ``str`` is one text; a list, tuple or 1-D array of strings is a batch;
* images: a path (``str`` / ``os.PathLike``), ``bytes``, a PIL image or a 2-D / 3-D
  pixel array is one image; a list or tuple of those, or a 4-D array ``(n, H, W, C)``,
  is a batch;
* vectors: a 1-D array is one vector; a 2-D array is a batch.

Entry points return one result for one item and a list of results for a batch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import InputError, TextInputError


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` to Python, never a count to us)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or InputError naming ``name``."""
    if not is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int >= 0, or InputError naming ``name``."""
    if not is_int(value) or value < 0:
        raise InputError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def boolean(name: str, value: Any) -> bool:
    """True or False (never a truthy string or 1), or InputError naming ``name``."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}.")
    return value


def optional_bool(name: str, value: Any) -> bool | None:
    """True, False or None, or InputError naming ``name``."""
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{name} must be True, False or None (automatic), got {value!r}.")
    return value


def text_batch(texts: Any) -> tuple[list[str], bool]:
    """``(texts as a list, single)``; every element must be a ``str``."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, np.ndarray) and texts.ndim == 1 or isinstance(texts, (list, tuple)):
        items = list(texts)
    else:
        raise TextInputError(f"texts must be a str or a list of str, got {type(texts).__name__}.")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TextInputError(f"text #{i} is a {type(t).__name__} ({t!r:.40}), expected str")
    return items, False


def image_batch(images: Any) -> tuple[list[Any], bool]:
    """``(images as a list, single)`` by the rule in the module docstring (sources are not decoded here)."""
    if isinstance(images, (list, tuple)):
        return list(images), False
    if isinstance(images, np.ndarray):
        if images.dtype == object and images.ndim == 1:
            return list(images), False
        if images.ndim == 4:
            return list(images), False
        return [images], True
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(images, "convert"):
        return [images], True
    # Anything else is handed on as one source; the decoder names it in its error.
    return [images], True


def vector_batch(vectors: Any) -> bool:
    """Whether ``vectors`` is a single vector (1-D) rather than a batch (shape checks are the index's)."""
    return np.ndim(vectors) == 1


__all__ = ["is_int", "positive_int", "non_negative_int", "boolean", "optional_bool", "text_batch", "image_batch", "vector_batch"]
