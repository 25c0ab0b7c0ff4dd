"""The one way to import the optional packages of ``crossmodal[ray]`` (Ray Data, pyarrow).

The runtime itself never imports them: only :mod:`crossmodal.distributed` does, at call
time, so ``import crossmodal`` and ``import crossmodal.distributed`` stay cheap and work
without the extra. A missing package is a :class:`MissingExtraError` naming the install command.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import CrossmodalError

INSTALL = "pip install 'crossmodal[ray]'"


class MissingExtraError(CrossmodalError, ImportError):
    """An optional package of the ``ray`` extra is not installed."""


def _import(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs the {module.split('.')[0]!r} package, which is not installed "
                                f"({exc}); install it with: {INSTALL}") from exc


def import_ray() -> Any:
    """``ray`` with Ray Data loaded (``ray.data``), or MissingExtraError."""
    ray = _import("ray", "embedding on Ray")
    _import("ray.data", "embedding on Ray")
    return ray


def import_pyarrow() -> Any:
    """``pyarrow`` with ``pyarrow.parquet`` and ``pyarrow.compute`` loaded, or MissingExtraError."""
    pa = _import("pyarrow", "reading and writing shard files")
    _import("pyarrow.parquet", "reading and writing shard files")
    _import("pyarrow.compute", "reading and writing shard files")
    return pa


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at ``address`` (or start a local one); True when this call started Ray.

    Already connected (``ray.is_initialized()``): nothing changes and False is returned,
    so a caller that did not start Ray never shuts it down.
    """
    import logging

    ray = import_ray()
    # The callers draw their own bar (shards written): Ray Data's per-operator bars and its
    # INFO lines about execution plans would interleave with it on stderr.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    # A local cluster started here serves one job: no dashboard (seconds of start-up, a web port).
    extra = {} if address else {"include_dashboard": False}
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **extra)
    return True


__all__ = ["MissingExtraError", "INSTALL", "import_ray", "import_pyarrow", "connect"]
