"""custom family: a seed-style dual encoder (EfficientNet-like conv tower + DistilBERT) exported from factories.

References are the torch modules themselves: images go through the runtime's
preprocessing (the settings file's rule) and then the torch image tower; texts
through transformers' AutoTokenizer and then the torch text tower. Both are
L2-normalised here, as the exported graphs are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import crossmodal
from crossmodal.errors import ArtifactError, IncompatibleTowersError

from helpers.custom_models import (
    CAPTIONS,
    DIM,
    MAX_LENGTH,
    SETTINGS,
    load_image_tower,
    load_text_tower,
    write_custom_model,
    write_factories,
)
from helpers.serve_server import cosines

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DIR = ROOT / "examples" / "images"
IMAGES = sorted(p for p in IMAGE_DIR.iterdir() if p.suffix in (".png", ".jpg"))
TEXTS = CAPTIONS + ["", "Ünïcödé CAFÉ crème brûlée 雪中的两只狗 🐕", "MiXeD CaSe!!", " ".join(CAPTIONS * 4)]


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_custom_model(tmp_path_factory.mktemp("custom") / "seed-style")


@pytest.fixture(scope="module")
def bundle(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported from Python with the modules themselves, every variant, int8 calibrated on the example images."""
    from crossmodal.export.custom import export_custom

    return export_custom(load_image_tower(model_root), load_text_tower(model_root), model_root / "preprocess.json",
                         model_root / "tokenizer", tmp_path_factory.mktemp("b") / "seed-style",
                         "cpu-fp32,cpu-int8,gpu-fp16", calib_dir=IMAGE_DIR)


@pytest.fixture(scope="module")
def reference(model_root: Path, bundle: Path) -> dict[str, np.ndarray]:
    """Torch embeddings of IMAGES (runtime preprocessing) and TEXTS (AutoTokenizer), L2-normalised."""
    from transformers import AutoTokenizer

    from crossmodal.image import preprocess
    from crossmodal.manifest import read_manifest

    pixels = preprocess(IMAGES, read_manifest(bundle / "image" / "cpu-fp32").preprocess)
    tok = AutoTokenizer.from_pretrained(str(model_root / "tokenizer"))
    batch = tok(TEXTS, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        image = load_image_tower(model_root)(torch.from_numpy(pixels)).numpy()
        text = load_text_tower(model_root)(batch["input_ids"], batch["attention_mask"]).numpy()
    return {"image": _unit(image), "text": _unit(text)}


# ----------------------------------------------------------------- parity
def test_fp32_reproduces_the_torch_towers(bundle: Path, reference: dict[str, np.ndarray]) -> None:
    enc = crossmodal.load(bundle)
    image = enc.encode_image(IMAGES)
    text = enc.encode_text(TEXTS)
    assert image.shape == (len(IMAGES), DIM) and text.shape == (len(TEXTS), DIM)
    # The image module returns unnormalised vectors: the graph normalises them.
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    assert cosines(image, reference["image"]).min() >= 0.99999
    assert cosines(text, reference["text"]).min() >= 0.99999
    np.testing.assert_allclose(image, reference["image"], atol=1e-5)
    np.testing.assert_allclose(text, reference["text"], atol=1e-5)


def test_int8_stays_close_to_the_torch_towers(bundle: Path, reference: dict[str, np.ndarray]) -> None:
    enc = crossmodal.load(bundle, variant="cpu-int8")
    assert cosines(enc.encode_image(IMAGES), reference["image"]).min() >= 0.99
    assert cosines(enc.encode_text(TEXTS), reference["text"]).min() >= 0.99


def test_runtime_tokenises_like_autotokenizer(bundle: Path, model_root: Path) -> None:
    from transformers import AutoTokenizer

    from crossmodal.manifest import read_manifest
    from crossmodal.text import TextTokenizer

    text_dir = bundle / "text" / "cpu-fp32"
    ours = TextTokenizer.from_file(text_dir / "tokenizer.json", read_manifest(text_dir).text)
    ref = AutoTokenizer.from_pretrained(str(model_root / "tokenizer"))
    for batch in [[t] for t in TEXTS] + [TEXTS]:
        want = ref(batch, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        got = ours.encode(batch)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    assert ours.encode([TEXTS[-1]])["input_ids"].shape == (1, MAX_LENGTH)  # the long text is truncated
    assert ours.encode([""])["input_ids"].tolist() == [[ref.cls_token_id, ref.sep_token_id]]


def test_manifests_record_the_settings_file_and_the_factories(bundle: Path, model_root: Path) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["family"] == "custom" and info["dim"] == DIM and info["towers"] == {"image": "image", "text": "text"}
    assert info["logit_scale"] == pytest.approx(SETTINGS["logit_scale"])
    assert info["space"] == f"custom:{info['source']['weights_sha256'][:16]}"
    image = json.loads((bundle / "image" / "cpu-fp32" / "manifest.json").read_text())
    assert image["preprocess"] == {**SETTINGS["image"], "rescale": 1 / 255}
    assert [i["name"] for i in image["inputs"]] == ["pixel_values"] and image["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert image["normalized"] is True and image["extra"]["normalized_in_graph"] is True
    assert image["extra"]["factory"].endswith(":TinyEfficientNet")
    text = json.loads((bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    assert [i["name"] for i in text["inputs"]] == ["input_ids", "attention_mask"]
    assert text["text"]["max_length"] == MAX_LENGTH and text["text"]["pad_id"] == 0
    assert text["text"]["cleaning"] == "none" and text["text"]["needs_token_type_ids"] is False
    assert (bundle / "text" / "cpu-int8" / "tokenizer.json").is_file()
    for tower in ("image", "text"):  # int8 went through the recipe search: several recipes measured, one kept
        quant = json.loads((bundle / tower / "cpu-int8" / "manifest.json").read_text())["quantization"]
        tried = [t["recipe"] for t in quant["trials"]]
        assert len(tried) >= 2 and quant["recipe"] in tried, (tower, quant["recipe"], tried)
    # The DistilBERT inside the text module is recognised for onnxruntime's BERT fusions (kept only with parity).
    assert text["graph_rewrites"] in ([], ["ort-fusion:bert"])
    assert "ort-fusion:bert" in [t.get("rewrite") for t in text["extra"]["rewrite_trials"]]


def test_verify_rechecks_every_variant(bundle: Path) -> None:
    from crossmodal.verify import verify_bundle

    results = verify_bundle(bundle)
    assert sorted((r.tower, r.variant) for r in results) == [
        (t, v) for t in ("image", "text") for v in ("cpu-fp32", "cpu-int8", "gpu-fp16")]
    assert all(r.ok for r in results), results


# ----------------------------------------------------------------- search
def test_bundle_searches_an_index_by_text(bundle: Path, reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    from crossmodal.index import Index
    from crossmodal.ingest import ingest_folder
    from crossmodal.retriever import Retriever

    enc = crossmodal.load(bundle)
    with Index.create(tmp_path / "examples.idx", bundle=enc.bundle, root=IMAGE_DIR) as idx:
        report = ingest_folder(idx, enc, IMAGE_DIR, batch_size=4, progress=False)
    assert report.added == len(IMAGES)
    search = Retriever(enc, Index.open(tmp_path / "examples.idx", read_only=True))
    for i in (0, 3, 9):  # the torch towers' own ranking of the images for a caption
        scores = reference["image"] @ reference["text"][i]
        want = [IMAGES[j].name for j in np.argsort(-scores)[:3]]
        hits = search.search_text(TEXTS[i], k=3, exact=True)
        assert [Path(h.path).name for h in hits] == want  # type: ignore[arg-type]
        np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:3], atol=1e-4)


# ----------------------------------------------------------------- command line
def test_command_line_exports_the_same_model_from_factory_specs(
        bundle: Path, model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossmodal.export.cli import main

    write_factories(model_root, tmp_path / "seed_factories.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command puts the current directory on it
    out = tmp_path / "cli-bundle"
    code = main(["custom", "--image", "seed_factories:image_tower", "--text", "seed_factories.py:text_tower",
                 "--preprocess", str(model_root / "preprocess.json"), "--tokenizer", str(model_root / "tokenizer"),
                 "--out", str(out), "--targets", "cpu-fp32", "--no-optimize"])
    monkeypatch.delitem(sys.modules, "seed_factories", raising=False)
    monkeypatch.delitem(sys.modules, "crossmodal_factory_seed_factories", raising=False)
    assert code == 0
    info = json.loads((out / "bundle.json").read_text())
    assert info["space"] == json.loads((bundle / "bundle.json").read_text())["space"]  # same weights, same space
    assert info["source"]["image"] == "seed_factories:image_tower"
    ours, api = crossmodal.load(out), crossmodal.load(bundle)
    np.testing.assert_allclose(ours.encode_image(IMAGES[:3]), api.encode_image(IMAGES[:3]), atol=1e-6)
    np.testing.assert_allclose(ours.encode_text(TEXTS[:3]), api.encode_text(TEXTS[:3]), atol=1e-6)


# ----------------------------------------------------------------- errors
_FACTORY_MODULE = """
import torch

def boom():
    raise RuntimeError("checkpoint not found")

def three():
    return 3

def identity():
    return torch.nn.Identity()

def seven_dims():
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 7))

class _BatchBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 24))

    def forward(self, pixel_values):
        out = self.net(pixel_values)
        # Python branching on a shape: the trace keeps the branch of its example batch (1 image) only.
        return out if pixel_values.shape[0] == 1 else out.flip(1)

def batch_branch():
    return _BatchBranch()

NOT_CALLABLE = 5
"""


@pytest.fixture()
def factories(tmp_path: Path) -> Path:
    path = tmp_path / "bad_factories.py"
    path.write_text(_FACTORY_MODULE, encoding="utf-8")
    return path


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "expected MODULE:FACTORY"),
    ("module_that_does_not_exist_here:f", "cannot import 'module_that_does_not_exist_here'"),
    ("json:no_such_factory", "json has no attribute 'no_such_factory'"),
    ("{file}:NOT_CALLABLE", "NOT_CALLABLE is a int, not a callable"),
    ("{file}:boom", "the factory raised RuntimeError: checkpoint not found"),
    ("{file}:three", "the factory returned a int, not a torch.nn.Module"),
    ("missing_file.py:f", "missing_file.py does not exist"),
])
def test_bad_factory_specs_say_what_is_wrong(spec: str, message: str, factories: Path) -> None:
    from crossmodal.export.custom import FactoryError, build_module

    with pytest.raises(FactoryError, match="--image") as err:
        build_module(spec.format(file=factories), "--image")
    assert message in str(err.value)


def test_modules_breaking_the_contract_are_refused_before_export(model_root: Path, factories: Path,
                                                                  tmp_path: Path) -> None:
    from crossmodal.export.custom import FactoryError, export_custom

    args = (model_root / "preprocess.json", model_root / "tokenizer", tmp_path / "out", "cpu-fp32")
    with pytest.raises(FactoryError, match=r"returned a torch.float32 tensor of shape \(3, 3, 64, 64\)"):
        export_custom(f"{factories}:identity", load_text_tower(model_root), *args)
    with pytest.raises(IncompatibleTowersError, match="image module embeds into 7 dims but the text module into 24"):
        export_custom(f"{factories}:seven_dims", load_text_tower(model_root), *args)
    assert not (tmp_path / "out").exists()


def test_the_parity_gate_refuses_a_module_its_trace_does_not_reproduce(model_root: Path, factories: Path,
                                                                       tmp_path: Path) -> None:
    from crossmodal.errors import ParityError
    from crossmodal.export.custom import export_custom

    out = tmp_path / "out"
    with pytest.raises(ParityError) as err:
        export_custom(f"{factories}:batch_branch", load_text_tower(model_root), model_root / "preprocess.json",
                      model_root / "tokenizer", out, "cpu-fp32,cpu-int8", optimize=False)
    message = str(err.value)
    assert "image tower cpu-fp32 fails its parity threshold" in message and "Nothing was written" in message
    assert "not traceable as written" in message and "bug in the exporter" not in message  # the user's module
    assert not out.exists()  # no graph, manifest or bundle.json, not even an empty --out folder
    out.mkdir()
    with pytest.raises(ParityError):
        export_custom(f"{factories}:batch_branch", load_text_tower(model_root), model_root / "preprocess.json",
                      model_root / "tokenizer", out, "cpu-fp32", optimize=False)
    assert out.is_dir() and not any(out.iterdir())  # a folder the user made stays


def _edit(settings: dict, path: str, value: object) -> dict:
    out = json.loads(json.dumps(settings))
    *parents, key = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is _DROP:
        del node[key]
    else:
        node[key] = value
    return out


_DROP = object()


@pytest.mark.parametrize("field, value, message", [
    ("imagee", {}, "imagee is not a known field"),
    ("image.resize", "crop", "image.resize must be one of shortest_edge, square, got 'crop'"),
    ("image.size", "224", "image.size must be an integer >= 1, got '224'"),
    ("image.size", _DROP, "image.size is required"),
    ("image.mean", [0.5, 0.5], "image.mean must be a list of 3 numbers"),
    ("image.std", [0.2, 0.0, 0.2], "image.std must be a positive number, got 0.0"),
    ("image.interpolation", "area", "image.interpolation must be one of bicubic, bilinear, nearest, lanczos"),
    ("image.reference", "opencv", "image.reference must be one of pil, transformers"),
    ("image.cropsize", 64, "image.cropsize is not a known field"),
    ("text", _DROP, "text is required"),
    ("text.max_length", _DROP, "text.max_length is required"),
    ("text.max_length", 1, "text.max_length must be an integer >= 2"),
    ("text.cleaning", "html", "text.cleaning must be one of none, clip, albef, bert"),
    ("text.lower_case", "yes", "text.lower_case must be true or false"),
    ("text.pad_id", -1, "text.pad_id must be an integer >= 0"),
    ("logit_scale", -3, "logit_scale must be a positive number"),
])
def test_bad_settings_files_name_the_file_and_the_field(field: str, value: object, message: str,
                                                        tmp_path: Path) -> None:
    from crossmodal.export.custom import SettingsFileError, read_settings

    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps(_edit(SETTINGS, field, value)), encoding="utf-8")
    with pytest.raises(SettingsFileError) as err:
        read_settings(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_unreadable_settings_files_and_a_crop_with_square_resize(tmp_path: Path) -> None:
    from crossmodal.export.custom import SettingsFileError, read_settings

    with pytest.raises(SettingsFileError, match="does not exist"):
        read_settings(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{\"image\": ", encoding="utf-8")
    with pytest.raises(SettingsFileError, match="broken.json is unreadable or not valid JSON"):
        read_settings(tmp_path / "broken.json")
    (tmp_path / "square.json").write_text(json.dumps(_edit(SETTINGS, "image.resize", "square")), encoding="utf-8")
    with pytest.raises(SettingsFileError, match="image.crop_size must be left out with resize 'square'"):
        read_settings(tmp_path / "square.json")
    square = _edit(_edit(SETTINGS, "image.resize", "square"), "image.crop_size", _DROP)
    (tmp_path / "square.json").write_text(json.dumps(square), encoding="utf-8")
    image = read_settings(tmp_path / "square.json").image
    assert (image.resize, image.crop_size, image.output_size) == ("square", None, 72)


def test_a_tokenizer_that_is_not_here_says_how_to_bring_it(model_root: Path, tmp_path: Path) -> None:
    from crossmodal.export.custom import resolve_tokenizer

    with pytest.raises(ArtifactError, match="is a file; pass the directory"):
        resolve_tokenizer(model_root / "tokenizer" / "tokenizer.json")
    # conftest sets HF_HUB_OFFLINE: an id that is not cached cannot be fetched
    with pytest.raises(ArtifactError, match=r"--tokenizer example-org/no-such-tokenizer is no local directory.*"
                                            r"--tokenizer DIR"):
        resolve_tokenizer("example-org/no-such-tokenizer")


def test_a_pad_id_other_than_the_tokenizers_is_refused(model_root: Path, tmp_path: Path) -> None:
    from crossmodal.export.custom import SettingsFileError, export_custom

    settings = _edit(SETTINGS, "text.pad_id", 3)
    with pytest.raises(SettingsFileError, match=r"text.pad_id 3 differs from the tokenizer's pad token '\[PAD\]'"):
        export_custom(load_image_tower(model_root), load_text_tower(model_root), settings,
                      model_root / "tokenizer", tmp_path / "out", "cpu-fp32")


class _WithTokenTypes(torch.nn.Module):
    """A text module that takes token_type_ids and lets them move its output (the runtime feeds zeros)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask) + token_type_ids[:, :1].to(torch.float32)


def test_token_type_ids_are_fed_when_the_settings_ask(model_root: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from crossmodal.export.custom import export_custom

    settings = _edit(SETTINGS, "text.token_type_ids", True)
    text = _WithTokenTypes(load_text_tower(model_root)).eval()
    out = export_custom(load_image_tower(model_root), text, settings, model_root / "tokenizer", tmp_path / "tt",
                        "cpu-fp32", optimize=False)
    manifest = json.loads((out / "text" / "cpu-fp32" / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["text"]["needs_token_type_ids"] is True
    batch = AutoTokenizer.from_pretrained(str(model_root / "tokenizer"))(
        TEXTS[:4], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        want = text(batch["input_ids"], batch["attention_mask"], torch.zeros_like(batch["input_ids"])).numpy()
    assert cosines(crossmodal.load(out).encode_text(TEXTS[:4]), want).min() >= 0.99999
