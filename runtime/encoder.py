"""The user-facing encoder: one bundle, one variant, an image and/or a text tower.

What counts as one item or a batch is :mod:`crossmodal.inputs`'s rule. ``encode_text``
and ``encode_image`` always return an ``(n, dim)`` array (one row for one item), so a
caller can index rows without checking what it passed; :meth:`Encoder.rank` returns one
row of probabilities for one image and an ``(n_images, n_texts)`` array for a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from .errors import ArtifactError, InputError, TextInputError
from .inputs import image_batch
from .manifest import BundleInfo
from .towers import ImageTower, TextTower

if TYPE_CHECKING:  # pragma: no cover
    from .image import ImageSource


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
        return self.text.encode(texts, batch_size=batch_size)

    def encode_image(self, images: Union["ImageSource", Sequence["ImageSource"]], batch_size: int = 16) -> NDArray[np.float32]:
        """Images (paths, bytes, PIL images, uint8 HxWxC arrays) -> (n, dim) float32, L2-normalised.

        One image gives one row; a list or a uint8 ``(n, H, W, C)`` array gives ``n`` rows.
        """
        self._need(self.image, "image")
        assert self.image is not None
        return self.image.encode(images, batch_size=batch_size)

    def rank(self, image: Union["ImageSource", Sequence["ImageSource"]], texts: Sequence[str]) -> NDArray[np.float32]:
        """Probability of each caption for an image: softmax(logit_scale * cosine) over ``texts``.

        One image gives ``(n_texts,)``; a batch of images (a list, or a ``(n, H, W, C)``
        array) gives ``(n_images, n_texts)``, one row per image. ``logit_scale`` comes from
        bundle.json (CLIP's learned temperature, about 100; ALBEF's 1/temp). This is
        zero-shot classification over ``texts``.
        """
        if isinstance(texts, str):
            # A softmax over one caption is always 1.0: a bare string is a mistake here, not a batch of one.
            raise TextInputError("rank needs a list of candidate texts; wrap a single text in a list")
        items, single = image_batch(image)
        img = self.encode_image(items)
        txt = self.encode_text(texts)
        logits = self.bundle.logit_scale * (img @ txt.T).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
        return p[0] if single else p

    def __repr__(self) -> str:
        towers = [n for n, t in (("image", self.image), ("text", self.text)) if t is not None]
        return f"Encoder(bundle={self.bundle.name!r}, variant={self.variant!r}, dim={self.dim}, towers={towers})"
