"""CLIP: export -> load -> compare with transformers' CLIPModel (the reference users compare against)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import crossmodal
from crossmodal.errors import ArtifactError, ParityError

TEXTS = [
    "two dogs in the snow",
    "a photo of a cat",
    "",
    "Café naïve 雪中的两只狗 🐕‍🦺 &amp; friends",
    " ".join(["a very long caption that goes on"] * 20),  # > 77 tokens: truncated, eot kept
]


def _reference_text(model_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import CLIPModel

    from helpers.clip_vocab import reference_ids

    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    # OpenAI's tokenizer (open_clip) pads with 0 to 77; transformers pools at argmax(ids) = first eot.
    ids = torch.from_numpy(reference_ids(texts)).long()
    with torch.inference_mode():
        return torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1).numpy()


def _random_images(seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(50, 80), (120, 90), (32, 32), (300, 40)]]


def _reference_image(model_dir: Path, images: list) -> np.ndarray:
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    px = CLIPImageProcessor.from_pretrained(str(model_dir))(images=images, return_tensors="np")["pixel_values"]
    with torch.inference_mode():
        feats = model.get_image_features(pixel_values=torch.from_numpy(px)).pooler_output
        return torch.nn.functional.normalize(feats, dim=-1).numpy()


def _row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bundle_layout(tiny_clip_bundle: Path) -> None:
    info = json.loads((tiny_clip_bundle / "bundle.json").read_text())
    assert info["family"] == "clip" and info["dim"] == 16 and info["towers"] == {"image": "image", "text": "text"}
    assert 1.0 < info["logit_scale"] < 200.0
    for tower in ("image", "text"):
        for variant in ("cpu-fp32", "cpu-int8"):
            d = tiny_clip_bundle / tower / variant
            m = json.loads((d / "manifest.json").read_text())
            assert (d / "model.onnx").is_file()
            assert m["tower"] == tower and m["variant"] == variant and m["normalized"] is True
            assert m["parity"]["min_cosine"] >= (0.99999 if variant == "cpu-fp32" else 0.99)
            assert len(m["sha256"]) == 64
        assert (tiny_clip_bundle / "text" / "cpu-fp32" / "tokenizer.json").is_file()
    text_manifest = json.loads((tiny_clip_bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    assert [i["shape"] for i in text_manifest["inputs"]] == [["batch", "sequence"]] * 2
    int8 = json.loads((tiny_clip_bundle / "text" / "cpu-int8" / "manifest.json").read_text())
    from crossmodal.export.quantize import RECIPES

    # recipe names are a base recipe plus variants, e.g. "nbits8-qkv-fp32"
    assert int8["quantization"]["recipe"].split("-")[0] in RECIPES
    assert all("recipe" in t for t in int8["quantization"]["trials"])


def test_text_fp32_matches_transformers(tiny_clip_bundle: Path, tiny_clip_dir: Path) -> None:
    enc = crossmodal.load(tiny_clip_bundle, variant="cpu-fp32", modality="text")
    got = enc.encode_text(TEXTS)
    ref = _reference_text(tiny_clip_dir, TEXTS)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    assert _row_cos(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_padding_and_batching_do_not_change_embeddings(tiny_clip_bundle: Path) -> None:
    enc = crossmodal.load(tiny_clip_bundle, modality="text")
    together = enc.encode_text(TEXTS)
    alone = np.concatenate([enc.encode_text([t]) for t in TEXTS])
    small_batches = enc.encode_text(TEXTS, batch_size=2)  # exercises length-sorted batching
    assert np.abs(together - alone).max() <= 1e-5
    assert np.abs(together - small_batches).max() <= 1e-5
    assert np.abs(enc.encode_text("two dogs in the snow") - together[:1]).max() <= 1e-6


def test_image_fp32_matches_transformers(tiny_clip_bundle: Path, tiny_clip_dir: Path) -> None:
    images = _random_images()
    enc = crossmodal.load(tiny_clip_bundle, variant="cpu-fp32", modality="image")
    got = enc.encode_image(images, batch_size=3)  # two batches: prefetch path
    ref = _reference_image(tiny_clip_dir, images)
    assert got.shape == (4, 16)
    assert _row_cos(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() <= 1e-4


def test_int8_fidelity(tiny_clip_bundle: Path, tiny_clip_dir: Path) -> None:
    images = _random_images(1)
    enc = crossmodal.load(tiny_clip_bundle, variant="cpu-int8")
    text_cos = _row_cos(enc.encode_text(TEXTS), _reference_text(tiny_clip_dir, TEXTS))
    image_cos = _row_cos(enc.encode_image(images), _reference_image(tiny_clip_dir, images))
    assert text_cos.min() >= 0.99, text_cos
    assert image_cos.min() >= 0.99, image_cos


def test_image_inputs_of_every_kind_agree(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    arr = np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    enc = crossmodal.load(tiny_clip_bundle, modality="image")
    vecs = enc.encode_image([str(path), path, path.read_bytes(), Image.fromarray(arr), arr])
    assert np.abs(vecs - vecs[0]).max() <= 1e-6


def test_rank_is_softmax_of_scaled_cosines(tiny_clip_bundle: Path) -> None:
    enc = crossmodal.load(tiny_clip_bundle)
    image = _random_images()[0]
    texts = ["a", "b b", "c c c"]
    p = enc.rank(image, texts)
    logits = enc.bundle.logit_scale * (enc.encode_text(texts) @ enc.encode_image([image])[0])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert p.shape == (3,) and abs(float(p.sum()) - 1.0) < 1e-6
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)


def test_sentence_transformers_clip_dir_exports_the_same_graphs(tiny_st_clip_dir: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.clip import export_clip

    out = export_clip(str(tiny_st_clip_dir), tmp_path / "st", "cpu-fp32", optimize=False)
    enc = crossmodal.load(out)
    assert np.abs(enc.encode_text(TEXTS) - _reference_text(tiny_clip_dir, TEXTS)).max() <= 1e-4
    images = _random_images(2)
    assert np.abs(enc.encode_image(images) - _reference_image(tiny_clip_dir, images)).max() <= 1e-4


def test_export_refuses_a_graph_that_misses_parity(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.clip import export_clip
    from crossmodal.export.pipeline import Thresholds

    impossible = Thresholds(fp32_min_cosine=1.0 + 1e-9)
    with pytest.raises(ParityError, match="fails its parity threshold"):
        export_clip(str(tiny_clip_dir), tmp_path / "bad", "cpu-fp32", thresholds=impossible, optimize=False, towers=("text",))
    assert not (tmp_path / "bad" / "text" / "cpu-fp32").exists()
    assert not (tmp_path / "bad" / "bundle.json").exists()


def test_missing_checkpoint_says_how_to_use_a_local_dir(tmp_path: Path) -> None:
    from crossmodal.export.clip import export_clip

    with pytest.raises(ArtifactError, match="--model /path/to/DIR"):
        export_clip("nobody/no-such-clip-model", tmp_path / "x", "cpu-fp32")
    with pytest.raises(ArtifactError, match="no such directory"):
        export_clip(str(tmp_path / "missing-dir"), tmp_path / "y", "cpu-fp32")


def test_verify_passes_and_detects_tampering(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from crossmodal.verify import verify_bundle

    results = verify_bundle(tiny_clip_bundle)
    assert len(results) == 4 and all(r.ok for r in results), results
    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip_bundle, copy)
    with open(copy / "text" / "cpu-fp32" / "model.onnx", "ab") as f:
        f.write(b"\0")
    bad = [r for r in verify_bundle(copy) if not r.ok]
    assert [(r.tower, r.variant) for r in bad] == [("text", "cpu-fp32")] and "sha256" in bad[0].detail


def test_fast_decode_is_opt_in_and_close_to_exact(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(5)
    # a smooth large photo-like image: reduced-DCT decoding only applies to big JPEGs
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(base).resize((1600, 1200), Image.BICUBIC).save(photo, quality=92)
    exact = crossmodal.load(tiny_clip_bundle, modality="image")
    fast = crossmodal.load(tiny_clip_bundle, modality="image", fast_decode=True)
    assert exact.image is not None and exact.image.fast_decode is False
    a, b = exact.encode_image([photo]), fast.encode_image([photo])
    assert not np.array_equal(a, b)  # the reduced decode really ran
    assert float(np.sum(a * b)) >= 0.999
