"""A deterministic stand-in for ``crossmodal.Encoder`` used by the index, ingest and eval tests.

It implements the encoder protocol the index relies on (``bundle``, ``dim``, ``variant``,
``image.preprocess_one``, ``image.run_pixels``, ``encode_text``, ``encode_image``) with no
model: an image's vector is a smooth function of its mean colour, so images of similar
colour are neighbours; a text naming a colour ("a red square") maps to that colour's vector,
any other text to a random unit vector seeded by the text's sha256.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from crossmodal.errors import ImageInputError, TextInputError
from crossmodal.manifest import BundleInfo

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 170, 40),
    "blue": (20, 40, 230),
    "yellow": (240, 220, 20),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "purple": (140, 30, 170),
    "orange": (250, 140, 10),
}


def _unit(v: NDArray[np.float64]) -> NDArray[np.float32]:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class FakeImageTower:
    """Decodes with PIL, shrinks to ``size`` x ``size``, embeds the mean colour."""

    def __init__(self, dim: int, anchors: NDArray[np.float64], size: int = 8, delay: float = 0.0):
        self.dim = dim
        self.input_size = size
        self._anchors = anchors
        self.delay = delay
        self.calls = 0
        self.embedded = 0
        self._lock = threading.Lock()

    def preprocess_one(self, source: Any) -> NDArray[np.float32]:
        """(3, S, S) float32 in [0, 1]; ImageInputError on anything PIL cannot decode."""
        try:
            if isinstance(source, Image.Image):
                im = source
            elif isinstance(source, np.ndarray):
                im = Image.fromarray(source.astype(np.uint8))
            elif isinstance(source, (bytes, bytearray)):
                im = Image.open(io.BytesIO(source))
            else:
                im = Image.open(Path(source))
            im = im.convert("RGB").resize((self.input_size, self.input_size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            what = f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else repr(source)[:60]
            raise ImageInputError(f"cannot decode image ({what}): {exc}") from exc
        return (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()

    def embed_colour(self, rgb01: NDArray[np.float64]) -> NDArray[np.float32]:
        """RBF features of an (n, 3) colour in [0, 1] around fixed anchors, L2-normalised."""
        d2 = ((rgb01[:, None, :] - self._anchors[None, :, :]) ** 2).sum(-1)
        return _unit(np.exp(-d2 / (2 * 0.2**2)) + 1e-6)

    def run_pixels(self, pixel_values: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, 3, S, S) -> (n, dim); ``delay`` seconds per call simulate a model."""
        with self._lock:
            self.calls += 1
            self.embedded += len(pixel_values)
        if self.delay:
            time.sleep(self.delay)
        return self.embed_colour(np.asarray(pixel_values, dtype=np.float64).mean(axis=(2, 3)))

    run = run_pixels


class FakeEncoder:
    """Implements the ``crossmodal.Encoder`` protocol deterministically (see the module docstring)."""

    def __init__(self, dim: int = 32, *, name: str = "fake-clip", space: str = "fake-space", seed: int = 0,
                 delay: float = 0.0, with_image: bool = True, with_text: bool = True):
        self.bundle = BundleInfo(name=name, family="clip", dim=dim, space=space, logit_scale=100.0,
                                 towers={"image": "image", "text": "text"})
        self.variant = "cpu-fp32"
        anchors = np.random.default_rng(seed).uniform(0, 1, size=(dim, 3))
        self._image = FakeImageTower(dim, anchors, delay=delay)
        self.image: FakeImageTower | None = self._image if with_image else None
        self.text: object | None = object() if with_text else None

    @property
    def dim(self) -> int:
        return self.bundle.dim

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 64) -> NDArray[np.float32]:
        items = [texts] if isinstance(texts, str) else list(texts)
        out = np.empty((len(items), self.dim), np.float32)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TextInputError(f"text #{i} is a {type(t).__name__}, expected str")
            colour = next((c for c in COLOURS if c in t.lower().split()), None)
            if colour is not None:
                out[i] = self._image.embed_colour(np.asarray([COLOURS[colour]], np.float64) / 255.0)[0]
            else:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                out[i] = _unit(np.random.default_rng(seed).standard_normal(self.dim))
        return out

    def encode_image(self, images: Any, batch_size: int = 16) -> NDArray[np.float32]:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self._image.run_pixels(np.stack([self._image.preprocess_one(s) for s in items]))
