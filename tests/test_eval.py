"""Recall@K evaluation: hand-computed ranks, the Karpathy JSON loader, the eval command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.evaluate import (
    evaluate,
    evaluate_embeddings,
    load_karpathy,
    ranks_image_to_text,
    ranks_text_to_image,
)
from crossmodal.manifest import BundleInfo
from helpers.datasets import make_karpathy_dataset


def test_hand_computed_small_matrix() -> None:
    # images are one-hot, so sim[t, i] = text_emb[t, i]
    img = np.eye(3, 4, dtype=np.float32)
    txt = np.array([[0.9, 0.1, 0.0, 0], [0.2, 0.8, 0.1, 0], [0.5, 0.3, 0.7, 0], [0.1, 0.2, 0.6, 0],
                    [0.4, 0.4, 0.4, 0]], dtype=np.float32)
    owner = [0, 0, 1, 2, 2]
    sim = txt @ img.T
    assert ranks_text_to_image(sim, np.array(owner)).tolist() == [0, 1, 2, 0, 2]  # the 3-way tie ranks last
    groups = [np.array([0, 1]), np.array([2]), np.array([3, 4])]
    assert ranks_image_to_text(np.ascontiguousarray(sim.T), groups).tolist() == [0, 2, 1]
    s = evaluate_embeddings(img, txt, owner, ks=(1, 2, 3))
    assert s.text_to_image.recall == pytest.approx({1: 40.0, 2: 60.0, 3: 100.0})
    assert (s.text_to_image.mean_rank, s.text_to_image.median_rank) == (pytest.approx(2.0), 2.0)
    assert s.image_to_text.recall == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert (s.image_to_text.mean_rank, s.image_to_text.median_rank) == (pytest.approx(2.0), 2.0)
    assert s.rsum == pytest.approx(40 + 60 + 100 + 100 / 3 + 200 / 3 + 100)
    assert (s.n_images, s.n_texts) == (3, 5)


def test_degenerate_encoder_gets_worst_ranks() -> None:
    img = np.ones((4, 2), np.float32) / np.sqrt(2)
    txt = np.ones((8, 2), np.float32) / np.sqrt(2)
    s = evaluate_embeddings(img, txt, [0, 0, 1, 1, 2, 2, 3, 3])
    assert s.text_to_image.recall[1] == 0.0 and s.text_to_image.mean_rank == 4.0
    assert s.image_to_text.recall[1] == 0.0 and s.image_to_text.mean_rank == 8.0


def test_bad_embeddings_are_refused() -> None:
    with pytest.raises(InputError, match="one dim"):
        evaluate_embeddings(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1])
    with pytest.raises(InputError, match="image index"):
        evaluate_embeddings(np.zeros((2, 3)), np.zeros((2, 3)), [0, 2])
    with pytest.raises(InputError, match="no caption"):
        evaluate_embeddings(np.eye(3), np.eye(3)[:2], [0, 1])


class TableEncoder:
    """Looks every input up in fixed tables: the similarity matrix is whatever the test says."""

    def __init__(self, images: dict[str, np.ndarray], texts: dict[str, np.ndarray], dim: int):
        self.bundle = BundleInfo(name="table", family="clip", dim=dim, space="table", logit_scale=100.0,
                                 towers={"image": "image", "text": "text"})
        self.dim = dim
        self.images, self.texts = images, texts

    def encode_image(self, images, batch_size: int = 16) -> np.ndarray:
        return np.stack([self.images[Path(p).name] for p in images]).astype(np.float32)

    def encode_text(self, texts, batch_size: int = 64) -> np.ndarray:
        return np.stack([self.texts[t] for t in texts]).astype(np.float32)


# caption (image, j) -> image whose one-hot vector it gets; everything else points at its own image
WRONG = {(1, 0): 2, (3, 1): 4, (5, 0): 0, (5, 1): 0}


def table_encoder(ds) -> TableEncoder:
    n = len(ds.test_images)
    eye = np.eye(n)
    images = {name: eye[i] for i, name in enumerate(ds.test_images)}
    texts = {cap: eye[WRONG.get((i, j), i)] for i, caps in enumerate(ds.test_captions) for j, cap in enumerate(caps)}
    return TableEncoder(images, texts, n)


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_evaluate_reproduces_hand_computed_recall(tmp_path: Path, name: str) -> None:
    ds = make_karpathy_dataset(tmp_path, name=name, n_test=6, n_train=3, captions_per_image=2)
    split = load_karpathy(tmp_path, name)
    assert [p.name for p in split.image_paths] == ds.test_images and len(split.captions) == 12
    assert split.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    s = evaluate(table_encoder(ds), split)
    # text -> image: 8 captions rank their image first; the 4 wrong ones score 0 against it,
    # tied with the 5 other images -> rank index 5 (6th).
    assert s.text_to_image.recall == pytest.approx({1: 800 / 12, 5: 800 / 12, 10: 100.0})
    assert s.text_to_image.mean_rank == pytest.approx((8 * 1 + 4 * 6) / 12)
    assert s.text_to_image.median_rank == 1.0
    # image -> text best ranks by hand: [3, 0, 2, 0, 2, 11] (image 0 ties with image 5's two
    # captions, image 5 has no caption pointing at it: all 12 tie at 0).
    assert s.image_to_text.recall == pytest.approx({1: 200 / 6, 5: 500 / 6, 10: 500 / 6})
    assert s.image_to_text.mean_rank == pytest.approx((4 + 1 + 3 + 1 + 3 + 12) / 6)
    assert s.image_to_text.median_rank == 3.0
    assert s.to_dict()["text_to_image"]["R@1"] == pytest.approx(66.67)
    assert "text -> image" in s.format_table()


def test_loader_options_and_errors(tmp_path: Path) -> None:
    ds = make_karpathy_dataset(tmp_path, name="flickr30k", n_test=4, n_train=2, captions_per_image=3)
    assert len(load_karpathy(tmp_path, "flickr30k", captions_per_image=1).captions) == 4
    assert len(load_karpathy(tmp_path, "flickr30k", limit=2).image_paths) == 2
    assert len(load_karpathy(tmp_path, "flickr30k", split="train").image_paths) == 1
    with pytest.raises(InputError, match="no images in split 'val'"):
        load_karpathy(tmp_path, "flickr30k", split="val")
    with pytest.raises(InputError, match="must be one of"):
        load_karpathy(tmp_path, "mscoco")
    with pytest.raises(InputError, match="dataset_coco.json not found"):
        load_karpathy(tmp_path, "coco")
    (tmp_path / "flickr30k-images" / ds.test_images[1]).unlink()
    with pytest.raises(InputError, match=r"1 of 4 test images are missing .*" + ds.test_images[1]):
        load_karpathy(tmp_path, "flickr30k")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"filename": "x.jpg"}]}))
    with pytest.raises(InputError, match="not a Karpathy-split JSON"):
        load_karpathy(tmp_path, "flickr30k", json_path=bad)


def test_eval_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_karpathy_dataset(tmp_path / "data", name="flickr30k", n_test=6, captions_per_image=2)
    import crossmodal.loader
    from crossmodal.cli import main

    monkeypatch.setattr(crossmodal.loader, "load", lambda *a, **k: table_encoder(ds))
    assert main(["eval", str(tmp_path / "bundle"), "--dataset", "flickr30k", "--root", str(tmp_path / "data"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text_to_image"]["R@1"] == pytest.approx(66.67) and out["image_to_text"]["R@5"] == pytest.approx(83.33)
    assert (out["n_images"], out["n_texts"]) == (6, 12)
    assert main(["eval", str(tmp_path / "bundle"), "--dataset", "coco", "--root", str(tmp_path / "data")]) == 2
    assert "dataset_coco.json not found" in capsys.readouterr().err


def test_eval_command_with_the_tiny_clip_bundle(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import crossmodal

    make_karpathy_dataset(tmp_path, name="coco", n_test=8, n_train=1, captions_per_image=3)
    proc = subprocess.run([sys.executable, "-m", "crossmodal.cli", "eval", str(tiny_clip_bundle), "--dataset", "coco",
                           "--root", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    split = load_karpathy(tmp_path, "coco")
    enc = crossmodal.load(tiny_clip_bundle)
    want = evaluate_embeddings(enc.encode_image([str(p) for p in split.image_paths]),
                               enc.encode_text(list(split.captions)), split.text_to_image).to_dict()
    assert (got["n_images"], got["n_texts"], got["bundle"]) == (8, 24, enc.bundle.name)
    for direction in ("text_to_image", "image_to_text"):
        for key in ("R@1", "R@5", "R@10", "mean_rank", "median_rank"):
            assert got[direction][key] == pytest.approx(want[direction][key], abs=0.01)
