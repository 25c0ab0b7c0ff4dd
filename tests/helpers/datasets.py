"""Generated test data for ingestion and evaluation: image folders and Karpathy-split datasets.

Everything is drawn from fixed seeds; nothing is checked in.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from helpers.fake_encoder import COLOURS


@dataclass
class ImageFolder:
    """What :func:`make_image_folder` wrote, by kind."""

    root: Path
    good: list[Path] = field(default_factory=list)        # decodable, distinct content
    corrupt: list[Path] = field(default_factory=list)     # image extension, undecodable or empty
    not_images: list[Path] = field(default_factory=list)  # other extensions
    duplicates: list[Path] = field(default_factory=list)  # byte-identical copies of a good file
    colour_of: dict[Path, str] = field(default_factory=dict)


def _noise(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12, 13, size=(size, size, 3))


def colour_image(colour: str, kind: str, size: int = 48, seed: int = 0) -> Image.Image:
    """A ``kind`` in {"flat", "square", "circle", "text"} image dominated by ``colour``."""
    rgb = np.asarray(COLOURS[colour], dtype=np.int64)
    base = np.clip(rgb + _noise(size, seed), 0, 255).astype(np.uint8)
    im = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(im)
    fg = tuple(int(255 - c) // 3 + int(c) * 2 // 3 for c in COLOURS[colour])
    if kind == "square":
        draw.rectangle([size // 3, size // 3, size // 3 + size // 5, size // 3 + size // 5], fill=fg)
    elif kind == "circle":
        draw.ellipse([size // 4, size // 4, size // 4 + size // 6, size // 4 + size // 6], fill=fg)
    elif kind == "text":
        draw.text((2, size // 3), colour[:6], fill=fg)
    return im


def encode_image(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_image_folder(root: Path, colours: Sequence[str] = ("red", "green", "blue", "yellow"),
                      kinds: Sequence[str] = ("flat", "square", "circle", "text"), *, extras: bool = True) -> ImageFolder:
    """Shapes, colours and rendered text in nested folders, plus (``extras``) corrupt files,
    non-image files, a duplicate and a symlink loop."""
    out = ImageFolder(root=root)
    for ci, colour in enumerate(colours):
        for ki, kind in enumerate(kinds):
            fmt, ext = ("JPEG", ".jpg") if ki % 2 else ("PNG", ".png")
            p = root / kind / f"{colour}_{kind}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(encode_image(colour_image(colour, kind, seed=ci * 10 + ki), fmt))
            out.good.append(p)
            out.colour_of[p] = colour
    if not extras:
        return out
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    jpeg = encode_image(colour_image("red", "flat", seed=99), "JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg[:60])
    (bad / "text_as.png").write_bytes(b"this is not a png at all\n" * 4)
    (bad / "empty.jpg").write_bytes(b"")
    out.corrupt += [bad / "empty.jpg", bad / "text_as.png", bad / "truncated.jpg"]
    (root / "notes.txt").write_text("not an image")
    (bad / "captions.jsonl").write_text("{}\n")
    out.not_images += [root / "notes.txt", bad / "captions.jsonl"]
    dup = root / "copies" / "same_as_first.png"
    dup.parent.mkdir(exist_ok=True)
    dup.write_bytes(out.good[0].read_bytes())
    out.duplicates.append(dup)
    out.colour_of[dup] = out.colour_of[out.good[0]]
    if hasattr(os, "symlink"):
        os.symlink(root, root / "copies" / "loop", target_is_directory=True)
    return out


@dataclass
class KarpathyDataset:
    """A synthetic dataset in the Karpathy-split JSON format."""

    root: Path
    json_path: Path
    test_images: list[str]            # file names of the test split, in JSON order
    test_captions: list[list[str]]    # their captions


def make_karpathy_dataset(root: Path, *, name: str = "flickr30k", n_test: int = 6, n_train: int = 2,
                          captions_per_image: int = 2, colours: Sequence[str] | None = None) -> KarpathyDataset:
    """Images ``<colour>_<i>.jpg`` with captions naming their colour, in ``dataset_<name>.json``.

    Test images come first; ``name='coco'`` puts them under ``val2014/`` with a ``filepath``
    field, as the real COCO file does; Flickr30k keeps them under ``flickr30k-images/``.
    """
    palette = list(colours or COLOURS)
    images = []
    test_names: list[str] = []
    test_caps: list[list[str]] = []
    sub = "val2014" if name == "coco" else "flickr30k-images"
    (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_test + n_train):
        colour = palette[i % len(palette)]
        fname = f"{colour}_{i}.jpg"
        (root / sub / fname).write_bytes(encode_image(colour_image(colour, "flat", seed=i), "JPEG"))
        caps = [f"a {colour} picture number {i} variant {j}" for j in range(captions_per_image)]
        split = "test" if i < n_test else ("train" if i % 2 else "restval")
        entry = {"filename": fname, "imgid": i, "split": split,
                 "sentences": [{"raw": c, "tokens": c.split(), "imgid": i, "sentid": i * 10 + j}
                               for j, c in enumerate(caps)],
                 "sentids": [i * 10 + j for j in range(captions_per_image)]}
        if name == "coco":
            entry["filepath"] = sub
        images.append(entry)
        if split == "test":
            test_names.append(fname)
            test_caps.append(caps)
    path = root / f"dataset_{name}.json"
    path.write_text(json.dumps({"images": images, "dataset": name}))
    return KarpathyDataset(root=root, json_path=path, test_images=test_names, test_captions=test_caps)
