"""crossmodal.distributed: embed a collection on Ray Data and import the result into an index.

Needs the ``ray`` extra (``pip install 'crossmodal[ray]'``: Ray Data and pyarrow). The
runtime never imports this package, and this package imports Ray and pyarrow only when a
function that needs them runs (a missing one raises
:class:`~crossmodal.distributed.extras.MissingExtraError` naming the install command).

One job per module:

* :mod:`~crossmodal.distributed.embed`: :func:`embed_dataset`, a Ray Dataset of image
  paths, image bytes or texts -> rows of key, sha256, vector, error (actors load the bundle once);
* :mod:`~crossmodal.distributed.shards`: the shard files (parquet), their plan, names and metadata;
* :mod:`~crossmodal.distributed.writer`: :func:`embed_to_shards`, the resumable shard writer
  (images, then their captions: :func:`caption_items`);
* :mod:`~crossmodal.distributed.importer`: :func:`import_shards`, shard files -> an index in bulk;
* :mod:`~crossmodal.distributed.sources`: the inputs of ``index build --ray`` (a folder or a parquet list);
* :mod:`~crossmodal.distributed.extras`: the one way to import Ray and pyarrow, and to connect.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "embed_dataset": "embed",
    "embed_to_shards": "writer",
    "ShardRun": "writer",
    "caption_items": "writer",
    "RaySession": "writer",
    "import_shards": "importer",
    "ImportReport": "importer",
    "ShardItem": "shards",
    "read_shard": "shards",
    "connect": "extras",
    "MissingExtraError": "extras",
}


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import Ray, pyarrow or onnxruntime.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crossmodal.distributed' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
