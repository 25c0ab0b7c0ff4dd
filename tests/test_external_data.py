"""Graphs with external data (the weights of graphs past protobuf's 2 GB in ``model.onnx.data``).

A full-size graph past 2 GB takes minutes and gigabytes to export, so the
tiny M-CLIP (XLM-R, the architecture of the real > 2 GB tower) is exported
twice: as always, and with ``onnx_files.EXTERNAL_MIN_BYTES`` at 0 so that
every graph of every step (trace, fusions, shape inference on weight stubs,
the quantisers, fp16) goes external. Parity of the two bundles is the core
check; verify and load must catch a missing, truncated or altered data file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import crossmodal
from crossmodal.durable_files import file_digest
from crossmodal.errors import ArtifactError
from crossmodal.manifest import DATA_FIELDS, MANIFEST_FILE, TowerManifest, read_manifest
from crossmodal.verify import verify_bundle

from helpers.mbert_models import all_texts, write_tiny_mclip

pytest.importorskip("multilingual_clip")

VARIANTS = ("cpu-fp32", "cpu-int8", "gpu-fp16")
TEXTS = all_texts()


@pytest.fixture(scope="module")
def mclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mclip(tmp_path_factory.mktemp("mclip") / "tiny-mclip")


def _export(mclip_dir: Path, out: Path, targets: str, *, external: bool, recipe: str = "dynamic") -> Path:
    from crossmodal.export import onnx_files, weightless
    from crossmodal.export.mbert import export_mbert

    with pytest.MonkeyPatch.context() as mp:
        if external:
            mp.setattr(onnx_files, "EXTERNAL_MIN_BYTES", 0)
            # Stub the tiny graph's weights too, so fusions and shape inference run on stubs of external weights.
            mp.setattr(weightless, "MIN_STUB_BYTES", 4096)
        return export_mbert(str(mclip_dir), out, targets, int8_recipe=recipe)


@pytest.fixture(scope="module")
def one_file(mclip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(mclip_dir, tmp_path_factory.mktemp("one") / "bundle", ",".join(VARIANTS), external=False)


@pytest.fixture(scope="module")
def external(mclip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(mclip_dir, tmp_path_factory.mktemp("ext") / "bundle", ",".join(VARIANTS), external=True)


@pytest.fixture
def ext_copy(external: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(external, tmp_path / "bundle"))


def test_large_graphs_ship_with_one_data_file_named_in_the_manifest(external: Path, one_file: Path) -> None:
    for variant in VARIANTS:
        folder = external / "text" / variant
        raw = json.loads((folder / MANIFEST_FILE).read_text())
        assert raw["data_file"] == "model.onnx.data"
        assert (raw["data_sha256"], raw["data_bytes"]) == file_digest(folder / "model.onnx.data")
        assert raw["sha256"] == file_digest(folder / "model.onnx")[0]
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"model.onnx.data"}, variant  # one file, under the bundle's name for it
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["manifest.json", "model.onnx", "model.onnx.data", "reference.npz", "tokenizer.json"])
        # Graphs that fit stay one file, and their manifests are as before data files existed.
        plain = one_file / "text" / variant
        assert not (plain / "model.onnx.data").exists()
        assert not set(DATA_FIELDS) & set(json.loads((plain / MANIFEST_FILE).read_text()))


def test_external_bundle_encodes_like_the_one_file_bundle(external: Path, one_file: Path) -> None:
    for variant in VARIANTS:
        got = crossmodal.load(external, variant, allow_cpu_fallback=True).encode_text(TEXTS)
        want = crossmodal.load(one_file, variant, allow_cpu_fallback=True).encode_text(TEXTS)
        same_graph = read_manifest(external / "text" / variant).graph_rewrites == \
            read_manifest(one_file / "text" / variant).graph_rewrites
        # Whether the fused fp32 graph is kept is decided by timing, so the two exports may differ there.
        np.testing.assert_allclose(got, want, rtol=0, atol=0 if same_graph else 1e-6, err_msg=variant)


def test_every_step_handled_the_external_graphs(external: Path, one_file: Path) -> None:
    # No step fell back or failed on external graphs: the same rewrites and recipes were tried and kept.
    for variant in VARIANTS:
        a, b = read_manifest(one_file / "text" / variant), read_manifest(external / "text" / variant)
        trials = [{k: t.get(k) for k in ("rewrite", "min_cosine", "max_abs")} for t in a.extra.get("rewrite_trials", [])]
        assert trials == [{k: t.get(k) for k in ("rewrite", "min_cosine", "max_abs")}
                          for t in b.extra.get("rewrite_trials", [])]
        if a.quantization:
            assert {k: v for k, v in a.quantization.items() if k != "trials"} == \
                   {k: v for k, v in b.quantization.items() if k != "trials"}
            assert [t.get("rejected") for t in b.quantization["trials"]] == [None]


@pytest.mark.parametrize("recipe", ["nbits8", "qdq"])
def test_other_int8_recipes_read_external_graphs(mclip_dir: Path, tmp_path: Path, recipe: str) -> None:
    bundles = [_export(mclip_dir, tmp_path / f"{ext}", "cpu-int8", external=ext, recipe=recipe) for ext in (False, True)]
    assert (bundles[1] / "text" / "cpu-int8" / "model.onnx.data").is_file()
    one, ext = (crossmodal.load(b, "cpu-int8").encode_text(TEXTS) for b in bundles)
    np.testing.assert_array_equal(ext, one)


def test_verify_checks_both_files(ext_copy: Path) -> None:
    assert all(r.ok for r in verify_bundle(ext_copy))
    data = ext_copy / "text" / "cpu-fp32" / "model.onnx.data"
    with open(data, "r+b") as f:  # same size, one byte changed: only the sha256 can tell
        f.seek(data.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    results = {r.variant: r for r in verify_bundle(ext_copy)}
    assert not results["cpu-fp32"].ok
    assert "sha256 mismatch" in results["cpu-fp32"].detail and str(data) in results["cpu-fp32"].detail
    assert results["cpu-int8"].ok and results["gpu-fp16"].ok


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_load_names_a_missing_or_truncated_data_file(ext_copy: Path, damage: str) -> None:
    data = ext_copy / "text" / "cpu-int8" / "model.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=rf"{data}.*(is missing|has \d+ bytes, not \d+).*Copy the folder") as exc:
        crossmodal.load(ext_copy, "cpu-int8")
    assert "crossmodal verify" in str(exc.value)
    result = next(r for r in verify_bundle(ext_copy, ["cpu-int8"]))
    assert not result.ok and str(data) in result.detail
    crossmodal.load(ext_copy, "cpu-fp32")  # the other variants are untouched


def test_copy_tower_takes_the_data_file(external: Path, tmp_path: Path) -> None:
    from crossmodal.export import artifact

    artifact.copy_tower(external, "text", tmp_path / "b", "text", "cpu-fp32")
    dst = tmp_path / "b" / "text" / "cpu-fp32"
    assert file_digest(dst / "model.onnx.data")[0] == read_manifest(dst).data_sha256
    src = tmp_path / "src"
    shutil.copytree(external, src)
    (src / "text" / "cpu-fp32" / "model.onnx.data").unlink()
    with pytest.raises(ArtifactError, match=r"model.onnx.data is missing"):
        artifact.copy_tower(src, "text", tmp_path / "c", "text", "cpu-fp32")


def test_triton_repository_gets_the_data_file(external: Path, tmp_path: Path) -> None:
    from crossmodal.export.triton import export_triton

    repo = export_triton(external, tmp_path / "repo", "cpu-fp32")
    version = next(repo.glob("*/1"))
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert file_digest(version / "model.onnx.data")[0] == read_manifest(external / "text" / "cpu-fp32").data_sha256


def test_manifests_without_data_fields_load_as_before(tiny_clip_bundle: Path) -> None:
    for manifest_path in tiny_clip_bundle.glob("*/*/manifest.json"):
        raw = json.loads(manifest_path.read_text())
        assert not set(DATA_FIELDS) & set(raw)
        m = TowerManifest.from_dict(raw)
        assert m.data_file is None
        assert not set(DATA_FIELDS) & set(m.to_dict())
    enc = crossmodal.load(tiny_clip_bundle)
    assert enc.encode_text(["a dog"]).shape == (1, enc.dim)
    assert all(r.ok for r in verify_bundle(tiny_clip_bundle))


@pytest.mark.parametrize("fields, message", [
    ({"data_file": "../model.onnx.data"}, "must be a file name next to"),
    ({"data_file": "model.onnx"}, "must be a file name next to"),
    ({"data_sha256": "abc"}, "64 lowercase hex digits"),
    ({"data_bytes": 0}, "positive size"),
])
def test_manifest_data_fields_are_validated(external: Path, fields: dict, message: str) -> None:
    raw = json.loads((external / "text" / "cpu-fp32" / MANIFEST_FILE).read_text())
    with pytest.raises(ArtifactError, match=message):
        TowerManifest.from_dict({**raw, **fields})


# ----------------------------------------------------------------------------- onnx_files on a small graph
def _matmul_graph(rows: int = 64) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, rows)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((rows, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path) -> np.ndarray:
    import onnxruntime as ort

    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_save_goes_external_past_the_threshold_and_never_appends(tmp_path: Path) -> None:
    from crossmodal.export import onnx_files

    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    onnx_files.save(_matmul_graph(), small)
    assert not onnx_files.is_external(small)
    for _ in range(2):  # saving again replaces the data file instead of growing it
        onnx_files.save(_matmul_graph(), big, min_bytes=1024)
        assert onnx_files.data_path(big).stat().st_size == (8 * 64 + 64 * 4) * 4
    np.testing.assert_array_equal(_run(big), _run(small))
    onnx_files.save(_matmul_graph(), big)  # now under the threshold: one file, no stale data left
    assert not onnx_files.data_path(big).exists()


def test_gather_makes_one_data_file_from_one_file_per_tensor(tmp_path: Path) -> None:
    from crossmodal.export import onnx_files

    scattered = tmp_path / "torch" / "model.onnx"  # the TorchScript exporter's layout past 2 GB
    scattered.parent.mkdir()
    onnx.save_model(_matmul_graph(), str(scattered), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(scattered.parent.iterdir())) == 3
    out = onnx_files.gather(scattered, tmp_path / "g.onnx")
    assert out == tmp_path / "g.onnx.data"
    graph = onnx.load(str(tmp_path / "g.onnx"), load_external_data=False)
    assert {int(e.value) % 4096 for t in graph.graph.initializer for e in t.external_data if e.key == "offset"} == {0}
    np.testing.assert_array_equal(_run(tmp_path / "g.onnx"), _run(scattered))
    onnx_files.move(tmp_path / "g.onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "g.onnx.data").exists()
    np.testing.assert_array_equal(_run(tmp_path / "m.onnx"), _run(scattered))


def test_weight_stubs_of_an_external_graph_restore_exactly(tmp_path: Path) -> None:
    from crossmodal.export import onnx_files
    from crossmodal.export.weightless import STUB_LOCATION, load_without_weights, restore_weights

    path = onnx_files.save(_matmul_graph(), tmp_path / "m.onnx", min_bytes=0)
    light, weights = load_without_weights(path, min_bytes=1024)
    locations = {e.value for t in light.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {STUB_LOCATION} and set(weights) == {"w1", "w2"}
    restore_weights(light, weights)
    full = onnx_files.load(path)  # loading leaves data_location set to DEFAULT; the restored stubs leave it unset
    assert [(t.name, list(t.dims), t.raw_data, t.data_location) for t in light.graph.initializer] == \
           [(t.name, list(t.dims), t.raw_data, t.data_location) for t in full.graph.initializer]
    assert not any(t.external_data for t in light.graph.initializer)


def test_fusion_and_shape_inference_read_external_weights_from_disk(external: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime's BERT attention fusion reads the Q/K/V weights: from the data file, never by loading every weight.
    from crossmodal.export import onnx_files, quantize
    from crossmodal.export.optimize import fuse_transformer

    src = tmp_path / "raw.onnx"
    onnx_files.copy(external / "text" / "cpu-fp32" / "model.onnx", src)
    loads = []
    real_load = onnx_files.load
    monkeypatch.setattr(onnx_files, "load", lambda path, *, weights=True: loads.append(weights) or real_load(
        path, weights=weights))
    fused = fuse_transformer(src, tmp_path / "fused.onnx", "bert", 4, 32)
    shaped = quantize._with_shapes(src, tmp_path / "shapes.onnx")
    assert shaped == tmp_path / "shapes.onnx" and loads == [False, False]
    assert {"Attention", "SkipLayerNormalization"} <= {n.op_type for n in onnx.load(str(fused)).graph.node}
    assert onnx_files.is_external(fused) and onnx_files.is_external(shaped)
    feed = {"input_ids": np.array([[0, 5, 9, 2]], np.int64), "attention_mask": np.ones((1, 4), np.int64)}
    import onnxruntime as ort

    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for p in (src, fused, shaped)]
    for out in outs[1:]:  # the fused ops and the inferred shapes let onnxruntime pick other kernels
        np.testing.assert_allclose(out, outs[0], atol=1e-6, rtol=0)


def test_move_renames_the_data_file_without_copying_it(tmp_path: Path) -> None:
    from crossmodal.export import onnx_files

    src = onnx_files.save(_matmul_graph(), tmp_path / "a.onnx", min_bytes=0)
    want, inode = _run(src), onnx_files.data_path(src).stat().st_ino
    dst = onnx_files.move(src, tmp_path / "b.onnx")
    assert not src.exists() and not onnx_files.data_path(src).exists()
    assert onnx_files.data_path(dst).stat().st_ino == inode
    np.testing.assert_array_equal(_run(dst), want)
    assert onnx_files.load(dst).graph.initializer[0].raw_data  # onnx reads it (one link, its own name)
