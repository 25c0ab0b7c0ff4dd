"""The artifact contract: ``bundle.json`` and the per-tower ``manifest.json``.

A bundle directory looks like::

    <bundle>/bundle.json
    <bundle>/<tower>/<variant>/model.onnx
    <bundle>/<tower>/<variant>/model.onnx.data   (only graphs past protobuf's 2 GB: their weights)
    <bundle>/<tower>/<variant>/manifest.json
    <bundle>/text/<variant>/tokenizer.json

The manifest holds everything the runtime needs and nothing it must guess. The
exporter writes these files (``crossmodal.export.artifact``); the runtime only
reads them, through the frozen dataclasses below, which validate themselves so
that a hand-edited or truncated file fails at load time with a message naming
the file, never later inside onnxruntime.

A graph too large for one protobuf file keeps its weights in onnx's external
data format: one data file beside ``model_file``, named in the manifest
(``data_file``) with its own sha256 and size. Manifests without ``data_file``
(every bundle written before, and every graph under 2 GB) describe one file.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ArtifactError
from .inputs import is_int
from .variants import VARIANTS

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.npz"  # inputs + PyTorch outputs, re-checked by `crossmodal verify`
# Fields of a graph's external data file; absent from manifests of one-file graphs.
DATA_FIELDS = ("data_file", "data_sha256", "data_bytes")
_SHA256 = re.compile(r"[0-9a-f]{64}")

TOWERS = ("image", "text", "rerank")
RESIZE_MODES = ("shortest_edge", "square")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
TEXT_CLEANINGS = ("none", "clip", "albef", "bert")


def _require(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ArtifactError(f"{where}: {what}. Re-export the bundle with `crossmodal export`.")


def _plain_name(name: str) -> bool:
    """A file or folder name inside its parent, not a path."""
    return "/" not in name and "\\" not in name and name not in ("", ".", "..")


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a graph input/output; strings in ``shape`` are dynamic axes."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "TensorSpec":
        _require(isinstance(d, Mapping) and {"name", "dtype", "shape"} <= set(d), where,
                 "every input/output needs name, dtype and shape")
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))


@dataclass(frozen=True)
class ImagePreprocess:
    """How raw pixels become the graph's ``pixel_values`` (see ``crossmodal.image``).

    ``resize='shortest_edge'`` scales the shorter side to ``size`` keeping the
    aspect ratio and then centre-crops ``crop_size`` (CLIP);
    ``resize='square'`` scales straight to ``size`` x ``size`` with no crop
    (ALBEF's evaluation transform).
    """

    size: int
    resize: str = "shortest_edge"
    crop_size: int | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale: float = 1.0 / 255.0
    # Which reference implementation's resize arithmetic to reproduce:
    # "transformers" (CLIPImageProcessor) or "pil" (torchvision/PIL Resize).
    reference: str = "transformers"

    def __post_init__(self) -> None:
        where = "manifest preprocess"
        _require(is_int(self.size) and self.size > 0, where, f"bad size {self.size!r}")
        _require(self.crop_size is None or is_int(self.crop_size) and self.crop_size > 0, where,
                 f"bad crop_size {self.crop_size!r}")
        _require(self.resize in RESIZE_MODES, where, f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        _require(self.interpolation in INTERPOLATIONS, where, f"unknown interpolation {self.interpolation!r}")
        _require(len(self.mean) == 3 and len(self.std) == 3, where, "mean and std need 3 values")
        _require(all(s > 0 for s in self.std), where, "std values must be positive")
        _require(self.reference in ("transformers", "pil"), where,
                 f"reference must be 'transformers' or 'pil', got {self.reference!r}")

    @property
    def output_size(self) -> int:
        """Side length of the square the graph receives."""
        if self.resize == "square":
            return self.size
        return self.crop_size or self.size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImagePreprocess":
        try:
            return cls(
                size=int(d["size"]),
                resize=str(d.get("resize", "shortest_edge")),
                crop_size=None if d.get("crop_size") is None else int(d["crop_size"]),
                interpolation=str(d.get("interpolation", "bicubic")),
                mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
                std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
                rescale=float(d.get("rescale", 1.0 / 255.0)),
                reference=str(d.get("reference", "transformers")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest preprocess: malformed ({exc!r}). Re-export the bundle.") from exc


@dataclass(frozen=True)
class TextSettings:
    """How a string becomes ``input_ids`` / ``attention_mask``.

    ``cleaning`` names a rule in ``crossmodal.text_cleaning`` applied before the
    tokenizer; ``max_length`` counts special tokens. ``pad_to_max_length`` is set
    only where a graph cannot take shorter sequences (none of ours: padding to
    77 costs 5-6x the compute of a 12-token query).
    """

    max_length: int
    cleaning: str = "none"
    pad_id: int = 0
    tokenizer_file: str = TOKENIZER_FILE
    needs_token_type_ids: bool = False
    pad_to_max_length: bool = False
    max_words: int | None = None

    def __post_init__(self) -> None:
        where = "manifest text"
        _require(is_int(self.max_length) and self.max_length > 1, where, f"bad max_length {self.max_length!r}")
        _require(self.max_words is None or is_int(self.max_words) and self.max_words > 0, where,
                 f"bad max_words {self.max_words!r}")
        _require(self.cleaning in TEXT_CLEANINGS, where, f"cleaning must be one of {TEXT_CLEANINGS}, got {self.cleaning!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextSettings":
        try:
            return cls(
                max_length=int(d["max_length"]),
                cleaning=str(d.get("cleaning", "none")),
                pad_id=int(d.get("pad_id", 0)),
                tokenizer_file=str(d.get("tokenizer_file", TOKENIZER_FILE)),
                needs_token_type_ids=bool(d.get("needs_token_type_ids", False)),
                pad_to_max_length=bool(d.get("pad_to_max_length", False)),
                max_words=None if d.get("max_words") is None else int(d["max_words"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest text: malformed ({exc!r}). Re-export the bundle.") from exc


@dataclass(frozen=True)
class TowerManifest:
    """Contents of ``<tower>/<variant>/manifest.json``."""

    family: str
    tower: str
    variant: str
    dim: int
    space: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    precision: str
    normalized: bool
    sha256: str
    model_file: str = MODEL_FILE
    # The graph's external data file (its weights, for graphs past 2 GB), next to model_file; None: one file.
    data_file: str | None = None
    data_sha256: str = ""
    data_bytes: int = 0
    preprocess: ImagePreprocess | None = None
    text: TextSettings | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    quantization: Mapping[str, Any] | None = None
    graph_rewrites: tuple[str, ...] = ()
    exporter: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        where = f"manifest of {self.tower}/{self.variant}"
        _require(self.format_version == FORMAT_VERSION, where,
                 f"format_version {self.format_version} is not supported by this crossmodal (expects {FORMAT_VERSION})")
        _require(self.tower in TOWERS, where, f"tower must be one of {TOWERS}")
        _require(self.variant in VARIANTS, where, f"variant must be one of {VARIANTS}")
        _require(is_int(self.dim) and self.dim > 0, where, f"bad dim {self.dim!r}")
        _require(len(self.inputs) > 0 and len(self.outputs) > 0, where, "needs inputs and outputs")
        if self.tower == "image":
            _require(self.preprocess is not None, where, "an image tower needs a `preprocess` section")
        if self.tower == "text":
            _require(self.text is not None, where, "a text tower needs a `text` section")
        if self.data_file is not None:
            _require(_plain_name(self.data_file) and self.data_file != self.model_file, where,
                     f"data_file {self.data_file!r} must be a file name next to {self.model_file}")
            _require(bool(_SHA256.fullmatch(self.data_sha256)), where,
                     f"data_sha256 of {self.data_file} must be 64 lowercase hex digits")
            _require(is_int(self.data_bytes) and self.data_bytes > 0, where,
                     f"data_bytes of {self.data_file} must be a positive size")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest.json") -> "TowerManifest":
        try:
            return cls(
                format_version=int(d.get("format_version", 0)),
                family=str(d["family"]),
                tower=str(d["tower"]),
                variant=str(d["variant"]),
                dim=int(d["dim"]),
                space=str(d["space"]),
                inputs=tuple(TensorSpec.from_dict(x, where) for x in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(x, where) for x in d["outputs"]),
                opset=int(d["opset"]),
                precision=str(d["precision"]),
                normalized=bool(d["normalized"]),
                sha256=str(d["sha256"]),
                model_file=str(d.get("model_file", MODEL_FILE)),
                data_file=None if d.get("data_file") is None else str(d["data_file"]),
                data_sha256=str(d.get("data_sha256") or ""),
                data_bytes=int(d.get("data_bytes") or 0),
                preprocess=None if d.get("preprocess") is None else ImagePreprocess.from_dict(d["preprocess"]),
                text=None if d.get("text") is None else TextSettings.from_dict(d["text"]),
                parity=dict(d.get("parity") or {}),
                quantization=d.get("quantization"),
                graph_rewrites=tuple(d.get("graph_rewrites") or ()),
                exporter=dict(d.get("exporter") or {}),
                source=dict(d.get("source") or {}),
                extra=dict(d.get("extra") or {}),
            )
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: missing or malformed field {exc!s}. Re-export the bundle.") from exc

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.data_file is None:  # one-file manifests stay as they were before data files
            for key in DATA_FIELDS:
                del out[key]
        return out


@dataclass(frozen=True)
class BundleInfo:
    """Contents of ``bundle.json``: which towers form one embedding space."""

    name: str
    family: str
    dim: int
    space: str
    logit_scale: float
    towers: Mapping[str, str]
    source: Mapping[str, Any] = field(default_factory=dict)
    pairing: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        where = f"bundle.json of {self.name!r}"
        _require(self.format_version == FORMAT_VERSION, where,
                 f"format_version {self.format_version} is not supported (expects {FORMAT_VERSION})")
        _require(is_int(self.dim) and self.dim > 0, where, f"bad dim {self.dim!r}")
        _require(bool(self.towers) and set(self.towers) <= set(TOWERS), where,
                 f"towers must map names from {TOWERS} to folders")
        for folder in self.towers.values():
            _require(_plain_name(folder), where,
                     f"tower folder {folder!r} must be a plain folder name inside the bundle")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = BUNDLE_FILE) -> "BundleInfo":
        try:
            return cls(
                format_version=int(d.get("format_version", 0)),
                name=str(d["name"]),
                family=str(d["family"]),
                dim=int(d["dim"]),
                space=str(d["space"]),
                logit_scale=float(d.get("logit_scale", 100.0)),
                towers=dict(d["towers"]),
                source=dict(d.get("source") or {}),
                pairing=dict(d.get("pairing") or {}),
            )
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: missing or malformed field {exc!s}. Re-export the bundle.") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path`` with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} does not exist. Is this a crossmodal bundle written by `crossmodal export`?") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable or not valid JSON ({exc}). Re-export the bundle.") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object. Re-export the bundle.")
    return data


def read_bundle(bundle_dir: Path) -> BundleInfo:
    """Read and validate ``bundle_dir/bundle.json``."""
    path = Path(bundle_dir) / BUNDLE_FILE
    return BundleInfo.from_dict(read_json(path), where=str(path))


def read_manifest(tower_dir: Path) -> TowerManifest:
    """Read and validate ``tower_dir/manifest.json`` (``tower_dir`` = ``<bundle>/<tower>/<variant>``)."""
    path = Path(tower_dir) / MANIFEST_FILE
    return TowerManifest.from_dict(read_json(path), where=str(path))


def available_variants(bundle_dir: Path, tower_folder: str) -> list[str]:
    """Variants of one tower present on disk, in the canonical order."""
    base = Path(bundle_dir) / tower_folder
    return [v for v in VARIANTS if (base / v / MANIFEST_FILE).is_file()]
