"""Giving memory back between export steps.

An export runs one memory-hungry step after another (trace, a session per
parity check, each fusion trial, each int8 quantiser). What a step frees is
not always returned to the operating system: onnxruntime's fusion objects and
protobuf graphs sit in reference cycles until the cycle collector happens to
run, and glibc keeps freed heap pages for reuse. So the process's resident
memory climbed with every candidate (a full-size ViT-B/32 image export reached
4.4 GB, over twelve times its 350 MB fp32 graph) although each step alone needs far
less. :func:`release` is called after every step that built or ran a graph.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has no malloc_trim
    except OSError:
        return None


def release() -> None:
    """Collect reference cycles, then hand free heap pages back to the OS (glibc only; elsewhere a no-op)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["release"]
