"""The inputs of ``crossmodal index build --ray``: a folder of images or a parquet list of them.

A folder is walked exactly as ``crossmodal index build`` walks it
(:func:`crossmodal.ingest.walk_images`), its captions read from a ``--captions`` file as
``index build`` reads them. A parquet file names one image per row in a column ``path``
(or ``image``/``filename``/``file``), relative paths being relative to the parquet file's
folder, with an optional ``caption`` (or ``text``) column: a string or a list of them.

Both give the items (an image's first caption stored with it, as ``index build`` stores
it) and every caption by image path, which ``index build --ray`` embeds into the text tower.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..errors import InputError
from ..ingest import CAPTION_IMAGE_FIELDS, SkippedFile, caption_lookup, walk_images
from .extras import import_pyarrow
from .shards import ShardItem

PARQUET_SUFFIX = ".parquet"
CAPTION_COLUMNS = ("caption", "text")


def is_parquet_list(images: Path) -> bool:
    return images.is_file() and images.suffix.lower() == PARQUET_SUFFIX


Captions = dict[str, list[str]]  # absolute image path -> its captions


def folder_items(folder: Path, captions: Mapping[str, list[str]] | None = None
                 ) -> tuple[list[ShardItem], list[SkippedFile], Captions]:
    """The image files under ``folder`` (absolute paths), the files passed over, and the
    captions of each file (``captions``: :func:`crossmodal.ingest.read_captions` of a file)."""
    files, skipped = walk_images(folder)
    base = Path(os.path.abspath(folder))
    # The same lookup `index build --captions` does: a path relative to the folder, or a bare name.
    found = {os.path.abspath(p): caption_lookup(captions, base, Path(os.path.abspath(p))) for p in files}
    items = [ShardItem(p, caps[0] if caps else None) for p, caps in found.items()]
    return items, skipped, {p: caps for p, caps in found.items() if caps}


def parquet_items(path: Path) -> tuple[list[ShardItem], Captions]:
    """The images a parquet file lists (absolute paths), with their captions."""
    pa = import_pyarrow()
    try:
        schema = pa.parquet.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"--images {path} is not a readable parquet file ({exc}).") from exc
    image_col = next((c for c in CAPTION_IMAGE_FIELDS if c in schema.names), None)
    if image_col is None:
        raise InputError(f"--images {path} has no image column (one of {', '.join(CAPTION_IMAGE_FIELDS)}); "
                         f"its columns are {schema.names}.")
    caption_col = next((c for c in CAPTION_COLUMNS if c in schema.names), None)
    table = pa.parquet.read_table(path, columns=[image_col] + ([caption_col] if caption_col else []))
    base = os.path.abspath(path.parent)
    images = table.column(image_col).to_pylist()
    captions = table.column(caption_col).to_pylist() if caption_col else [None] * len(images)
    items = []
    by_path: Captions = {}
    for n, (img, cap) in enumerate(zip(images, captions), 1):
        if not isinstance(img, str) or not img:
            raise InputError(f"--images {path} row {n}: {image_col} must be a file path, got {img!r}.")
        caps = [str(c) for c in (cap if isinstance(cap, list) else [cap]) if c is not None]
        full = os.path.normpath(os.path.join(base, img))
        items.append(ShardItem(full, caps[0] if caps else None))
        if caps:
            by_path.setdefault(full, []).extend(caps)
    return items, by_path


__all__ = ["folder_items", "parquet_items", "is_parquet_list"]
