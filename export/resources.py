"""Files that ship inside the wheel: model cards and calibration images.

The source tree keeps them in its top-level folders (``models/cards``,
``examples/images``); pyproject maps those folders to the data packages
``crossmodal.models`` and ``crossmodal.examples``. They are read through
:mod:`importlib.resources`, so an installed package finds them wherever it is
installed, with no source checkout around. Torch-free.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossmodal.errors import ArtifactError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

CARDS_PACKAGE = "crossmodal.models"
CARDS_FOLDER = "cards"
EXAMPLES_PACKAGE = "crossmodal.examples"
CALIBRATION_FOLDER = "images"


def _cards_folder() -> Traversable:
    return resources.files(CARDS_PACKAGE) / CARDS_FOLDER


def _read(card: Traversable) -> dict[str, Any]:
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"model card {card.name} is unreadable ({exc}); reinstall crossmodal") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"model card {card.name} must hold a JSON object; reinstall crossmodal")
    return data


def cards(prefix: str) -> dict[str, dict[str, Any]]:
    """Every shipped card whose file name starts with ``prefix``: file stem -> card, in name order."""
    found = sorted((c for c in _cards_folder().iterdir() if c.name.startswith(prefix) and c.name.endswith(".json")),
                   key=lambda c: c.name)
    return {c.name[: -len(".json")]: _read(c) for c in found}


def card(stem: str) -> dict[str, Any] | None:
    """The shipped card ``<stem>.json``, or None when there is none."""
    path = _cards_folder() / f"{stem}.json"
    return _read(path) if path.is_file() else None


def calibration_images() -> Path | None:
    """The folder of example images used for static int8 calibration, or None when it did not ship.

    A folder on disk is needed (images are decoded by path); pip installs wheels
    unpacked, so the resource is a real directory. Anything else (a zipped
    install) gives None and the exporter calibrates as without images.
    """
    folder = resources.files(EXAMPLES_PACKAGE) / CALIBRATION_FOLDER
    return folder if isinstance(folder, Path) and folder.is_dir() else None


__all__ = ["CARDS_PACKAGE", "EXAMPLES_PACKAGE", "calibration_images", "card", "cards"]
