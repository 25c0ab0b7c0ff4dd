"""Torch-free image loading and preprocessing: sources -> ``pixel_values``.

Two reference recipes are reproduced, selected by ``ImagePreprocess.reference``:

``"transformers"`` (CLIP): transformers' ``CLIPImageProcessor`` as it runs
without torchvision (``CLIPImageProcessorPil``) on a PIL image or an HWC array.

* Mode conversion: an image with an alpha band or a ``transparency`` entry is
  composited onto white (``Image.alpha_composite``); every other mode goes
  through PIL ``convert("RGB")``. RGBA *arrays* are blended in float64 and
  rounded, as the reference does for arrays.
* Resize: shorter side to ``size``, longer side ``int(size * long / short)``
  (truncated, not rounded), PIL resize of the uint8 RGB image.
* Centre crop at ``top = (h - crop) // 2``, ``left = (w - crop) // 2``; if the
  image is smaller than the crop it is zero-padded first (``ceil`` of half the
  missing pixels before).
* ``float32(uint8 * float64(rescale))`` then ``(x - mean) / std`` in float32.

``"pil"`` (ALBEF, torchvision transforms on PIL): ``Image.open(p).convert("RGB")``
(alpha is dropped, not composited), PIL resize, torchvision centre-crop offsets
``int(round((h - crop) / 2))``, ``float32(x) / 255`` then ``(x - mean) / std``.

Both final steps depend only on the uint8 value and the channel, so they are a
256-entry float32 table per channel built once with the reference's own
arithmetic: the output is bit-identical to the reference and the hot loop is
one gather per channel.

Reference behaviours kept on purpose (see ``load_image``): EXIF orientation is
*not* applied (``CLIPImageProcessor`` given a PIL image and ALBEF's
``Image.open`` do not apply it); 16-bit (``I;16``), ``I`` and ``F`` images are
converted by PIL, which clips to 0..255 instead of rescaling, exactly like the
references.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Sequence, Union

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ArtifactError, ImageInputError, InputError
from .inputs import image_batch
from .manifest import ImagePreprocess

ImageSource = Union[str, "os.PathLike[str]", bytes, Image.Image, NDArray[np.uint8]]

# PIL's own default (Image.MAX_IMAGE_PIXELS, ~ a 9459x9459 image): the same
# bound, enforced per call so that PIL's global setting is never touched.
DEFAULT_MAX_PIXELS = 89_478_485

# Formats Image.open may identify. Leaving the list open would let a file named
# photo.jpg be parsed by any of PIL's ~40 plugins, including EPS, which shells
# out to Ghostscript. Plugins that are not installed are skipped (see
# _open_formats); phone MPO files open through the JPEG plugin.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "JPEG2000", "AVIF", "HEIF")

# The references resize the whole image before cropping, so a 1x1000 strip
# becomes a 224x224,000 intermediate. Beyond this many intermediate pixels
# (~150 MB of RGB; aspect ratios past ~1000:1 at 224) the image is refused
# instead: PIL's resize with a crop box would be cheaper but is not
# bit-identical to resize-then-crop.
MAX_RESIZED_PIXELS = 50_000_000

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_REFERENCES = ("transformers", "pil")
_ARRAY_HINT = (
    "expected uint8 HxW, HxWx3 (RGB) or HxWx4 (RGBA); convert floats in [0, 1] with "
    "`(x * 255).round().clip(0, 255).astype(np.uint8)` and CHW arrays with `x.transpose(1, 2, 0)`"
)
_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------- naming


def _describe(source: object) -> str:
    """A short description of an input for error messages (never its full content)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    if isinstance(source, Image.Image):
        return f"PIL image, mode {source.mode}, {source.width}x{source.height}"
    if isinstance(source, np.ndarray):
        return f"array of shape {tuple(source.shape)} {source.dtype}"
    return f"object of type {type(source).__name__}"


def _label(source: object, name: str | None) -> str:
    return f"{name or 'image'} ({_describe(source)})"


# --------------------------------------------------------------------------- loading


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    reference: str = "transformers",
    exif_transpose: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into an RGB PIL image the way the reference model does.

    ``source`` is a file path, the encoded bytes of an image file, a PIL image,
    or a uint8 array (HxW grayscale, HxWx3 RGB, HxWx4 RGBA; channels last).
    ``name`` labels the input in error messages (e.g. ``"image #2"``).

    ``reference`` picks the mode conversion: ``"transformers"`` composites
    transparency onto white (CLIPImageProcessor), ``"pil"`` is a plain
    ``convert("RGB")`` (ALBEF). ``exif_transpose=True`` rotates by the EXIF
    orientation tag; the default matches the references, which do not (only
    transformers' *path-string* loader does).

    Images with more than ``max_pixels`` pixels are refused from their header,
    before any pixel is decoded (``None`` disables this check; PIL's own limit
    of twice ``Image.MAX_IMAGE_PIXELS`` still applies). Truncated files raise
    rather than decode as partly grey images, unless some other code in the
    process has set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``.

    Raises :class:`~crossmodal.errors.ImageInputError` naming the input. The
    result may be ``source`` itself when that is already an RGB PIL image.
    """
    return _load(source, _label(source, name), reference, exif_transpose, max_pixels, None)


def _load(
    source: object,
    label: str,
    reference: str,
    exif_transpose: bool,
    max_pixels: int | None,
    draft_for: ImagePreprocess | None,
) -> Image.Image:
    if reference not in _REFERENCES:
        raise InputError(f"reference must be one of {_REFERENCES}, got {reference!r}")
    if isinstance(source, Image.Image):
        _check_pixels(source.size, label, max_pixels)
        # A caller's lazily opened Image.open(...) decodes here; a corrupt one
        # must fail as a decode error, not later inside convert().
        _load_pixels(source, label)
        im = ImageOps.exif_transpose(source) if exif_transpose else source
        return _to_rgb(im, reference, label)
    if isinstance(source, np.ndarray):
        return _from_array(source, label, reference, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageInputError(f"{label} is empty: expected the encoded bytes of an image file.")
        return _decode(io.BytesIO(source), label, reference, exif_transpose, max_pixels, draft_for)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, label, reference, exif_transpose, max_pixels, draft_for)
    kind = "a sequence" if isinstance(source, (list, tuple)) else f"type {type(source).__name__}"
    raise ImageInputError(
        f"{label}: {kind} is not an image. Pass a file path, encoded image bytes, a PIL image "
        "or a uint8 HxWx3 array (one per element when passing several images)."
    )


def _load_path(
    source: "str | os.PathLike[str]",
    label: str,
    reference: str,
    exif_transpose: bool,
    max_pixels: int | None,
    draft_for: ImagePreprocess | None,
) -> Image.Image:
    path = os.fspath(source)
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        raise ImageInputError(f"{label}: URLs are not fetched. Download the file and pass its local path.")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ImageInputError(f"{label} does not exist. Check the path (relative to {os.getcwd()!r}).") from None
    except IsADirectoryError:
        raise ImageInputError(f"{label} is a directory, not an image file. Pass the files inside it.") from None
    except OSError as exc:
        raise ImageInputError(f"{label} cannot be opened ({exc.strerror or exc}).") from exc
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageInputError(f"{label} is an empty file (0 bytes). Re-copy or re-download it.")
        # Decoding and conversion happen inside the `with`, so no file handle
        # outlives the call (multi-frame formats keep reading lazily otherwise).
        return _decode(f, label, reference, exif_transpose, max_pixels, draft_for)


def _decode(
    fp: IO[bytes],
    label: str,
    reference: str,
    exif_transpose: bool,
    max_pixels: int | None,
    draft_for: ImagePreprocess | None,
) -> Image.Image:
    try:
        im = Image.open(fp, formats=_open_formats())
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{label} is refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{label} is not a readable image (supported formats: {', '.join(ALLOWED_FORMATS)}). "
            "Check that the file is an image and not truncated or mislabelled."
        ) from None
    except OSError as exc:
        raise ImageInputError(f"{label} cannot be read: {exc}") from exc
    _check_pixels(im.size, label, max_pixels)
    if draft_for is not None and im.format in ("JPEG", "MPO"):
        _draft(im, draft_for, exif_transpose)
    _load_pixels(im, label)
    if exif_transpose:
        im = ImageOps.exif_transpose(im)
    return _to_rgb(im, reference, label)


def _load_pixels(im: Image.Image, label: str) -> None:
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:
        # Each PIL decoder raises its own mix (OSError, SyntaxError, ValueError,
        # EOFError, zlib/struct errors) for corrupt data; all mean the same thing here.
        raise ImageInputError(
            f"{label} could not be decoded (truncated or corrupt file: {exc}). Re-encode or re-download it."
        ) from exc


def _open_formats() -> list[str]:
    # Image.open raises KeyError for a format name with no registered opener;
    # recomputed per call because plugins (e.g. pillow-heif) may register late.
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageInputError(
            f"{label} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a guard against decompression bombs). Downscale it first or raise `max_pixels`."
        )
    if w < 1 or h < 1:
        raise ImageInputError(f"{label} has no pixels ({w}x{h}).")


def _draft(im: Image.Image, cfg: ImagePreprocess, exif_transpose: bool) -> None:
    """Ask libjpeg for a reduced-DCT decode no smaller than the resize target (inexact, opt-in)."""
    w, h = im.size
    swap = exif_transpose and im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
    if swap:
        w, h = h, w
    tw, th = _resize_target(w, h, cfg)
    if swap:
        tw, th = th, tw
    im.draft("RGB", (tw, th))


def _to_rgb(im: Image.Image, reference: str, label: str) -> Image.Image:
    try:
        if reference == "transformers" and ("A" in im.getbands() or im.info.get("transparency") is not None):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im if im.mode == "RGB" else im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"{label}: PIL cannot convert mode {im.mode!r} to RGB ({exc}).") from exc


def _from_array(arr: NDArray[np.generic], label: str, reference: str, max_pixels: int | None) -> Image.Image:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape:
        raise ImageInputError(f"{label}: {_ARRAY_HINT}.")
    h, w = arr.shape[:2]
    _check_pixels((w, h), label, max_pixels)
    a = np.ascontiguousarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(a, "L").convert("RGB")
    if a.shape[2] == 3:
        return Image.fromarray(a, "RGB")
    if reference == "pil":
        return Image.fromarray(a[:, :, :3].copy(), "RGB")
    # transformers blends arrays itself (float64, then round), which is not
    # bit-identical to PIL's alpha_composite used for PIL images.
    alpha = a[:, :, 3:4] / 255
    blended = np.round(alpha * a[:, :, :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(blended, "RGB")


# --------------------------------------------------------------------------- geometry


def _resize_target(w: int, h: int, cfg: ImagePreprocess) -> tuple[int, int]:
    """(width, height) after the resize step, with the references' integer arithmetic."""
    if cfg.resize == "square":
        return cfg.size, cfg.size
    # transformers get_resize_output_image_size and torchvision Resize(int)
    # agree: the long side is truncated with int(), not rounded.
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(cfg.size * long / short)
    return (cfg.size, new_long) if w <= h else (new_long, cfg.size)


def _crop_window(h: int, w: int, crop: int, reference: str) -> tuple[int, int, int, int, int, int]:
    """(top, left, pad_top, pad_left, padded_h, padded_w) of a centred crop x crop window."""
    if reference == "transformers":
        ph, pw = max(crop, h), max(crop, w)
        pad_top, pad_left = math.ceil((ph - h) / 2), math.ceil((pw - w) / 2)
        return (h - crop) // 2 + pad_top, (w - crop) // 2 + pad_left, pad_top, pad_left, ph, pw
    # torchvision CenterCrop: pads floor(missing / 2) before, then rounds the
    # offset half-to-even (Python's round), e.g. 5 spare rows -> top 2, 7 -> 4.
    pad_top = (crop - h) // 2 if crop > h else 0
    pad_left = (crop - w) // 2 if crop > w else 0
    ph, pw = max(crop, h), max(crop, w)
    return int(round((ph - crop) / 2.0)), int(round((pw - crop) / 2.0)), pad_top, pad_left, ph, pw


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class _Plan:
    out: int
    crop: int | None
    resample: Image.Resampling
    lut: NDArray[np.float32]  # (3, 256): value after rescale + normalise, per channel and uint8 level


@lru_cache(maxsize=32)
def _plan(cfg: ImagePreprocess) -> _Plan:
    if cfg.reference not in _REFERENCES:
        raise ArtifactError(
            f"manifest preprocess: reference must be one of {_REFERENCES}, got {cfg.reference!r}. Re-export the bundle."
        )
    levels = np.arange(256)
    if cfg.reference == "transformers":
        x = (levels.astype(np.float64) * cfg.rescale).astype(np.float32)
    else:
        x = levels.astype(np.float32) / np.float32(1.0 / cfg.rescale)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None]
    lut = np.ascontiguousarray((x[None, :] - mean) / std, dtype=np.float32)
    lut.setflags(write=False)
    crop = None if cfg.resize == "square" else (cfg.crop_size or cfg.size)
    return _Plan(out=cfg.output_size, crop=crop, resample=_RESAMPLE[cfg.interpolation], lut=lut)


def _normalise_into(out: NDArray[np.float32], pixels: NDArray[np.uint8], lut: NDArray[np.float32]) -> None:
    """out[c] = lut[c][pixels[..., c]]: rescale + normalise + HWC->CHW in one gather per channel."""
    for c in range(3):
        np.take(lut[c], pixels[:, :, c], out=out[c])


# --------------------------------------------------------------------------- preprocessing


def _resized_pixels(im: Image.Image, cfg: ImagePreprocess, plan: _Plan, label: str) -> NDArray[np.uint8]:
    """RGB image -> uint8 HxWx3 of the final output size (resize, then centre crop)."""
    w, h = im.size
    tw, th = _resize_target(w, h, cfg)
    if plan.crop is None:
        return np.asarray(im if (tw, th) == (w, h) else im.resize((tw, th), plan.resample))
    crop = plan.crop
    top, left, pad_top, pad_left, ph, pw = _crop_window(th, tw, crop, cfg.reference)
    if tw * th > MAX_RESIZED_PIXELS:
        raise ImageInputError(
            f"{label}: aspect ratio {w}:{h} is too extreme; the reference resize would make a {tw}x{th} "
            "intermediate image. Crop it to the region of interest first."
        )
    try:
        resized = im if (tw, th) == (w, h) else im.resize((tw, th), plan.resample)
    except (ValueError, MemoryError) as exc:
        raise ImageInputError(f"{label} cannot be resized to {tw}x{th} ({exc}).") from exc
    arr = np.asarray(resized)
    if (ph, pw) != (th, tw):
        # The reference zero-pads uint8 pixels, so the padding normalises to (0 - mean) / std.
        padded = np.zeros((ph, pw, 3), dtype=np.uint8)
        padded[pad_top:pad_top + th, pad_left:pad_left + tw] = arr
        arr = padded
    return arr[top:top + crop, left:left + crop]


def _preprocess_into(
    out: NDArray[np.float32],
    source: object,
    label: str,
    cfg: ImagePreprocess,
    fast_decode: bool,
    exif_transpose: bool,
    max_pixels: int | None,
) -> None:
    plan = _plan(cfg)
    im = _load(source, label, cfg.reference, exif_transpose, max_pixels, cfg if fast_decode else None)
    pixels = _resized_pixels(im, cfg, plan, label)
    _normalise_into(out, pixels, plan.lut)


def preprocess_one(
    source: ImageSource,
    cfg: ImagePreprocess,
    *,
    name: str | None = None,
    fast_decode: bool = False,
    exif_transpose: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> NDArray[np.float32]:
    """One image -> float32 ``(3, S, S)`` model input (``S = cfg.output_size``).

    Same options as :func:`preprocess`; ``name`` labels the input in errors.
    """
    S = cfg.output_size
    out = np.empty((3, S, S), dtype=np.float32)
    _preprocess_into(out, source, _label(source, name), cfg, fast_decode, exif_transpose, max_pixels)
    return out


def preprocess(
    images: Sequence[ImageSource],
    cfg: ImagePreprocess,
    *,
    fast_decode: bool = False,
    exif_transpose: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> NDArray[np.float32]:
    """Images -> float32 ``(n, 3, S, S)`` ``pixel_values`` as the manifest's reference computes them.

    ``images`` may also be any iterable (it is read once) or a uint8
    ``(n, H, W, 3)`` array. ``cfg`` is the tower manifest's ``preprocess`` section. The result matches
    the reference implementation (see the module docstring) to float32
    rounding: the resize is PIL's, the normalisation uses the reference's own
    arithmetic.

    ``fast_decode=True`` lets libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale
    when the result is still at least the resize target: several times faster
    on photos, but no longer identical to the reference (off by a few grey
    levels). ``exif_transpose`` and ``max_pixels``: see :func:`load_image`.

    Errors name the input by position, e.g. ``image #2 ('cat.jpg')``.
    """
    if isinstance(images, Iterator):
        images = list(images)  # generators and other one-shot iterables
    items, single = image_batch(images)
    if single:
        raise ImageInputError(
            f"preprocess() takes a sequence of images, got a single {_describe(images)}; wrap it in a list."
        )
    images = items
    S = cfg.output_size
    out = np.empty((len(images), 3, S, S), dtype=np.float32)
    for i, source in enumerate(images):
        _preprocess_into(out[i], source, _label(source, f"image #{i}"), cfg, fast_decode, exif_transpose, max_pixels)
    return out


__all__ = [
    "ImageSource",
    "DEFAULT_MAX_PIXELS",
    "ALLOWED_FORMATS",
    "MAX_RESIZED_PIXELS",
    "load_image",
    "preprocess",
    "preprocess_one",
]
