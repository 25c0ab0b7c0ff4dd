"""Bad bundles and bad inputs give specific errors that name the input; nothing crashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.errors import (
    ArtifactError,
    CrossmodalError,
    ImageInputError,
    IncompatibleTowersError,
    InputError,
    ProviderUnavailableError,
    TextInputError,
)


@pytest.fixture()
def bundle_copy(tiny_clip_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tiny_clip_bundle, dst)
    return dst


@pytest.fixture(scope="module")
def enc(tiny_clip_bundle: Path) -> crossmodal.Encoder:
    return crossmodal.load(tiny_clip_bundle)


def test_missing_bundle_dir(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        crossmodal.load(tmp_path / "nope")


def test_dir_without_bundle_json(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="bundle.json does not exist"):
        crossmodal.load(tmp_path)


def test_corrupt_bundle_json(bundle_copy: Path) -> None:
    (bundle_copy / "bundle.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        crossmodal.load(bundle_copy)


def test_manifest_missing_field(bundle_copy: Path) -> None:
    p = bundle_copy / "text" / "cpu-fp32" / "manifest.json"
    m = json.loads(p.read_text())
    del m["dim"]
    p.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"text/cpu-fp32/manifest.json.*dim"):
        crossmodal.load(bundle_copy)


def test_manifest_counts_out_of_range_are_refused_at_load() -> None:
    from crossmodal.manifest import ImagePreprocess, TextSettings

    # Refused when the bundle is read, not at the first encode (max_words 0 once failed only inside clean_albef).
    for bad in ({"crop_size": 0}, {"crop_size": -4}, {"size": True}, {"size": 0}):
        with pytest.raises(ArtifactError, match=rf"manifest preprocess: bad {next(iter(bad))}"):
            ImagePreprocess(**{"size": 224, **bad})
    for bad in ({"max_words": 0}, {"max_words": True}, {"max_length": 1}):
        with pytest.raises(ArtifactError, match=rf"manifest text: bad {next(iter(bad))}"):
            TextSettings(**{"max_length": 77, **bad})
    assert ImagePreprocess(size=224, crop_size=200).output_size == 200
    assert TextSettings(max_length=30, cleaning="albef", max_words=30).max_words == 30


def test_bad_arguments_to_load_are_input_errors(tiny_clip_bundle: Path) -> None:
    # CrossmodalError subclasses (InputError is also a ValueError): the CLI prints them as one line.
    with pytest.raises(InputError, match="modality must be None, 'image' or 'text', got 'audio'"):
        crossmodal.load(tiny_clip_bundle, modality="audio")


def test_model_file_missing(bundle_copy: Path) -> None:
    (bundle_copy / "image" / "cpu-fp32" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx is missing"):
        crossmodal.load(bundle_copy)


def test_corrupt_model_file(bundle_copy: Path) -> None:
    (bundle_copy / "image" / "cpu-fp32" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="onnxruntime cannot load"):
        crossmodal.load(bundle_copy, modality="image")


def test_missing_variant_lists_the_available_ones(tiny_clip_bundle: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no 'gpu-fp16' variant.*cpu-fp32"):
        crossmodal.load(tiny_clip_bundle, variant="gpu-fp16")


def test_gpu_provider_missing_is_explained(bundle_copy: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    shutil.copytree(bundle_copy / "text" / "cpu-fp32", bundle_copy / "text" / "gpu-fp16")
    p = bundle_copy / "text" / "gpu-fp16" / "manifest.json"
    m = json.loads(p.read_text())
    m["variant"] = "gpu-fp16"
    p.write_text(json.dumps(m))
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        crossmodal.load(bundle_copy, variant="gpu-fp16", modality="text")
    enc = crossmodal.load(bundle_copy, variant="gpu-fp16", modality="text", allow_cpu_fallback=True)
    assert enc.encode_text(["x"]).shape == (1, 16)


def test_towers_from_different_spaces_are_refused(bundle_copy: Path) -> None:
    p = bundle_copy / "text" / "cpu-fp32" / "manifest.json"
    m = json.loads(p.read_text())
    m["space"] = "some-other-model"
    p.write_text(json.dumps(m))
    with pytest.raises(IncompatibleTowersError, match="some-other-model"):
        crossmodal.load(bundle_copy)


def test_modality_selects_one_tower(tiny_clip_bundle: Path) -> None:
    only_text = crossmodal.load(tiny_clip_bundle, modality="text")
    assert only_text.image is None and only_text.text is not None
    with pytest.raises(InputError, match="without a image tower"):
        only_text.encode_image([np.zeros((8, 8, 3), np.uint8)])


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (None, r"text #0 is a NoneType"),
        (3, r"text #0 is a int"),
        (b"bytes", r"text #0 is a bytes"),
    ],
)
def test_non_string_text(enc: crossmodal.Encoder, bad: object, pattern: str) -> None:
    with pytest.raises(TextInputError, match=pattern):
        enc.encode_text([bad])  # type: ignore[list-item]


def test_non_string_text_is_named_by_position(enc: crossmodal.Encoder) -> None:
    with pytest.raises(TextInputError, match=r"text #2"):
        enc.encode_text(["a", "b", 7, "d"])  # type: ignore[list-item]


def test_empty_lists(enc: crossmodal.Encoder) -> None:
    with pytest.raises(TextInputError, match="empty list"):
        enc.encode_text([])
    with pytest.raises(ImageInputError, match="empty list"):
        enc.encode_image([])


def test_bad_images_are_named(enc: crossmodal.Encoder, tmp_path: Path) -> None:
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(good, quality=90)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    cases = [
        (tmp_path / "missing.png", "missing.png"),
        (empty, "empty.jpg"),
        (truncated, "truncated.jpg"),
        (text_file, "notes.txt"),
        (12345, "int"),
        (np.zeros((3, 8, 8), np.float32), "float32"),
    ]
    for bad, name in cases:
        with pytest.raises(ImageInputError, match=name):
            enc.encode_image([str(good), bad])
    # the error names the position in the list, including in later batches
    with pytest.raises(ImageInputError, match=r"image #3"):
        enc.encode_image([good, good, good, empty], batch_size=2)
    # and the encoder still works afterwards
    assert enc.encode_image([good]).shape == (1, 16)


def test_every_error_is_a_crossmodal_error() -> None:
    for cls in (ArtifactError, ImageInputError, TextInputError, ProviderUnavailableError, IncompatibleTowersError):
        assert issubclass(cls, CrossmodalError)
    assert issubclass(TextInputError, ValueError)


def test_bad_batch_size(enc: crossmodal.Encoder) -> None:
    with pytest.raises(InputError, match="batch_size"):
        enc.encode_text(["a"], batch_size=0)
