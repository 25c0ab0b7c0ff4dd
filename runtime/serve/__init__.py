"""``crossmodal serve``: the embedding, search and ranking HTTP service (``pip install 'crossmodal[serve]'``).

>>> from crossmodal.serve import create_app, ServeConfig
>>> app = create_app("models/clip-vit-b-32", index="photos.idx", config=ServeConfig(max_batch=32))  # doctest: +SKIP

Modules, one job each: :mod:`~crossmodal.serve.app` (the ASGI app and middleware),
:mod:`~crossmodal.serve.service` (model, index, pools, lifecycle),
:mod:`~crossmodal.serve.batcher` (dynamic batching, one inference thread per tower),
:mod:`~crossmodal.serve.routes` (one module per resource), :mod:`~crossmodal.serve.body`
(request bodies within limits), :mod:`~crossmodal.serve.decode` (image inputs),
:mod:`~crossmodal.serve.errors` (the JSON error shape), :mod:`~crossmodal.serve.metrics`,
:mod:`~crossmodal.serve.cache`, :mod:`~crossmodal.serve.auth`, :mod:`~crossmodal.serve.uploads`,
:mod:`~crossmodal.serve.fingerprint`, :mod:`~crossmodal.serve.config`, :mod:`~crossmodal.serve.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ServeConfig

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette


def create_app(bundle: Any, index: Any = None, **kwargs: Any) -> "Starlette":
    """The service as an ASGI app; see :func:`crossmodal.serve.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(bundle, index, **kwargs)


__all__ = ["create_app", "ServeConfig"]
