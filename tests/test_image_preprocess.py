"""crossmodal.image against the reference preprocessors.

CLIP: transformers' CLIPImageProcessorPil (what ``CLIPImageProcessor`` resolves
to without torchvision), fed the same PIL image / opened file / array.
ALBEF: the golden arrays made with the original code (PIL bicubic square resize).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from crossmodal.errors import ArtifactError, ImageInputError
from crossmodal.image import (
    DEFAULT_MAX_PIXELS,
    MAX_RESIZED_PIXELS,
    load_image,
    preprocess,
    preprocess_one,
)
from crossmodal.manifest import ImagePreprocess
from helpers.images import (
    MODE_FORMATS,
    encode,
    jpeg_with_orientation,
    make_image,
    png_claiming_size,
    random_rgb,
    truncated_jpeg,
)
from helpers.golden import golden_arrays

CLIP = ImagePreprocess(size=224, crop_size=224)
TOL = 1e-5


@pytest.fixture(scope="module")
def clip_ref():
    pil_clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    proc = pil_clip.CLIPImageProcessorPil()

    def run(image, **kwargs):
        return proc(image, return_tensors="np", **kwargs)["pixel_values"][0]

    return run


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max())


# ------------------------------------------------------------------ CLIP parity


@pytest.mark.parametrize(
    "width,height",
    [(224, 224), (300, 200), (200, 300), (1600, 1200), (17, 500), (500, 17), (1, 1), (1, 40), (3, 1),
     (223, 225), (225, 223), (99, 101), (481, 359), (1000, 3)],
)
def test_clip_parity_sizes(clip_ref, width, height):
    im = Image.fromarray(random_rgb(width, height, seed=width * 7 + height))
    ours = preprocess([im], CLIP)
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    assert _maxdiff(ours[0], clip_ref(im)) <= TOL


@pytest.mark.parametrize("mode", list(MODE_FORMATS))
def test_clip_parity_modes_pil_path_bytes(clip_ref, mode, tmp_path):
    im = make_image(mode, 57, 43, seed=3)
    fmt = MODE_FORMATS[mode]
    data = encode(im, fmt)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    opened = Image.open(path)
    assert opened.mode == im.mode  # the file really exercises this mode
    if mode == "P+transparency":
        assert opened.info.get("transparency") == 3

    # In memory: same PIL object to both.
    assert _maxdiff(preprocess_one(im, CLIP), clip_ref(im)) <= TOL
    # From a file: the reference is given Image.open(path), as HF/ST users do.
    ref_file = clip_ref(Image.open(path))
    out = preprocess([str(path), path, data], CLIP)
    for i in range(3):
        assert _maxdiff(out[i], ref_file) <= TOL


def test_alpha_is_composited_on_white_for_clip(clip_ref):
    # Fully transparent black must read as white, as in the reference (not black).
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    im = Image.fromarray(rgba, "RGBA")
    out = preprocess_one(im, CLIP)
    white = (np.float32(1.0) - np.float32(CLIP.mean[0])) / np.float32(CLIP.std[0])
    assert abs(float(out[0, 0, 0]) - white) < 1e-5
    assert _maxdiff(out, clip_ref(im)) <= TOL


def test_i16_is_clipped_like_the_reference(clip_ref):
    vals = np.array([[0, 100, 255, 256, 1000, 65535]], dtype="<u2")
    im = Image.frombytes("I;16", (6, 1), vals.tobytes())
    assert list(np.asarray(load_image(im))[0, :, 0]) == [0, 100, 255, 255, 255, 255]
    assert _maxdiff(preprocess_one(im, CLIP), clip_ref(im)) <= TOL


def test_clip_parity_arrays(clip_ref):
    rgb = random_rgb(90, 70, seed=5)
    rgba = np.concatenate([rgb, np.random.default_rng(5).integers(0, 256, (70, 90, 1), dtype=np.uint8)], axis=2)
    gray = rgb[:, :, 0].copy()
    out = preprocess([rgb, rgba, gray, gray[:, :, None], rgb[:, ::-1]], CLIP)
    last = {"input_data_format": "channels_last"}
    assert _maxdiff(out[0], clip_ref(rgb, **last)) <= TOL
    assert _maxdiff(out[1], clip_ref(rgba, **last)) <= TOL
    # The reference rejects 2-D arrays; HxW must equal HxWx1, which it accepts.
    assert _maxdiff(out[2], clip_ref(gray[:, :, None], **last)) <= TOL
    assert _maxdiff(out[3], out[2]) == 0.0
    assert _maxdiff(out[4], clip_ref(np.ascontiguousarray(rgb[:, ::-1]), **last)) <= TOL


@pytest.mark.parametrize("size,crop,wh", [(224, 200, (301, 257)), (100, 128, (130, 100)), (100, 128, (37, 120))])
def test_clip_parity_crop_and_padding(clip_ref, size, crop, wh):
    pil_clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    proc = pil_clip.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})
    im = Image.fromarray(random_rgb(*wh, seed=11))
    ref = proc(im, return_tensors="np")["pixel_values"][0]
    cfg = ImagePreprocess(size=size, crop_size=crop)
    assert _maxdiff(preprocess_one(im, cfg), ref) <= TOL


# ------------------------------------------------------------------ ALBEF / torchvision-style


def test_albef_golden_square_resize():
    d = golden_arrays("inputs.npz")
    cfg = ImagePreprocess(size=64, resize="square", reference="pil")
    out = preprocess([d[f"image_raw_uint8_{i}"] for i in range(3)], cfg)
    assert out.shape == d["images"].shape == (3, 3, 64, 64)
    assert _maxdiff(out, d["images"]) <= 1e-6


def _expected_norm(pixels_hwc: np.ndarray, cfg: ImagePreprocess) -> np.ndarray:
    x = pixels_hwc.astype(np.float64) / 255.0
    return ((x - np.array(cfg.mean)) / np.array(cfg.std)).transpose(2, 0, 1)


@pytest.mark.parametrize("reference,top,left", [("transformers", 5, 2), ("pil", 6, 2)])
def test_crop_offsets_per_reference(reference, top, left):
    # 64x71 -> shortest edge 64 is the identity, so only the crop acts:
    # 11 spare rows -> floor(5.5) = 5 (transformers) vs round(5.5) = 6 (torchvision).
    arr = random_rgb(64, 71, seed=2)
    cfg = ImagePreprocess(size=64, crop_size=60, reference=reference)
    expected = _expected_norm(arr[top:top + 60, left:left + 60], cfg)
    assert _maxdiff(preprocess_one(arr, cfg), expected) <= TOL


def test_pil_reference_drops_alpha_instead_of_compositing():
    im = make_image("RGBA", 50, 40, seed=4)
    cfg = ImagePreprocess(size=32, resize="square", reference="pil")
    expected = _expected_norm(np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)), cfg)
    assert _maxdiff(preprocess_one(im, cfg), expected) <= TOL
    assert _maxdiff(preprocess_one(np.asarray(im), cfg), expected) <= TOL


# ------------------------------------------------------------------ EXIF, fast decode, API shape


def test_exif_orientation_ignored_by_default_like_reference(clip_ref):
    data = jpeg_with_orientation(80, 40, orientation=6)
    ref_plain = clip_ref(Image.open(io.BytesIO(data)))
    ref_rotated = clip_ref(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert _maxdiff(preprocess_one(data, CLIP), ref_plain) <= TOL
    assert _maxdiff(preprocess_one(data, CLIP, exif_transpose=True), ref_rotated) <= TOL
    assert load_image(data).size == (80, 40)
    assert load_image(data, exif_transpose=True).size == (40, 80)


def test_fast_decode_is_opt_in_and_close(clip_ref):
    data = encode(Image.fromarray(random_rgb(1600, 1200, seed=9)), "JPEG", quality=95)
    exact = preprocess_one(data, CLIP)
    fast = preprocess_one(data, CLIP, fast_decode=True)
    assert _maxdiff(exact, clip_ref(Image.open(io.BytesIO(data)))) <= TOL
    assert fast.shape == exact.shape
    assert 0.0 < float(np.abs(fast - exact).mean()) < 0.1


def test_api_shapes_and_modes():
    im = make_image("L", 20, 30)
    assert load_image(im).mode == "RGB"
    rgb = Image.fromarray(random_rgb(20, 30))
    assert load_image(rgb) is rgb
    assert preprocess([], CLIP).shape == (0, 3, 224, 224)
    batch = preprocess([im, rgb], CLIP)
    assert _maxdiff(batch[1], preprocess_one(rgb, CLIP)) == 0.0
    assert preprocess_one(rgb, ImagePreprocess(size=64, resize="square", reference="pil")).shape == (3, 64, 64)
    # A 4-D uint8 array is a batch of HWC images.
    stack = np.stack([random_rgb(20, 30, seed=s) for s in range(2)])
    assert _maxdiff(preprocess(stack, CLIP)[1], preprocess_one(stack[1], CLIP)) == 0.0


# ------------------------------------------------------------------ bad inputs


def _bad_inputs(tmp: Path) -> dict[str, tuple[object, str]]:
    """name -> (input, text its error message must contain besides 'image #1')."""
    (tmp / "empty.jpg").write_bytes(b"")
    (tmp / "cut.jpg").write_bytes(truncated_jpeg())
    (tmp / "notes.txt").write_text("not an image\n")
    (tmp / "folder").mkdir()
    return {
        "missing": (str(tmp / "nope.jpg"), "nope.jpg"),
        "zero_byte_file": (tmp / "empty.jpg", "empty.jpg"),
        "zero_bytes": (b"", "0 bytes"),
        "truncated_jpeg_file": (str(tmp / "cut.jpg"), "cut.jpg"),
        "truncated_jpeg_bytes": (truncated_jpeg(keep=0.8), "bytes"),
        "text_file": (str(tmp / "notes.txt"), "notes.txt"),
        "garbage_bytes": (b"hello world, not a png", "bytes"),
        "directory": (str(tmp / "folder"), "folder"),
        "url": ("https://example.com/cat.jpg", "example.com"),
        "int": (42, "int"),
        "none": (None, "NoneType"),
        "list": ([random_rgb(4, 4)], "list"),
        "float_chw": (np.zeros((3, 224, 224), np.float32), "(3, 224, 224) float32"),
        "uint8_chw": (np.zeros((3, 32, 32), np.uint8), "(3, 32, 32) uint8"),
        "float_hwc": (np.zeros((32, 32, 3), np.float64), "float64"),
        "two_channels": (np.zeros((8, 8, 2), np.uint8), "(8, 8, 2)"),
        "one_dim": (np.zeros((8,), np.uint8), "(8,)"),
        "empty_array": (np.zeros((0, 5, 3), np.uint8), "(0, 5, 3)"),
        "bomb_header": (png_claiming_size(30_000, 30_000), "bytes"),
        # PIL reads TGA, but it is outside ALLOWED_FORMATS (no header magic to identify it safely).
        "tga_not_allowed": (encode(Image.fromarray(random_rgb(8, 8)), "TGA"), "bytes"),
        "extreme_aspect": (np.zeros((1000, 1, 3), np.uint8), "(1000, 1, 3)"),
    }


BAD_NAMES = [
    "missing", "zero_byte_file", "zero_bytes", "truncated_jpeg_file", "truncated_jpeg_bytes", "text_file",
    "garbage_bytes", "directory", "url", "int", "none", "list", "float_chw", "uint8_chw", "float_hwc",
    "two_channels", "one_dim", "empty_array", "bomb_header", "tga_not_allowed", "extreme_aspect",
]


@pytest.mark.parametrize("which", BAD_NAMES)
def test_bad_input_raises_image_input_error_naming_it(which, tmp_path):
    bad, needle = _bad_inputs(tmp_path)[which]
    good = random_rgb(10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageInputError) as info:
            preprocess([good, bad, good], CLIP)
    msg = str(info.value)
    assert "image #1" in msg and needle in msg, msg
    assert isinstance(info.value, ValueError)  # InputError is also a ValueError


def test_bad_names_cover_all_cases(tmp_path):
    assert sorted(BAD_NAMES) == sorted(_bad_inputs(tmp_path))


def test_decompression_bomb_guards_do_not_touch_pil_globals():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    # Over our limit but under PIL's hard 2x limit: refused from the header, before decoding.
    header = png_claiming_size(10_000, 9_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageInputError, match="90,000,000 pixels"):
            load_image(header, name="upload 7")
    # A real small image under a low, per-call limit.
    small = encode(Image.fromarray(random_rgb(100, 100)), "PNG")
    with pytest.raises(ImageInputError, match=r"upload 7 .*10,000 pixels.*limit of 1,000"):
        load_image(small, name="upload 7", max_pixels=1000)
    with pytest.raises(ImageInputError, match="limit of 1,000"):
        preprocess_one(random_rgb(100, 100), CLIP, max_pixels=1000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert DEFAULT_MAX_PIXELS == 89_478_485 and MAX_RESIZED_PIXELS >= 224 * 224 * 100


def test_lazily_opened_corrupt_pil_image_is_an_input_error():
    lazy = Image.open(io.BytesIO(truncated_jpeg(keep=0.6)))  # header fine, pixels not read yet
    with pytest.raises(ImageInputError, match=r"image #0 \(PIL image, mode RGB, 160x120\).*truncated"):
        preprocess([lazy], CLIP)


def test_generator_input_and_bad_reference():
    arrays = (random_rgb(30, 20, seed=s) for s in range(3))
    out = preprocess(arrays, CLIP)  # type: ignore[arg-type]
    assert out.shape == (3, 3, 224, 224)
    assert _maxdiff(out[2], preprocess_one(random_rgb(30, 20, seed=2), CLIP)) == 0.0
    with pytest.raises(ArtifactError, match="reference must be"):
        preprocess_one(random_rgb(8, 8), ImagePreprocess(size=8, reference="opencv"))


def test_single_image_instead_of_sequence_is_refused():
    for single in ("a.jpg", Image.new("RGB", (4, 4)), random_rgb(4, 4)):
        with pytest.raises(ImageInputError, match="wrap it in a list"):
            preprocess(single, CLIP)  # type: ignore[arg-type]


def test_jpeg_missing_only_its_end_marker_is_refused_like_the_reference():
    # PIL (hence both references' Image.open(...).convert) refuses a JPEG cut
    # anywhere, even just before the 2-byte EOI marker; so do we, by name.
    data = encode(Image.fromarray(random_rgb(64, 48)), "JPEG")[:-2]
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(data)).convert("RGB")
    with pytest.raises(ImageInputError, match=r"photo\.jpg.*truncated"):
        load_image(data, name="photo.jpg")


def test_file_handles_are_closed(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(make_image("RGB", 20, 20), "PNG"))
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("no /proc")
    before = len(os.listdir(fd_dir))
    for _ in range(20):
        preprocess_one(str(path), CLIP)
    assert len(os.listdir(fd_dir)) <= before
