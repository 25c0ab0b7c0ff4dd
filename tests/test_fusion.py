"""crossmodal.fusion: weighted and reciprocal-rank fusion against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.fusion import (
    DEFAULT_FUSE_WEIGHT,
    fuse_mode,
    fuse_weight,
    reciprocal_rank_fusion,
    rrf_term,
    weighted,
    weighted_fusion,
)


def test_weighted_fusion_by_hand() -> None:
    image = {"a": 0.30, "b": 0.25, "c": 0.20}
    caption = {"b": 0.90, "c": 0.10}
    got = weighted_fusion(image, caption, 0.5)
    # a has no caption: its image score alone; b: 0.5*0.25 + 0.5*0.9; c: 0.5*0.2 + 0.5*0.1
    assert [k for k, _ in got] == ["b", "a", "c"]
    assert [s for _, s in got] == pytest.approx([0.575, 0.30, 0.15])
    assert [k for k, _ in weighted_fusion(image, caption, 0.0)] == ["a", "b", "c"]  # w = 0: image order
    assert dict(weighted_fusion(image, caption, 1.0)) == pytest.approx({"a": 0.30, "b": 0.90, "c": 0.10})
    assert weighted(np.array([0.2, 0.4]), np.array([0.6, 0.0]), 0.25) == pytest.approx([0.3, 0.3])


def test_reciprocal_rank_fusion_by_hand() -> None:
    got = reciprocal_rank_fusion([["x", "y", "z"], ["z", "x"]], k0=60)
    assert [k for k, _ in got] == ["x", "z", "y"]
    assert dict(got) == pytest.approx({"x": 1 / 61 + 1 / 62, "z": 1 / 63 + 1 / 61, "y": 1 / 62})
    # a tie keeps first-seen order: "p" and "q" each have ranks 1 and 2
    assert [k for k, _ in reciprocal_rank_fusion([["p", "q"], ["q", "p"]])] == ["p", "q"]
    assert rrf_term(np.array([1, 2])) == pytest.approx([1 / 61, 1 / 62])
    assert reciprocal_rank_fusion([]) == []
    with pytest.raises(InputError, match="k0"):
        reciprocal_rank_fusion([["a"]], k0=0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_fuse_weight_must_be_in_0_1(bad: object) -> None:
    with pytest.raises(InputError, match=r"fuse_weight must be a number in \[0, 1\]"):
        fuse_weight(bad)  # type: ignore[arg-type]


def test_defaults_and_modes() -> None:
    assert fuse_weight(None) == DEFAULT_FUSE_WEIGHT == 0.5
    assert fuse_weight(1) == 1.0
    assert fuse_mode("rrf") == "rrf"
    with pytest.raises(InputError, match=r"fuse_mode must be one of \['weighted', 'rrf'\]"):
        fuse_mode("max")
