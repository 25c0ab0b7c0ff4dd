"""Resolve ``--model ID_OR_PATH`` to a local directory, with errors that say what to do.

A local directory is used as is. Anything else is treated as a Hugging Face hub
id and fetched (or taken from the local HF cache) with ``snapshot_download``;
without network and without a cached copy the export stops at once and says
how to point it at a local checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from crossmodal.errors import ArtifactError


class SourceUnavailableError(ArtifactError):
    """The checkpoint is neither a local directory nor reachable on the hub."""


@dataclass(frozen=True)
class Source:
    """A checkpoint on local disk and where it came from."""

    path: Path
    model: str
    revision: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "path": str(self.path)}

    @property
    def space(self) -> str:
        """The checkpoint's own embedding-space id: its hub id, or its folder name when given as a directory."""
        return self.model if not Path(self.model).expanduser().exists() else Path(self.model).resolve().name


def resolve(model: str, *, allow_patterns: Sequence[str] | None = None, revision: str | None = None) -> Source:
    """Local directory or hub id -> :class:`Source`."""
    p = Path(model).expanduser()
    if p.is_dir():
        return Source(p.resolve(), model=str(model), revision=revision or _local_revision(p))
    if p.exists():
        raise SourceUnavailableError(f"--model {model} is a file; pass the checkpoint's directory")
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise SourceUnavailableError(f"--model {model}: no such directory")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as exc:  # network errors, missing repo, offline mode: all mean "not available here"
        raise SourceUnavailableError(
            f"cannot get {model!r} from the Hugging Face hub and it is not in the local cache "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Without network, download the "
            "checkpoint elsewhere (e.g. `huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR`), "
            "copy it here and pass the directory: --model /path/to/DIR (or MODEL=/path/to/DIR for `make demo`)."
        ) from exc
    return Source(Path(local), model=model, revision=revision or Path(local).name)


def _local_revision(path: Path) -> str | None:
    # Snapshot folders of the HF cache are named by commit hash.
    name = path.name
    return name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
