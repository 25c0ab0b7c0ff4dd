"""ALBEF test helpers: golden files, shape-only full-size checkpoints, a bicubic reference."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from helpers.bundles import ALBEF_TARGETS, export_tiny_albef, tiny_albef_bundle
from helpers.golden import (  # noqa: F401  (the ALBEF tests import the golden names from here)
    GOLDEN,
    TINY_CKPT,
    TINY_CONFIG,
    golden_arrays,
    golden_file,
    require_golden,
)

if TYPE_CHECKING:
    import torch


def tiny_state_dict() -> dict[str, torch.Tensor]:
    """A fresh copy of the golden tiny checkpoint's state dict (safe to mutate)."""
    import torch

    sd = torch.load(golden_file("tiny_checkpoint.pth"), map_location="cpu", weights_only=True)["model"]
    return {k: v.clone() for k, v in sd.items()}


def tiny_config() -> dict[str, Any]:
    return json.loads(golden_file("tiny_config.json").read_text())


@lru_cache(maxsize=1)
def full_size_keys() -> dict[str, Any]:
    return json.loads(golden_file("full_size_keys.json").read_text())


def meta_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """A full-size checkpoint of ``layout`` with the real keys and shapes, on the meta device (no memory)."""
    import torch

    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
    entries = full_size_keys()[layout]["state_dict"]
    return {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta") for k, v in entries.items()}


def to_retrieval_layout(sd: dict[str, torch.Tensor], queue_size: int = 16) -> dict[str, torch.Tensor]:
    """Re-key a pretrain-layout state dict the way the retrieval class stores it (Retrieval.py's rule)."""
    import torch

    out = {k.replace("bert.", ""): v for k, v in sd.items() if ".cls." not in k}
    out["idx_queue"] = torch.full((1, queue_size), -100, dtype=torch.int64)
    return out


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for the 4 taps around a sample at fractional offset ``t``."""

    def w(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((x - 5) * x + 8) * x * a - 4 * a
        return 0.0

    return [w(t + 1), w(t), w(1 - t), w(2 - t)]


def bicubic_resize_reference(img: NDArray[np.floating], size: int) -> NDArray[np.float64]:
    """[C, H, W] -> [C, size, size]: half-pixel centres (align_corners=False), a=-0.75, edge-clamped taps.

    Written from the definition, independent of torch, to check that the
    position-embedding resize is the bicubic resize the original applies.
    """

    def matrix(n_in: int, n_out: int) -> NDArray[np.float64]:
        m = np.zeros((n_out, n_in))
        scale = n_in / n_out
        for i in range(n_out):
            src = (i + 0.5) * scale - 0.5
            base = math.floor(src)
            for tap, weight in zip(range(base - 1, base + 3), _cubic_weights(src - base)):
                m[i, min(max(tap, 0), n_in - 1)] += weight
        return m

    x = np.asarray(img, dtype=np.float64)
    mh, mw = matrix(x.shape[1], size), matrix(x.shape[2], size)
    return np.einsum("oh,chw,pw->cop", mh, x, mw)


def export_tiny_bundle(out: Path, targets: str = ALBEF_TARGETS, **kwargs: Any) -> Path:
    """The golden tiny checkpoint as a bundle at ``out`` (image, text and rerank towers).

    The default bundle is exported once per session, or taken ready-made (helpers.bundles).
    """
    if targets == ALBEF_TARGETS and not kwargs:
        return tiny_albef_bundle(out)
    return export_tiny_albef(out, targets, **kwargs)
