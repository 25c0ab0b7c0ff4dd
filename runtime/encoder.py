"""The user-facing encoder: one bundle, one variant, an image and/or a text tower."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from .errors import ArtifactError, InputError
from .manifest import BundleInfo
from .towers import ImageTower, TextTower

if TYPE_CHECKING:  # pragma: no cover
    from .image import ImageSource


def _as_list(x: object, kind: str) -> list:
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)) and not (
        isinstance(x, np.ndarray) and x.dtype == object
    ):
        # a single path, text, PIL image or pixel array
        if kind == "image" and isinstance(x, np.ndarray) and x.ndim == 4:
            return list(x)  # a batch of uint8 HWC arrays
        return [x]
    return list(x)


class Encoder:
    """Embeds images and texts into one L2-normalised space.

    Made by :func:`crossmodal.load`. ``image`` / ``text`` are ``None`` when the
    bundle (or the ``modality`` asked for) lacks that tower.
    """

    def __init__(self, bundle: BundleInfo, variant: str, image: ImageTower | None, text: TextTower | None):
        self.bundle = bundle
        self.variant = variant
        self.image = image
        self.text = text
        for tower in (image, text):
            if tower is not None and tower.dim != bundle.dim:
                raise ArtifactError(f"{tower.path}: dim {tower.dim} differs from bundle.json's {bundle.dim}")

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.bundle.dim

    def _need(self, tower: object, what: str) -> None:
        if tower is None:
            raise InputError(
                f"bundle {self.bundle.name!r} was loaded without a {what} tower "
                f"(bundle towers: {sorted(self.bundle.towers)}); load it with modality=None or {what!r}"
            )

    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> NDArray[np.float32]:
        """Texts -> (n, dim) float32, L2-normalised. A single string gives one row."""
        self._need(self.text, "text")
        assert self.text is not None
        return self.text.encode(_as_list(texts, "text"), batch_size=batch_size)

    def encode_image(self, images: Union["ImageSource", Sequence["ImageSource"]], batch_size: int = 16) -> NDArray[np.float32]:
        """Images (paths, bytes, PIL images, uint8 HxWxC arrays) -> (n, dim) float32, L2-normalised."""
        self._need(self.image, "image")
        assert self.image is not None
        return self.image.encode(_as_list(images, "image"), batch_size=batch_size)

    def rank(self, image: "ImageSource", texts: Sequence[str]) -> NDArray[np.float32]:
        """Probability of each caption for ``image``: softmax(logit_scale * cosine).

        ``logit_scale`` comes from bundle.json (CLIP's learned temperature, about
        100; ALBEF's 1/temp). This is zero-shot classification over ``texts``.
        """
        img = self.encode_image([image])
        txt = self.encode_text(list(texts))
        logits = self.bundle.logit_scale * (txt @ img[0]).astype(np.float64)
        logits -= logits.max()
        p = np.exp(logits)
        return (p / p.sum()).astype(np.float32)

    def __repr__(self) -> str:
        towers = [n for n, t in (("image", self.image), ("text", self.text)) if t is not None]
        return f"Encoder(bundle={self.bundle.name!r}, variant={self.variant!r}, dim={self.dim}, towers={towers})"
