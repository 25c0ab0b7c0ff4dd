"""crossmodal: a lean, torch-free runtime for image-text retrieval encoders.

>>> import crossmodal
>>> enc = crossmodal.load("models/clip-vit-b-32", variant="cpu-int8")  # doctest: +SKIP
>>> enc.encode_text(["two dogs in the snow"]).shape                   # doctest: +SKIP
(1, 512)

Only numpy, onnxruntime, tokenizers, Pillow and usearch are imported, and only
when first needed: ``import crossmodal`` itself is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    CrossmodalError,
    ImageInputError,
    IncompatibleTowersError,
    IndexStoreError,
    InputError,
    ParityError,
    ProviderUnavailableError,
    TextInputError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder


def load(path: Any, variant: str | None = None, modality: str | None = None, **kwargs: Any) -> "Encoder":
    """Load a bundle written by ``crossmodal export``; see :func:`crossmodal.loader.load`."""
    from .loader import load as _load

    return _load(path, variant=variant, modality=modality, **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import crossmodal` free of onnxruntime/usearch imports.
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    if name == "Index":
        from .index import Index

        return Index
    if name == "Reranker":
        from .rerank import Reranker

        return Reranker
    if name == "Retriever":
        from .retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'crossmodal' has no attribute {name!r}")


__all__ = [
    "load",
    "Encoder",
    "Index",
    "Reranker",
    "Retriever",
    "CrossmodalError",
    "ArtifactError",
    "IncompatibleTowersError",
    "ProviderUnavailableError",
    "InputError",
    "ImageInputError",
    "TextInputError",
    "IndexStoreError",
    "ParityError",
    "__version__",
]
