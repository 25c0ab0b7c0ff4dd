"""Images added through ``POST /v1/items`` are stored as files, so re-ranking and thumbnails can read them.

Content-addressed: ``<uploads>/<sha256><ext>``, written atomically (tmp, fsync, rename,
fsync dir) before the index records the path, so an indexed upload always has its
file. Runs on the service's single writer thread (one writer per file name).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..durable_files import atomic_write_bytes, fsync_dir

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def extension(data: bytes) -> str:
    """The file extension of an image's format (read from its header only)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _EXTENSIONS.get(str(im.format), ".img")
    except Exception:  # noqa: BLE001 - the bytes decoded for embedding already; the name is cosmetic
        return ".img"


def store_upload(folder: Path, data: bytes, sha256: str) -> Path:
    """Write ``data`` as ``folder/<sha256><ext>`` durably (kept as is when already there)."""
    path = folder / f"{sha256}{extension(data)}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
    atomic_write_bytes(path, data)
    return path


def remove_upload(folder: Path | None, path: str | None) -> bool:
    """Delete ``path`` if it is a file inside the uploads ``folder`` (never anything else)."""
    if folder is None or path is None:
        return False
    p = Path(os.path.abspath(path))
    if p.parent != Path(os.path.abspath(folder)) or not p.is_file():
        return False
    p.unlink()
    fsync_dir(p.parent)
    return True


__all__ = ["store_upload", "remove_upload", "extension"]
