"""Custom dual encoders: any pair of torch modules (pixels -> embedding, token ids -> embedding) as a bundle.

The user brings two factories (``module.path:callable`` or ``path/to/file.py:callable``,
each called with no arguments and returning a ``torch.nn.Module``), a settings
file (image preprocessing and text settings, see :func:`read_settings`) and a
tokenizer (a local directory or hub id that transformers' ``AutoTokenizer``
loads as a fast tokenizer). Everything else is the shared pipeline: tracing,
the fp32 parity gate, graph fusions, the int8 recipe search, fp16, manifests
and ``reference.npz`` for ``crossmodal verify``.

Factory contract:

* image module: ``forward(pixel_values)`` with ``pixel_values`` float32
  ``(n, 3, S, S)`` as the settings file's preprocessing makes them (``S`` is the
  crop size, or ``size`` for ``resize: square``); returns ``(n, dim)``.
* text module: ``forward(input_ids, attention_mask)`` (plus ``token_type_ids``,
  all zeros, when the settings file says ``"token_type_ids": true``), int64
  ``(n, L)`` right-padded with the pad id, ``L <= max_length`` and special tokens
  included; returns ``(n, dim)``.
* Both modules must be traceable by ``torch.onnx.export`` (no Python branching on
  tensor values); the batch size and the sequence length vary between calls.
* Outputs need not be L2-normalised: the exported graphs always end in an L2
  normalisation (a no-op on unit vectors, so a module that normalises already
  exports unchanged). The parity gate compares against the module followed by
  that same normalisation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from crossmodal.errors import ArtifactError, IncompatibleTowersError, ParityError
from crossmodal.inputs import is_int
from crossmodal.manifest import INTERPOLATIONS, RESIZE_MODES, TEXT_CLEANINGS, ImagePreprocess, TextSettings

from .options import DEFAULT_TARGETS, ExportOptions
from .pipeline import TowerSpec, export_bundle

log = logging.getLogger(__name__)

FAMILY = "custom"
# The learned temperature of a CLIP-style model, used for softmax probabilities only.
DEFAULT_LOGIT_SCALE = 100.0
# Tokenizer files fetched for a hub id (never weights).
TOKENIZER_FILES = ["*.json", "*.txt", "*.model"]
# transformers model types whose towers onnxruntime's fusions know (tried only, kept when parity holds).
_ORT_MODEL_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert",
                    "camembert": "bert", "electra": "bert", "vit": "vit", "deit": "vit"}

# A tower is given as a spec string, a factory, or the module itself.
TowerSource = Union[str, Callable[[], Any], torch.nn.Module]


class FactoryError(ArtifactError):
    """A ``--image``/``--text`` factory cannot be imported or called, or its module breaks the contract."""


class SettingsFileError(ArtifactError):
    """The ``--preprocess`` settings file is missing, unreadable or has a bad field."""


# ----------------------------------------------------------------- settings file
_IMAGE_FIELDS = ("size", "resize", "crop_size", "interpolation", "mean", "std", "rescale", "reference")
_TEXT_FIELDS = ("max_length", "cleaning", "lower_case", "pad_id", "token_type_ids")
_TOP_FIELDS = ("image", "text", "logit_scale")


@dataclass(frozen=True)
class CustomSettings:
    """What the settings file says: image preprocessing, text settings, logit scale.

    ``pad_id`` None means the tokenizer's own pad token; ``where`` names the file in errors.
    """

    image: ImagePreprocess
    max_length: int
    cleaning: str = "none"
    lower_case: bool = False
    pad_id: int | None = None
    token_type_ids: bool = False
    logit_scale: float = DEFAULT_LOGIT_SCALE
    where: str = "settings"

    def text_settings(self, pad_id: int) -> TextSettings:
        """The manifest's text section, once the pad id is known."""
        return TextSettings(max_length=self.max_length, cleaning=self.cleaning, pad_id=pad_id,
                            needs_token_type_ids=self.token_type_ids)


def _bad(where: str, name: str, what: str) -> SettingsFileError:
    return SettingsFileError(f"{where}: {name} {what}")


def _section(d: Any, name: str, fields: Sequence[str], where: str) -> Mapping[str, Any]:
    """``d`` as a JSON object with known fields only (a typo must not fall back to a default silently)."""
    if not isinstance(d, Mapping):
        raise _bad(where, name or "the settings", f"must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise _bad(where, f"{name}.{unknown[0]}" if name else unknown[0],
                   f"is not a known field (known: {', '.join(fields)})")
    return d


def _int(d: Mapping[str, Any], key: str, name: str, where: str, *, minimum: int, default: Any = ...) -> Any:
    if key not in d or d[key] is None:
        if default is ...:
            raise _bad(where, f"{name}.{key}", "is required")
        return default
    v = d[key]
    if not is_int(v) or v < minimum:
        raise _bad(where, f"{name}.{key}", f"must be an integer >= {minimum}, got {v!r}")
    return v


def _choice(d: Mapping[str, Any], key: str, name: str, where: str, choices: Sequence[str], default: str) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise _bad(where, f"{name}.{key}", f"must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _bool(d: Mapping[str, Any], key: str, name: str, where: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise _bad(where, f"{name}.{key}", f"must be true or false, got {v!r}")
    return v


def _positive(v: Any, name: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
        raise _bad(where, name, f"must be a positive number, got {v!r}")
    return float(v)


def _triple(d: Mapping[str, Any], key: str, name: str, where: str, *, positive: bool) -> tuple[float, float, float]:
    v = d.get(key)
    if v is None:
        raise _bad(where, f"{name}.{key}", "is required (3 numbers, one per RGB channel)")
    if not isinstance(v, list) or len(v) != 3 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise _bad(where, f"{name}.{key}", f"must be a list of 3 numbers (R, G, B), got {v!r}")
    if positive:
        for x in v:
            _positive(x, f"{name}.{key}", where)
    return (float(v[0]), float(v[1]), float(v[2]))


def _image_settings(d: Mapping[str, Any], where: str) -> ImagePreprocess:
    d = _section(d, "image", _IMAGE_FIELDS, where)
    size = _int(d, "size", "image", where, minimum=1)
    resize = _choice(d, "resize", "image", where, RESIZE_MODES, "shortest_edge")
    crop = _int(d, "crop_size", "image", where, minimum=1, default=None)
    if resize == "square" and crop is not None:
        raise _bad(where, "image.crop_size", "must be left out with resize 'square' (the image is scaled to size x size)")
    rescale = _positive(d.get("rescale", 1.0 / 255.0), "image.rescale", where)
    return ImagePreprocess(
        size=size, resize=resize, crop_size=crop if resize == "shortest_edge" else None,
        interpolation=_choice(d, "interpolation", "image", where, INTERPOLATIONS, "bicubic"),
        mean=_triple(d, "mean", "image", where, positive=False), std=_triple(d, "std", "image", where, positive=True),
        rescale=rescale, reference=_choice(d, "reference", "image", where, ("pil", "transformers"), "pil"),
    )


def parse_settings(data: Any, where: str = "settings") -> CustomSettings:
    """Validate the settings (the parsed JSON object); errors name ``where`` and the field."""
    data = _section(data, "", _TOP_FIELDS, where)
    for name in ("image", "text"):
        if name not in data:
            raise _bad(where, name, "is required (a JSON object)")
    image = _image_settings(data["image"], where)
    text = _section(data["text"], "text", _TEXT_FIELDS, where)
    return CustomSettings(
        image=image,
        max_length=_int(text, "max_length", "text", where, minimum=2),
        cleaning=_choice(text, "cleaning", "text", where, TEXT_CLEANINGS, "none"),
        lower_case=_bool(text, "lower_case", "text", where),
        pad_id=_int(text, "pad_id", "text", where, minimum=0, default=None),
        token_type_ids=_bool(text, "token_type_ids", "text", where),
        logit_scale=_positive(data.get("logit_scale", DEFAULT_LOGIT_SCALE), "logit_scale", where),
        where=where,
    )


def read_settings(path: str | Path) -> CustomSettings:
    """Read and validate a settings file (``--preprocess``)::

        {"image": {"size": 224, "resize": "shortest_edge", "crop_size": 224, "interpolation": "bicubic",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "reference": "pil"},
         "text": {"max_length": 64, "cleaning": "none", "lower_case": false, "token_type_ids": false},
         "logit_scale": 14.3}

    ``image.reference``: ``"pil"`` (default) reproduces torchvision transforms on a
    PIL image (Resize, CenterCrop, ToTensor, Normalize), ``"transformers"`` an
    image processor's arithmetic. ``rescale`` defaults to 1/255. ``text.pad_id``
    defaults to the tokenizer's pad token (it must name one when the tokenizer has none).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsFileError(f"--preprocess {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingsFileError(f"--preprocess {path} is unreadable or not valid JSON ({exc})") from exc
    return parse_settings(data, str(path))


# ----------------------------------------------------------------- factories
def load_factory(spec: str, flag: str = "factory") -> Callable[[], Any]:
    """``module.path:callable`` or ``path/to/file.py:callable`` -> the callable (imported, not called)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"{flag} {spec!r}: expected MODULE:FACTORY, e.g. my_models:image_tower "
                           "or path/to/my_models.py:image_tower")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FactoryError(f"{flag} {spec!r}: {path} does not exist")
            module = _import_file(path)
        else:
            module = importlib.import_module(module_name)
    except FactoryError:
        raise
    except ModuleNotFoundError as exc:
        raise FactoryError(f"{flag} {spec!r}: cannot import {exc.name!r} ({exc}); the module must be importable "
                           "(installed, or on PYTHONPATH; the command line adds the current directory), or give "
                           "the file: path/to/file.py:FACTORY") from exc
    except Exception as exc:  # an error inside the user's module while it is imported
        raise FactoryError(f"{flag} {spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"{flag} {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{flag} {spec!r}: {attr} is a {type(obj).__name__}, not a callable returning a torch module")
    return obj  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    """Import a factory file once per process, its folder importable (as for ``python path/to/file.py``)."""
    name = f"crossmodal_factory_{path.stem}"
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__file__", None) == str(path):
        return known  # --image and --text from one file: its module-level code runs once
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # so the file can import its sibling modules
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def _describe(source: TowerSource) -> str:
    if isinstance(source, str):
        return source
    obj = type(source) if isinstance(source, torch.nn.Module) else source
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def build_module(source: TowerSource, flag: str) -> torch.nn.Module:
    """The tower module of a spec string, a factory or a module, in eval mode."""
    if isinstance(source, torch.nn.Module):
        return source.eval()
    factory = load_factory(source, flag) if isinstance(source, str) else source
    try:
        module = factory()
    except Exception as exc:
        raise FactoryError(f"{flag} {_describe(source)}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise FactoryError(f"{flag} {_describe(source)}: the factory returned a {type(module).__name__}, "
                           "not a torch.nn.Module")
    return module.eval()


class ImageTower(torch.nn.Module):
    """pixel_values (n, 3, S, S) -> the user's module -> L2-normalised embedding (n, dim)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.module(pixel_values), dim=-1)


class TextTower(torch.nn.Module):
    """input_ids, attention_mask[, token_type_ids] (n, L) -> the user's module -> L2-normalised embedding (n, dim)."""

    def __init__(self, module: torch.nn.Module, use_token_type_ids: bool) -> None:
        super().__init__()
        self.module = module
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_token_type_ids:
            return torch.nn.functional.normalize(self.module(input_ids, attention_mask, token_type_ids), dim=-1)
        return torch.nn.functional.normalize(self.module(input_ids, attention_mask), dim=-1)


@torch.inference_mode()
def probe_dim(tower: torch.nn.Module, feed: Mapping[str, np.ndarray], names: Sequence[str], what: str) -> int:
    """Run the wrapped module once on ``feed``: its embedding width, or a FactoryError that states the contract."""
    batch = len(feed[names[0]])
    args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names]
    try:
        out = tower(*args)
    except Exception as exc:
        shapes = ", ".join(f"{n} {tuple(feed[n].shape)} {feed[n].dtype}" for n in names)
        raise FactoryError(f"{what}: calling the module with {shapes} raised {type(exc).__name__}: {exc}. "
                           f"The contract: forward({', '.join(names)}) -> (n, dim) embeddings") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch or not out.is_floating_point():
        got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else f"a {type(out).__name__}")
        raise FactoryError(f"{what}: the module returned {got} for a batch of {batch}; it must return one "
                           "float embedding per row, shape (n, dim)")
    if not bool(torch.isfinite(out).all()):
        raise FactoryError(f"{what}: the module returned NaN or infinite values on sample inputs")
    return int(out.shape[1])


def ort_optimizer_for(module: torch.nn.Module) -> dict[str, Any] | None:
    """onnxruntime fusion settings when the module holds a transformers model they know (else None: no fusion tried)."""
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        kind = _ORT_MODEL_TYPES.get(getattr(cfg, "model_type", None) or "")
        if kind is not None:
            try:
                return {"model_type": kind, "num_heads": int(cfg.num_attention_heads), "hidden_size": int(cfg.hidden_size)}
            except (AttributeError, TypeError):
                return None
    return None


def weights_digest(modules: Sequence[torch.nn.Module]) -> str:
    """sha256 over the modules' parameters and buffers (names and bytes): the default space id's key."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode("utf-8"))
            h.update(str(tuple(tensor.shape)).encode("ascii"))
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------- tokenizer
def resolve_tokenizer(tokenizer: str | Path) -> Path:
    """A local tokenizer directory, or a hub id fetched (tokenizer files only) into the HF cache."""
    from .sources import SourceUnavailableError, resolve

    path = Path(tokenizer).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ArtifactError(f"--tokenizer {tokenizer} is a file; pass the directory that holds it "
                            "(tokenizer.json, or the files save_pretrained writes)")
    try:
        return resolve(str(tokenizer), allow_patterns=TOKENIZER_FILES).path
    except SourceUnavailableError as exc:
        cause = exc.__cause__
        reason = f" ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})" if cause else ""
        raise SourceUnavailableError(
            f"--tokenizer {tokenizer} is no local directory, and not on the Hugging Face hub or in its cache{reason}. "
            "Save it where there is network (AutoTokenizer.from_pretrained(ID).save_pretrained(DIR)), copy DIR "
            "here and pass --tokenizer DIR") from exc


def check_tokenizer(tok: Any, settings: TextSettings, reference: Any, lower: bool, texts: Sequence[str]) -> None:
    """Raise when the bundle's tokenizer gives other ids than the reference, one text at a time and as one batch.

    The reference sees the texts after the settings' cleaning rule (and
    lower-casing), which are the model's preprocessing, not the tokenizer's.
    """
    from crossmodal.text import TextTokenizer

    from .mbert import reference_ids

    ours = TextTokenizer(tok, settings)
    for batch in [[t] for t in texts] + [list(texts)]:
        got = ours.encode(batch)
        want = reference_ids(reference, ours.clean(batch), settings.max_length, lower)
        for key in ("input_ids", "attention_mask"):
            if not np.array_equal(got[key], want[key]):
                first = batch[0] if len(batch) == 1 else f"a batch of {len(batch)} texts"
                raise ArtifactError(
                    f"the bundle's tokenizer gives other {key} than transformers' AutoTokenizer for {first[:60]!r}: "
                    f"{got[key][0][:12].tolist()}... vs {want[key][0][:12].tolist()}...; the runtime would not "
                    "tokenise like the model. Check text.pad_id and text.lower_case in the settings file.")


def text_spec(module: torch.nn.Module, settings: CustomSettings, tokenizer: str | Path, factory: str) -> TowerSpec:
    """The text TowerSpec: the tokenizer checked against transformers', feeds, the probed dim."""
    from crossmodal.text import TextTokenizer

    from .mbert import PARITY_TEXTS, TOKENIZER_PROBE, bundle_tokenizer, load_reference_tokenizer

    tok_dir = resolve_tokenizer(tokenizer)
    reference = load_reference_tokenizer(tok_dir)
    if not getattr(reference, "is_fast", False):
        raise ArtifactError(f"--tokenizer {tokenizer}: transformers loads a slow (Python) tokenizer from {tok_dir}; "
                            "the runtime needs a fast one (a tokenizer.json, or files transformers converts to one)")
    tok, origin = bundle_tokenizer(tok_dir, reference, settings.lower_case)
    pad_id = settings.pad_id
    ref_pad = reference.pad_token_id
    if pad_id is None:
        if ref_pad is None:
            raise SettingsFileError(f"{settings.where}: text.pad_id is required: the tokenizer in {tok_dir} has no "
                                    "pad token")
        pad_id = int(ref_pad)
    elif ref_pad is not None and pad_id != ref_pad:
        raise SettingsFileError(f"{settings.where}: text.pad_id {pad_id} differs from the tokenizer's pad token "
                                f"{reference.pad_token!r} (id {ref_pad}); leave the field out or make them agree")
    if pad_id >= tok.get_vocab_size(with_added_tokens=True):
        raise SettingsFileError(f"{settings.where}: text.pad_id {pad_id} is outside the tokenizer's vocabulary "
                                f"({tok.get_vocab_size(with_added_tokens=True)} tokens)")
    if ref_pad is None:
        # The reference pads a batch with the settings' pad token, as the runtime will.
        reference.pad_token = tok.id_to_token(pad_id)
    text = settings.text_settings(pad_id)
    check_tokenizer(tok, text, reference, settings.lower_case, TOKENIZER_PROBE)
    feeds = [TextTokenizer(tok, text).encode(batch) for batch in PARITY_TEXTS]
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if text.needs_token_type_ids else ())
    tower = TextTower(module, text.needs_token_type_ids).eval()
    dim = probe_dim(tower, feeds[1], names, f"--text {factory}")
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["embedding"] = {0: "batch"}
    return TowerSpec(
        tower="text", module=tower, input_names=names, output_names=("embedding",), dynamic_axes=axes,
        parity_inputs=feeds, dim=dim, text=text, tokenizer=tok, ort_optimizer=ort_optimizer_for(module),
        extra={"factory": factory, "tokenizer": origin, "tokenizer_source": str(tokenizer),
               "lower_case": settings.lower_case, "normalized_in_graph": True},
    )


def image_spec(module: torch.nn.Module, settings: CustomSettings, calib_dir: Path | None, factory: str) -> TowerSpec:
    """The image TowerSpec: random and (when a folder is given) real preprocessed images as feeds, the probed dim."""
    from .clip import image_feeds

    parity, calib = image_feeds(settings.image, calib_dir)
    tower = ImageTower(module).eval()
    dim = probe_dim(tower, parity[1], ("pixel_values",), f"--image {factory}")
    return TowerSpec(
        tower="image", module=tower, input_names=("pixel_values",), output_names=("embedding",),
        dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
        parity_inputs=parity, calibration_inputs=calib, dim=dim, preprocess=settings.image,
        ort_optimizer=ort_optimizer_for(module),
        extra={"factory": factory, "image_size": settings.image.output_size, "normalized_in_graph": True},
    )


# ----------------------------------------------------------------- entry points
def export(
    image: TowerSource,
    text: TowerSource,
    settings: str | Path | Mapping[str, Any] | CustomSettings,
    tokenizer: str | Path,
    options: ExportOptions,
) -> Path:
    """Export a custom dual encoder as ``options`` say; returns the bundle path.

    ``image`` and ``text``: a ``MODULE:FACTORY`` spec, a no-argument callable
    returning the module, or the module itself (see the module docstring for the
    contract). ``settings``: the settings file's path, its parsed JSON object or a
    :class:`CustomSettings`. ``tokenizer``: a local directory or hub id.
    ``options.space`` defaults to ``custom:<first 16 hex of the weights' sha256>``,
    so re-exporting the same weights keeps the space and retrained weights get a new one.
    """
    if isinstance(settings, CustomSettings):
        cfg = settings
    elif isinstance(settings, Mapping):
        cfg = parse_settings(settings)
    else:
        cfg = read_settings(settings)
    image_module = build_module(image, "--image")
    text_module = build_module(text, "--text")
    specs = [image_spec(image_module, cfg, options.calib_dir, _describe(image)),
             text_spec(text_module, cfg, tokenizer, _describe(text))]
    if specs[0].dim != specs[1].dim:
        raise IncompatibleTowersError(
            f"the image module embeds into {specs[0].dim} dims but the text module into {specs[1].dim}; "
            "a dual encoder's towers must share one space (check the projection heads)")
    digest = weights_digest([image_module, text_module])
    del image_module, text_module  # the specs hold them; the pipeline drops each once traced
    source = {"image": _describe(image), "text": _describe(text), "tokenizer": str(tokenizer),
              "settings": cfg.where, "weights_sha256": digest}
    try:
        return export_bundle(options, family=FAMILY, space=options.space or f"custom:{digest[:16]}",
                             dim=specs[0].dim, logit_scale=cfg.logit_scale, source=source, specs=specs)
    except ParityError as exc:
        raise _fp32_gate_hint(exc) from exc


def _fp32_gate_hint(exc: ParityError) -> ParityError:
    """The fp32 gate's error, told as what it means for a user's own module (other gates: unchanged).

    For the built-in families a failing fp32 gate is the exporter's bug; for a module the user
    wrote, it almost always means the traced graph is not the module: the usual causes are named.
    """
    message = str(exc)
    if "cpu-fp32 fails its parity threshold" not in message:
        return exc
    gate = message.split(" This is a bug in the exporter", 1)[0]
    return ParityError(
        f"{gate} The module runs in torch but its traced graph does not reproduce it: it is most likely not "
        "traceable as written. Look for Python branching or loops on tensor values or shapes (the trace keeps "
        "the path of one example batch; batch size and sequence length vary), .item()/float()/numpy() on "
        "tensors, or random ops left active in eval mode; torch.onnx.export's TracerWarnings point at the line "
        "(README, Custom dual encoders).")


def export_custom(image: TowerSource, text: TowerSource, settings: str | Path | Mapping[str, Any],
                  tokenizer: str | Path, out: str | Path, targets: str | Sequence[str] = DEFAULT_TARGETS,
                  **options: Any) -> Path:
    """:func:`export` with the options spelled out; ``options`` are the other
    :class:`~crossmodal.export.options.ExportOptions` fields (``name``, ``space``,
    ``calib_dir``, ``int8_recipe``, ``optimize``, ``thresholds``)."""
    return export(image, text, settings, tokenizer, ExportOptions.create(out, targets, **options))


__all__ = ["CustomSettings", "FactoryError", "ImageTower", "SettingsFileError", "TextTower", "build_module",
           "export", "export_custom", "load_factory", "parse_settings", "read_settings"]
