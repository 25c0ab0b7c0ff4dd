"""The inputs of ``crossmodal index build --ray``: a folder of images or a parquet list of them.

A folder is walked exactly as ``crossmodal index build`` walks it
(:func:`crossmodal.ingest.walk_images`). A parquet file names one image per row in a
column ``path`` (or ``image``/``filename``/``file``), relative paths being relative to the
parquet file's folder, with an optional ``caption`` (or ``text``) column stored as the
item's caption.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..ingest import CAPTION_IMAGE_FIELDS, SkippedFile, walk_images
from .extras import import_pyarrow
from .shards import ShardItem

PARQUET_SUFFIX = ".parquet"
CAPTION_COLUMNS = ("caption", "text")


def is_parquet_list(images: Path) -> bool:
    return images.is_file() and images.suffix.lower() == PARQUET_SUFFIX


def folder_items(folder: Path) -> tuple[list[ShardItem], list[SkippedFile]]:
    """The image files under ``folder`` (absolute paths) and the files passed over."""
    files, skipped = walk_images(folder)
    return [ShardItem(os.path.abspath(p)) for p in files], skipped


def parquet_items(path: Path) -> list[ShardItem]:
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
    for n, (img, cap) in enumerate(zip(images, captions), 1):
        if not isinstance(img, str) or not img:
            raise InputError(f"--images {path} row {n}: {image_col} must be a file path, got {img!r}.")
        if isinstance(cap, list):
            cap = cap[0] if cap else None
        items.append(ShardItem(os.path.normpath(os.path.join(base, img)), None if cap is None else str(cap)))
    return items


__all__ = ["folder_items", "parquet_items", "is_parquet_list"]
