"""CLIP family exporter: image and text towers of a transformers CLIPModel.

Accepted sources: a hub id or local directory in transformers format
(``config.json`` with ``model_type: clip``), and a sentence-transformers
``clip-ViT-*`` directory (its ``modules.json`` points at a CLIPModel module
whose folder holds the transformers files).

The towers end in the projection and an L2 normalisation, so the graphs emit
exactly ``normalize(CLIPModel.get_{image,text}_features(...))``. Text pooling
takes the hidden state at the first end-of-text token, which is where both of
transformers' pooling rules land for any right padding; since CLIP's attention is
causal, padding after end-of-text cannot change it, and graphs take sequences of
any length up to 77 (no padding to 77).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from crossmodal.errors import ArtifactError
from crossmodal.manifest import ImagePreprocess, TextSettings

from .options import DEFAULT_TARGETS, ExportOptions
from .pipeline import TowerSpec, export_bundle, random_pixels
from .sources import Source, read_json, resolve

log = logging.getLogger(__name__)

# What a CLIP checkpoint needs from the hub (also fetched by mbert's --image-model).
CHECKPOINT_FILES = ["*.json", "*.txt", "*.safetensors", "*.bin", "0_CLIPModel/*"]

# Fixed texts for parity checks: short queries, padding within a batch, the full context.
PARITY_TEXTS = [
    ["two dogs in the snow"],
    ["a photo of a cat", "London at night, seen from the river Thames", "", "café Ünïcödé 雪中的两只狗 🐕"],
    [" ".join(["a very long caption about many things"] * 20)],
]


class ClipImageTower(torch.nn.Module):
    """pixel_values (n, 3, S, S) -> L2-normalised image embedding (n, dim)."""

    def __init__(self, model: Any):
        super().__init__()
        self.vision = model.vision_model
        self.projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=pixel_values).pooler_output
        return torch.nn.functional.normalize(self.projection(pooled), dim=-1)


class ClipTextTower(torch.nn.Module):
    """input_ids, attention_mask (n, L) -> L2-normalised text embedding (n, dim)."""

    def __init__(self, model: Any, eot_id: int):
        super().__init__()
        self.text = model.text_model
        self.projection = model.text_projection
        self.eot_id = eot_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        eot = (input_ids == self.eot_id).to(torch.int32).argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0]), eot]
        return torch.nn.functional.normalize(self.projection(pooled), dim=-1)


def find_transformers_dir(path: Path) -> Path:
    """The folder holding the transformers CLIP files (itself, or a sentence-transformers module folder)."""
    modules = path / "modules.json"
    if modules.is_file():
        # Older sentence-transformers save a `CLIPModel` module in 0_CLIPModel/; newer
        # ones save it at the root, or as a generic `Transformer` module: look for the
        # module folder whose config.json is a CLIP config.
        for mod in read_json(modules):
            sub = path / mod.get("path", "")
            if (sub / "config.json").is_file() and read_json(sub / "config.json").get("model_type") == "clip":
                return sub
        raise ArtifactError(f"{path} is a sentence-transformers directory without a CLIPModel module; "
                            "use `crossmodal export mbert` for text-only sentence-transformers models")
    if (path / "config.json").is_file():
        cfg = read_json(path / "config.json")
        if cfg.get("model_type") != "clip":
            raise ArtifactError(f"{path}/config.json has model_type {cfg.get('model_type')!r}, not 'clip'")
        return path
    raise ArtifactError(f"{path} holds neither config.json (transformers CLIP) nor modules.json (sentence-transformers)")


def image_preprocess_from(model_dir: Path, image_size: int) -> ImagePreprocess:
    """CLIPImageProcessor settings from preprocessor_config.json (OpenAI defaults if absent)."""
    p = model_dir / "preprocessor_config.json"
    cfg = read_json(p) if p.is_file() else {}
    size = cfg.get("size", {"shortest_edge": image_size})
    shortest = size.get("shortest_edge") if isinstance(size, dict) else int(size)
    crop = cfg.get("crop_size", {"height": image_size, "width": image_size})
    crop_side = crop.get("height") if isinstance(crop, dict) else int(crop)
    if isinstance(crop, dict) and crop.get("height") != crop.get("width"):
        raise ArtifactError(f"{p}: non-square crop {crop} is not supported")
    if cfg.get("resample", 3) != 3:
        raise ArtifactError(f"{p}: resample={cfg.get('resample')} (only bicubic, 3, is supported)")
    if shortest is None:
        raise ArtifactError(f"{p}: size must give shortest_edge, got {size}")
    if crop_side != image_size:
        raise ArtifactError(f"{p}: crop size {crop_side} differs from the model's image_size {image_size}")
    return ImagePreprocess(
        size=int(shortest),
        resize="shortest_edge",
        crop_size=int(crop_side) if cfg.get("do_center_crop", True) else None,
        interpolation="bicubic",
        mean=tuple(cfg.get("image_mean", ImagePreprocess.mean)),  # type: ignore[arg-type]
        std=tuple(cfg.get("image_std", ImagePreprocess.std)),  # type: ignore[arg-type]
        rescale=float(cfg.get("rescale_factor", 1.0 / 255.0)),
        reference="transformers",
    )


def load_clip(model_dir: Path) -> Any:
    from transformers import CLIPModel

    # Eager attention traces into the plain MatMul/Softmax pattern the ORT fusions recognise.
    return CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()


def text_feeds(tokenizer: Any, settings: TextSettings, batches: Sequence[Sequence[str]]) -> list[dict[str, NDArray]]:
    """Tokenise parity texts exactly as the runtime will."""
    from crossmodal.text import TextTokenizer

    tok = TextTokenizer(tokenizer, settings)
    return [tok.encode(list(b)) for b in batches]


def image_feeds(preprocess: ImagePreprocess, calib_dir: Path | None, seed: int = 0) -> tuple[list[dict[str, NDArray]], list[dict[str, NDArray]]]:
    """(parity feeds, calibration feeds) for the image tower.

    Parity uses random tensors of several batch sizes; calibration uses real
    preprocessed images when a folder is given or the repo's examples exist, since
    static int8 ranges calibrated on noise misrepresent photos. Calibration feeds
    hold one image each: the MinMax ranges are the same as over batches (every
    op of an image tower works on each image alone, and min/max fold image by
    image), while the calibration session's activations are one image's, not
    eight (a ViT-L/14 image tower's static int8 step: 11.7 GB peak RSS at batch 8).
    """
    side = preprocess.output_size
    parity = [{"pixel_values": random_pixels(b, side, seed + b)} for b in (1, 3)]
    calib: list[dict[str, NDArray]] = []
    files = sorted(p for p in calib_dir.iterdir() if p.is_file()) if calib_dir and calib_dir.is_dir() else []
    if files:
        from crossmodal.image import preprocess as prep

        good = []
        for f in files[:64]:
            try:
                good.append(prep([f], preprocess))
            except Exception:  # calibration folders may hold non-images; skip them
                continue
        if good:
            arr = np.concatenate(good)
            calib = [{"pixel_values": arr[i:i + 1]} for i in range(len(arr))]
            parity.append({"pixel_values": arr[:8]})
    return parity, calib or [{"pixel_values": f["pixel_values"][i:i + 1]} for f in parity
                             for i in range(len(f["pixel_values"]))]


def build_specs(source: Source, *, calib_dir: Path | None = None, towers: Sequence[str] = ("image", "text")) -> tuple[list[TowerSpec], dict[str, Any]]:
    """TowerSpecs for a CLIP checkpoint, plus bundle facts (dim, logit_scale)."""
    from .clip_tokenizer import clip_tokenizer_from_source

    model_dir = find_transformers_dir(source.path)
    model = load_clip(model_dir)
    cfg = model.config
    dim = int(cfg.projection_dim)
    specs: list[TowerSpec] = []
    if "image" in towers:
        vc = cfg.vision_config
        preprocess = image_preprocess_from(model_dir, int(vc.image_size))
        parity, calib = image_feeds(preprocess, calib_dir)
        specs.append(TowerSpec(
            tower="image", module=ClipImageTower(model), input_names=("pixel_values",), output_names=("embedding",),
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
            parity_inputs=parity, calibration_inputs=calib, dim=dim, preprocess=preprocess,
            ort_optimizer={"model_type": "vit", "num_heads": int(vc.num_attention_heads), "hidden_size": int(vc.hidden_size)},
            extra={"image_size": int(vc.image_size), "patch_size": int(vc.patch_size)},
        ))
    if "text" in towers:
        tc = cfg.text_config
        tokenizer = clip_tokenizer_from_source(model_dir)
        eot_id = tokenizer.token_to_id("<|endoftext|>")
        if eot_id is None:
            raise ArtifactError(f"{model_dir}: the vocabulary has no <|endoftext|> token")
        max_len = int(tc.max_position_embeddings)
        settings = TextSettings(max_length=max_len, cleaning="clip", pad_id=int(eot_id))
        feeds = text_feeds(tokenizer, settings, PARITY_TEXTS)
        specs.append(TowerSpec(
            tower="text", module=ClipTextTower(model, int(eot_id)), input_names=("input_ids", "attention_mask"),
            output_names=("embedding",),
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "embedding": {0: "batch"}},
            parity_inputs=feeds, dim=dim, text=settings, tokenizer=tokenizer,
            ort_optimizer={"model_type": "clip", "num_heads": int(tc.num_attention_heads), "hidden_size": int(tc.hidden_size)},
            extra={"eot_id": int(eot_id), "pooling": "first end-of-text token"},
        ))
    facts = {"dim": dim, "logit_scale": float(model.logit_scale.detach().exp()), "model_dir": str(model_dir)}
    return specs, facts


def export(model: str, options: ExportOptions, *, towers: Sequence[str] = ("image", "text")) -> Path:
    """Export a CLIP checkpoint (hub id or local dir) as ``options`` say; returns the bundle path.

    The space defaults to the checkpoint's id (:attr:`Source.space`); images
    for int8 calibration come from ``options.calib_dir`` only (the command line
    defaults it to the shipped example images).
    """
    source = resolve(model, allow_patterns=CHECKPOINT_FILES)
    specs, facts = build_specs(source, calib_dir=options.calib_dir, towers=towers)
    return export_bundle(
        options, family="clip", space=options.space or source.space, dim=facts["dim"],
        logit_scale=facts["logit_scale"], source=source.to_dict(), specs=specs,
    )


def export_clip(model: str, out: str | Path, targets: str | Sequence[str] = DEFAULT_TARGETS, *,
                towers: Sequence[str] = ("image", "text"), **settings: Any) -> Path:
    """Export a CLIP checkpoint to a bundle at ``out``; returns the bundle path.

    ``settings`` are the other :class:`~crossmodal.export.options.ExportOptions`
    fields (``name``, ``space``, ``calib_dir``, ``int8_recipe``, ``optimize``, ``thresholds``).
    """
    return export(model, ExportOptions.create(out, targets, **settings), towers=towers)
