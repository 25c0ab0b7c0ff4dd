"""mbert family: export each source format, load with the runtime, compare with the reference implementation.

References: ``SentenceTransformer.encode(normalize_embeddings=True)`` for the
sentence-transformers format, the ``multilingual-clip`` package's classes for
M-CLIP and legacy M-BERT (their outputs L2-normalised, as the graph is).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.errors import ArtifactError, IncompatibleTowersError

from helpers.mbert_models import (
    TINY_DIM,
    all_texts,
    load_mclip_reference,
    long_text,
    write_tiny_legacy_mbert,
    write_tiny_mclip,
    write_tiny_st_mbert,
)

pytest.importorskip("multilingual_clip")
torch = pytest.importorskip("torch")

TEXTS = all_texts()
IMAGES = sorted((Path(__file__).resolve().parent.parent / "examples" / "images").glob("*.png"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_unit(a.astype(np.float64)) * _unit(b.astype(np.float64)), axis=1)


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_st_mbert(tmp_path_factory.mktemp("st-mbert") / "tiny-st-mbert")


@pytest.fixture(scope="module")
def st_bundle(st_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossmodal.export.mbert import export_mbert

    return export_mbert(str(st_dir), tmp_path_factory.mktemp("b") / "st-text", "cpu-fp32,cpu-int8")


@pytest.fixture(scope="module")
def st_reference(st_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device="cpu")
    return model.encode(TEXTS + [long_text()], normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def mclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mclip(tmp_path_factory.mktemp("mclip") / "tiny-mclip")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_legacy_mbert(tmp_path_factory.mktemp("legacy") / "tiny-m-bert")


# ----------------------------------------------------------------- sentence-transformers format
def test_st_export_matches_sentence_transformers(st_bundle: Path, st_reference: np.ndarray) -> None:
    texts = TEXTS + [long_text()]
    fp32 = crossmodal.load(st_bundle).encode_text(texts)
    assert fp32.shape == (len(texts), TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    assert _row_cos(fp32, st_reference).min() >= 0.99999
    int8 = crossmodal.load(st_bundle, variant="cpu-int8").encode_text(texts)
    assert _row_cos(int8, st_reference).min() >= 0.99


def test_st_manifest_records_what_the_source_says(st_bundle: Path, st_dir: Path) -> None:
    bundle = json.loads((st_bundle / "bundle.json").read_text())
    assert bundle["family"] == "mbert" and bundle["dim"] == TINY_DIM
    assert bundle["space"] == st_dir.name  # text-only: the model's own space
    assert bundle["logit_scale"] == 20.0 and bundle["towers"] == {"text": "text"}
    assert bundle["pairing"]["text"]["format"] == "sentence-transformers"
    m = json.loads((st_bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    # DistilBERT's forward has no token_type_ids
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert m["inputs"][0]["shape"] == ["batch", "sequence"]
    assert m["text"]["max_length"] == 64 and m["text"]["pad_id"] == 0 and m["text"]["cleaning"] == "bert"
    assert m["normalized"] is True
    assert m["extra"]["pooling"] == "mean"
    assert m["extra"]["projection"] == [{"in": 32, "out": TINY_DIM, "bias": False, "activation": "Identity"}]
    q = json.loads((st_bundle / "text" / "cpu-int8" / "manifest.json").read_text())
    assert q["quantization"]["recipe"].split("-")[0] in ("nbits8", "dynamic") and q["parity"]["min_cosine"] >= 0.99
    assert any("embeddings" in note for note in q["extra"]["int8_kept_fp32"])


# ----------------------------------------------------------------- Multilingual-CLIP format
def test_mclip_export_matches_reference_class(mclip_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from crossmodal.export.mbert import export_mbert

    bundle = export_mbert(str(mclip_dir), tmp_path / "mclip", "cpu-fp32,cpu-int8")
    ref_model = load_mclip_reference(mclip_dir)
    tok = AutoTokenizer.from_pretrained(str(mclip_dir))
    with torch.no_grad():
        ref = ref_model.forward(TEXTS, tok).numpy()  # type: ignore[attr-defined]
    got = crossmodal.load(bundle).encode_text(TEXTS)
    assert _row_cos(got, ref).min() >= 0.99999
    np.testing.assert_allclose(got, _unit(ref), atol=1e-5)
    assert _row_cos(crossmodal.load(bundle, variant="cpu-int8").encode_text(TEXTS), ref).min() >= 0.99
    m = json.loads((bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]  # XLM-R: no token types
    assert m["text"]["pad_id"] == 1 and m["text"]["cleaning"] == "none" and m["text"]["max_length"] == 64
    assert m["extra"]["source_format"] == "m-clip" and m["extra"]["base_model_type"] == "xlm-roberta"


def test_mclip_base_is_built_from_config_never_downloaded(mclip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.mbert import export_mbert

    moved = tmp_path / "mclip"
    shutil.copytree(mclip_dir, moved)
    cfg = json.loads((moved / "config.json").read_text())
    base_cfg = Path(cfg["modelBase"]) / "config.json"
    cfg["modelBase"] = "example-org/not-on-this-machine"
    (moved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="--base-config"):
        export_mbert(str(moved), tmp_path / "x", "cpu-fp32")
    out = export_mbert(str(moved), tmp_path / "ok", "cpu-fp32", base_config=base_cfg)
    assert crossmodal.load(out).encode_text(["zwei Hunde im Schnee", "雪中的两只狗"]).shape == (2, TINY_DIM)


# ----------------------------------------------------------------- legacy M-BERT + pickled head
def test_legacy_export_matches_reference_class(legacy: tuple[Path, Path], tmp_path: Path) -> None:
    from multilingual_clip.legacy_multilingual_clip import MultilingualClip

    from crossmodal.export.mbert import export_mbert

    model_dir, head = legacy
    bundle = export_mbert(str(model_dir), tmp_path / "legacy", "cpu-fp32", head=head)
    ref_model = MultilingualClip(str(model_dir), str(model_dir), head.name, weights_dir=f"{head.parent}/").eval()
    with torch.no_grad():
        ref = ref_model(TEXTS).numpy()
    got = crossmodal.load(bundle).encode_text(TEXTS)
    assert _row_cos(got, ref).min() >= 0.99999
    m = json.loads((bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    # BERT's tokenizer passes token_type_ids; the graph takes them
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["extra"]["source_format"] == "m-clip-legacy" and m["extra"]["head_file"] == head.name


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_legacy_head_never_unpickles_code(legacy: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.export.mbert_sources import load_legacy_head

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps([_Exploit(), np.zeros(3, np.float32)]))
    with pytest.raises(ArtifactError, match="arbitrary unpickling"):
        load_legacy_head(bad)
    assert not (tmp_path / "PWNED").exists()
    # A torch.save'd head is read with weights_only=True.
    saved = tmp_path / "head.pt"
    torch.save({"weight": torch.ones(4, 3), "bias": torch.zeros(4)}, saved)
    lin = load_legacy_head(saved)
    assert (lin.in_features, lin.out_features) == (3, 4)
    # The released layout: [W (in, out), b] arrays, W transposed into torch's (out, in).
    lin = load_legacy_head(legacy[1])
    with open(legacy[1], "rb") as f:
        w, b = pickle.load(f)
    np.testing.assert_array_equal(lin.weight.detach().numpy(), w.T)
    np.testing.assert_array_equal(lin.bias.detach().numpy(), b)


# ----------------------------------------------------------------- pairing with a CLIP image tower
def test_cross_modal_bundle_scores_equal_pytorch_pair(st_dir: Path, st_reference: np.ndarray, tiny_clip_bundle: Path,
                                                      tiny_clip_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPModel

    from crossmodal.export.mbert import export_mbert

    out = export_mbert(str(st_dir), tmp_path / "paired", "cpu-fp32,cpu-int8", image_bundle=tiny_clip_bundle)
    clip_info = json.loads((tiny_clip_bundle / "bundle.json").read_text())
    info = json.loads((out / "bundle.json").read_text())
    assert info["space"] == clip_info["space"] and info["logit_scale"] == clip_info["logit_scale"]
    assert info["towers"] == {"image": "image", "text": "text"}
    assert info["pairing"]["image"]["space"] == clip_info["space"]
    assert info["pairing"]["text"]["format"] == "sentence-transformers"
    for tower in ("image", "text"):
        for variant in ("cpu-fp32", "cpu-int8"):
            assert json.loads((out / tower / variant / "manifest.json").read_text())["space"] == clip_info["space"]

    enc = crossmodal.load(out)
    pixels = enc.image.preprocess(IMAGES)  # type: ignore[union-attr]
    img = enc.image.run_pixels(pixels)  # type: ignore[union-attr]
    txt = enc.encode_text(TEXTS)
    assert img.shape == (len(IMAGES), TINY_DIM) and txt.shape == (len(TEXTS), TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    clip = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    with torch.no_grad():
        feats = clip.get_image_features(pixel_values=torch.from_numpy(pixels))
        # transformers 5 returns the projected features as pooler_output
        ref_img = _unit((feats if isinstance(feats, torch.Tensor) else feats.pooler_output).numpy())
    ref_scores = ref_img @ st_reference[: len(TEXTS)].T
    np.testing.assert_allclose(img @ txt.T, ref_scores, atol=1e-5)
    assert np.array_equal(enc.encode_image(IMAGES), img)
    # the int8 towers of the same bundle load as a pair too
    assert crossmodal.load(out, variant="cpu-int8").encode_text(["zwei Hunde im Schnee", "雪中的两只狗"]).shape == (2, TINY_DIM)


def test_image_model_exports_both_towers_in_one_run(mclip_dir: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.mbert import export_mbert

    out = export_mbert(str(mclip_dir), tmp_path / "pair2", "cpu-fp32", image_model=str(tiny_clip_dir))
    info = json.loads((out / "bundle.json").read_text())
    assert info["space"] == tiny_clip_dir.name and info["pairing"]["image"]["space"] == tiny_clip_dir.name
    enc = crossmodal.load(out)
    scores = enc.encode_image(IMAGES[:2]) @ enc.encode_text(["zwei Hunde im Schnee", "雪中的两只狗", "a cat"]).T
    assert scores.shape == (2, 3) and np.all(np.abs(scores) <= 1.0 + 1e-5)


def test_pairing_refused_when_dims_differ(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    from crossmodal.export.mbert import export_mbert

    wide = write_tiny_mclip(tmp_path / "mclip-12", dim=12)
    with pytest.raises(IncompatibleTowersError, match="12 dims"):
        export_mbert(str(wide), tmp_path / "bad", "cpu-fp32", image_bundle=tiny_clip_bundle)
    assert not (tmp_path / "bad" / "bundle.json").exists()


def test_pairing_refused_when_card_names_another_clip(mclip_dir: Path, tiny_clip_bundle: Path, tmp_path: Path) -> None:
    from crossmodal.export.mbert import export_mbert

    card = "mbert-xlm-roberta-large-vit-b-32"
    with pytest.raises(IncompatibleTowersError, match="trained against"):
        export_mbert(str(mclip_dir), tmp_path / "bad", "cpu-fp32", image_bundle=tiny_clip_bundle, card=card)
    out = export_mbert(str(mclip_dir), tmp_path / "forced", "cpu-fp32", image_bundle=tiny_clip_bundle, card=card,
                       force_pairing=True)
    info = json.loads((out / "bundle.json").read_text())
    assert info["pairing"]["forced"] is True and info["pairing"]["text"]["card"] == card


def test_cli_export_mbert(mclip_dir: Path, tmp_path: Path) -> None:
    from crossmodal.export.cli import main

    out = tmp_path / "cli"
    assert main(["mbert", "--model", str(mclip_dir), "--out", str(out), "--targets", "cpu-fp32"]) == 0
    assert crossmodal.load(out).encode_text(["zwei Hunde im Schnee", "雪中的两只狗"]).shape == (2, TINY_DIM)


_TORCH_FREE = """
import sys, json
for name in ("torch", "transformers", "sentence_transformers", "optimum"):
    sys.modules[name] = None  # any import of them now raises ImportError
import crossmodal
enc = crossmodal.load(sys.argv[1])
emb = enc.encode_text(["zwei Hunde im Schnee", "雪中的两只狗"])
print(json.dumps({"shape": list(emb.shape), "norms": [float(x) for x in (emb ** 2).sum(1)]}))
"""


def test_multilingual_bundle_encodes_without_torch(st_bundle: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TORCH_FREE, str(st_bundle)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, TINY_DIM]
    np.testing.assert_allclose(out["norms"], 1.0, atol=1e-5)


# ----------------------------------------------------------------- pooling and Dense configs other than the default
@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len_tokens"])
def test_pooling_matches_sentence_transformers_pooling(mode: str) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    from crossmodal.export.mbert import pool

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 8, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    want = Pooling(8, pooling_mode=mode)({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool(hidden, mask, mode), want, rtol=0, atol=1e-6)


def test_legacy_pooling_keys_and_tanh_dense_with_bias(tmp_path: Path) -> None:
    from sentence_transformers.base.modules.dense import Dense

    from crossmodal.export.mbert_sources import _pooling_mode, _read_dense

    old_cfg = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
               "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}
    assert _pooling_mode(old_cfg, tmp_path) == "max"
    with pytest.raises(ArtifactError, match="not supported"):
        _pooling_mode({"pooling_mode": ["mean", "max"]}, tmp_path)
    torch.manual_seed(0)
    dense = Dense(8, 4, bias=True, activation_function=torch.nn.Tanh())
    dense.save(str(tmp_path))
    layer = _read_dense(tmp_path)
    assert layer.describe() == {"in": 8, "out": 4, "bias": True, "activation": "Tanh"}
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer.activation(layer.linear(x)), dense({"sentence_embedding": x})["sentence_embedding"])
