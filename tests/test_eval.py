"""Recall@K evaluation: hand-computed ranks, the Karpathy JSON loader, the eval command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.evaluate import (
    CaptionFusion,
    evaluate,
    evaluate_embeddings,
    load_karpathy,
    ranks_image_to_text,
    ranks_text_to_image,
    ranks_text_to_image_fused,
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


# Four captions of three one-hot images; fusion numbers are worked out by hand in the test.
FUSE_IMG = np.eye(3, 4, dtype=np.float32)
FUSE_TXT = np.array([[0.1, 0.3, 0, 1], [0.2, 0, 0, 1], [0, 0.5, 0.4, 0], [0, 0.6, 0.5, 0]], dtype=np.float32)
FUSE_OWNER = [0, 0, 1, 2]


def test_caption_fusion_leave_one_out_by_hand() -> None:
    plain = evaluate_embeddings(FUSE_IMG, FUSE_TXT, FUSE_OWNER, ks=(1, 2))
    assert plain.text_to_image_fused is None and "text_to_image_fused" not in plain.to_dict()
    # image only: t0 ranks its image 2nd (0.1 < 0.3), t3 too (0.5 < 0.6)
    assert plain.text_to_image.recall == pytest.approx({1: 50.0, 2: 100.0})
    fused = evaluate_embeddings(FUSE_IMG, FUSE_TXT, FUSE_OWNER, ks=(1, 2), fusion=CaptionFusion())
    # weighted, w 0.5, each query hidden from its own image's captions:
    # t0: image 0 = .5*.1 + .5*(t0.t1 = 1.02) = .56 beats .225 and .09 -> rank 1 (fusion fixes it)
    # t3: image 2 has no other caption -> .5 (its cosine); image 1 = .5*.6 + .5*(t3.t2 = .5) = .55 -> rank 2
    assert ranks_text_to_image_fused(FUSE_TXT, FUSE_IMG, FUSE_TXT, np.array(FUSE_OWNER), np.array(FUSE_OWNER),
                                     CaptionFusion(), leave_one_out=True).tolist() == [0, 0, 0, 1]
    assert fused.text_to_image_fused is not None
    assert fused.text_to_image_fused.recall == pytest.approx({1: 75.0, 2: 100.0})
    assert fused.text_to_image.recall == plain.text_to_image.recall  # the plain ranking is still reported
    d = fused.to_dict()
    assert d["fusion"] == {"mode": "weighted", "weight": 0.5, "captions": "reference captions, leave-one-out"}
    assert d["text_to_image_fused"]["R@1"] == 75.0
    table = fused.format_table()
    assert "  fused" in table and "weighted, caption weight 0.5" in table


def test_caption_fusion_rrf_by_hand() -> None:
    rrf = CaptionFusion(mode="rrf")
    ranks = ranks_text_to_image_fused(FUSE_TXT, FUSE_IMG, FUSE_TXT, np.array(FUSE_OWNER), np.array(FUSE_OWNER),
                                      rrf, leave_one_out=True)
    # t0: image 0 = 1/62 + 1/61 > image 1 = 1/61 + 1/63. t2: its image has no other caption, so only
    # 1/61 against image 2's 1/62 + 1/61 and image 0's 1/63 + 1/62 -> 3rd; t3 likewise 3rd.
    assert ranks.tolist() == [0, 0, 2, 2]
    s = evaluate_embeddings(FUSE_IMG, FUSE_TXT, FUSE_OWNER, ks=(1,), fusion=rrf)
    assert s.text_to_image_fused is not None and s.text_to_image_fused.recall == pytest.approx({1: 50.0})
    # the rank window of a search for the largest K (max(4K, 50)) is reported with the mode
    assert s.to_dict()["fusion"] == {"mode": "rrf", "k0": 60, "window": 50,
                                     "captions": "reference captions, leave-one-out"}
    assert "rrf (k0 60, ranks within the top 50)" in s.format_table()


def test_rrf_rank_window_by_hand() -> None:
    # one query q; images A, B, C at cosine 0.9, 0.5, 0.1; C's caption 0.8 (1st by caption), A's 0.3 (2nd), B none
    q = np.array([[1.0, 0.0, 0.0]] * 2, np.float32)
    img = np.array([[0.9, 0.43589, 0], [0.5, 0.86603, 0], [0.1, 0.99499, 0]], np.float32)
    cap = np.array([[0.8, 0, 0.6], [0.3, 0, 0.95394]], np.float32)
    truth = np.array([0, 2])  # query 0 asks for A, query 1 for C

    def ranks(window: int | None) -> list[int]:
        return ranks_text_to_image_fused(q, img, cap, np.array([2, 0]), truth, CaptionFusion(mode="rrf"),
                                         leave_one_out=False, window=window).tolist()

    assert ranks(None) == ranks(2) == [0, 1]  # A 1/61 + 1/62 > C 1/63 + 1/61 (window 2: C's image rank 3 is out)
    assert ranks(1) == [1, 1]  # only rank-1 terms: A 1/61 = C 1/61, a tie counted against both


def test_caption_fusion_with_given_captions_and_weights() -> None:
    # one given caption per image, the one-hot of image 2 for image 2 only
    caps = np.array([[0, 0, 1, 0]], dtype=np.float32)
    s = evaluate_embeddings(FUSE_IMG, FUSE_TXT, FUSE_OWNER, ks=(1,), fusion=CaptionFusion(weight=1.0),
                            caption_emb=caps, caption_owner=[2])
    # w = 1: image 2 scores its caption cosine (0, 0, .4, .5), images 0 and 1 their image cosine
    # t0 [.1, .3, 0] -> 2nd; t1 [.2, 0, 0] -> 1st; t2 [0, .5, .4] -> 1st; t3 [0, .6, .5] -> 2nd
    assert s.text_to_image_fused is not None and s.text_to_image_fused.recall == pytest.approx({1: 50.0})
    with pytest.raises(InputError, match="caption_owner"):
        evaluate_embeddings(FUSE_IMG, FUSE_TXT, FUSE_OWNER, fusion=CaptionFusion(), caption_emb=caps,
                            caption_owner=[3])
    with pytest.raises(InputError, match="fuse_weight"):
        CaptionFusion(weight=2)
    with pytest.raises(InputError, match="fuse_mode"):
        CaptionFusion(mode="sum")


def test_eval_command_reports_fused_and_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_karpathy_dataset(tmp_path / "data", name="flickr30k", n_test=6, captions_per_image=2)
    import crossmodal.loader
    from crossmodal.cli import main

    enc = table_encoder(ds)
    monkeypatch.setattr(crossmodal.loader, "load", lambda *a, **k: enc)
    base = ["eval", str(tmp_path / "bundle"), "--dataset", "flickr30k", "--root", str(tmp_path / "data"), "--json"]
    assert main(base + ["--fuse", "captions"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text_to_image"]["R@5"] == pytest.approx(66.67)  # the plain ranking, as without fusion
    # Leave-one-out: image 5's two captions both point at image 0 (WRONG), so each sees the other
    # as image 5's caption: image 5 scores .5 * 0 + .5 * 1 = .5, second only to image 0's 1.0.
    # They move from rank 6 to rank 2; every other caption keeps its rank.
    assert out["text_to_image_fused"]["R@1"] == pytest.approx(66.67)
    assert out["text_to_image_fused"]["R@5"] == pytest.approx(83.33)
    assert out["fusion"] == {"mode": "weighted", "weight": 0.5, "captions": "reference captions, leave-one-out"}
    # Captions from a file, matched by file name: image 1's generated caption points at image 0.
    capfile = tmp_path / "generated.jsonl"
    capfile.write_text(json.dumps({"image": "some/dir/" + ds.test_images[1], "caption": "gen-1"}) + "\n")
    enc.texts["gen-1"] = np.eye(6)[0]
    assert main(base + ["--fuse", "captions", "--fuse-captions", str(capfile), "--fuse-weight", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fusion"]["captions"] == str(capfile)
    # w = 1: image 1 scores its caption's cosine. Image 0's two captions now tie image 0 with
    # image 1 (ties count against), and image 1's right caption finds 0 there: 8 -> 5 firsts.
    assert out["text_to_image_fused"]["R@1"] == pytest.approx(41.67)
    assert main(base + ["--fuse-weight", "0.3"]) == 2
    assert "add --fuse captions" in capsys.readouterr().err
    assert main(base + ["--fuse", "captions", "--fuse-mode", "rrf", "--fuse-weight", "0.3"]) == 2
    assert "rrf has no weight" in capsys.readouterr().err
