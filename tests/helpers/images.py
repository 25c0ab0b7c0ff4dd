"""Synthetic images, encoded files and broken inputs for the image preprocessing tests.

Everything is generated from fixed seeds: no image files are checked in for tests.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

# Modes the references must agree on, and a file format that can store each.
MODE_FORMATS = {
    "RGB": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "P+transparency": "PNG",
    "RGBA": "PNG",
    "CMYK": "JPEG",
    "I;16": "PNG",
    "I": "TIFF",
    "F": "TIFF",
    "1": "PNG",
}


def random_rgb(width: int, height: int, seed: int = 0) -> NDArray[np.uint8]:
    """Smooth gradients plus noise: resampling differences show up, unlike flat colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([
        127 + 100 * np.sin(xx / max(width, 1) * 6.0 + seed),
        127 + 100 * np.cos(yy / max(height, 1) * 5.0),
        (xx + yy) * 255.0 / max(width + height, 1),
    ], axis=-1)
    noisy = base + rng.normal(0, 25, size=base.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def make_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A PIL image in ``mode`` ("P+transparency" = palette image with a transparent index)."""
    rgb = random_rgb(width, height, seed)
    rng = np.random.default_rng(seed + 1000)
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if mode == "L":
        return Image.fromarray(rgb, "RGB").convert("L")
    if mode in ("LA", "RGBA"):
        alpha = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        base = Image.fromarray(rgb, "RGB")
        im = (base.convert("L") if mode == "LA" else base).convert(mode)
        im.putalpha(Image.fromarray(alpha, "L"))
        return im
    if mode in ("P", "P+transparency"):
        im = Image.fromarray(rgb, "RGB").quantize(colors=64, dither=Image.Dither.NONE)
        if mode == "P+transparency":
            im.info["transparency"] = 3
        return im
    if mode == "CMYK":
        return Image.fromarray(np.concatenate([rgb, rgb[:, :, :1]], axis=2), "CMYK")
    if mode == "I;16":
        # Values up to 1023 so that PIL's clipping to 255 (the references' behaviour) is exercised.
        vals = (rgb[:, :, 0].astype(np.uint16) * 4 + rgb[:, :, 1] % 4).astype("<u2")
        return Image.frombytes("I;16", (width, height), vals.tobytes())
    if mode == "I":
        return Image.fromarray(rgb[:, :, 0].astype(np.int32) * 3 - 200, "I")
    if mode == "F":
        return Image.fromarray(rgb[:, :, 0].astype(np.float32) * 1.3 - 20.5, "F")
    if mode == "1":
        return Image.fromarray(rgb[:, :, 0] > 127)
    raise ValueError(mode)


def encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """``im`` saved to ``fmt`` in memory."""
    buf = io.BytesIO()
    save_kwargs = dict(kwargs)
    if fmt == "PNG" and "transparency" in im.info:
        save_kwargs.setdefault("transparency", im.info["transparency"])
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 90)
    im.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def truncated_jpeg(width: int = 160, height: int = 120, keep: float = 0.5, seed: int = 0) -> bytes:
    """A real JPEG cut after ``keep`` of its bytes (header intact, scan data missing)."""
    data = encode(Image.fromarray(random_rgb(width, height, seed)), "JPEG")
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_with_orientation(width: int, height: int, orientation: int, seed: int = 0) -> bytes:
    """A JPEG carrying an EXIF orientation tag (6 = rotate 90 degrees clockwise to display)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(random_rgb(width, height, seed)), "JPEG", exif=exif.tobytes())
