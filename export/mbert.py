"""Multilingual text encoders (M-BERT family), paired with the CLIP image tower they were trained against.

Accepted sources (see ``mbert_sources``): sentence-transformers directories
(``clip-ViT-B-32-multilingual-v1``, or any Transformer + Pooling [+ Dense]
[+ Normalize] model such as ``all-MiniLM-L6-v2``), Multilingual-CLIP
checkpoints (``M-CLIP/*``) and the legacy ``M-BERT-*`` models with their
separately distributed linear head.

The text graph takes ``input_ids`` and ``attention_mask`` (plus
``token_type_ids`` where the reference tokenizer passes them: BERT yes,
DistilBERT and XLM-R no), pools over the attention mask as the source
says, applies each projection with its activation and L2-normalises, all
in-graph.

Pairing: ``--image-bundle`` copies the image tower of an exported CLIP bundle,
``--image-model`` exports it from a CLIP checkpoint in the same run (through
``crossmodal.export.clip.build_specs``). The bundle's space is the CLIP
image tower's space, so the runtime accepts the pair; dims must agree, and a
model card naming a different CLIP stops the export unless
``--force-pairing``. ``logit_scale`` is the CLIP's own learned temperature
(100 for every OpenAI checkpoint): the multilingual encoders were distilled
to reproduce CLIP text embeddings, so CLIP's temperature is the one their
cosines are calibrated for. Without an image option the bundle is text-only,
its space is the model's own id, and ``logit_scale`` is 20 (= 1/0.05,
sentence-transformers' MultipleNegativesRankingLoss default scale).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from crossmodal.errors import ArtifactError, IncompatibleTowersError
from crossmodal.manifest import TextSettings, read_bundle, read_manifest

from . import artifact, resources
from .mbert_sources import TextEncoderParts, read_parts
from .options import DEFAULT_TARGETS, ExportOptions
from .pipeline import TowerSpec, export_bundle
from .sources import resolve

log = logging.getLogger(__name__)

CARD_PREFIX = "mbert-"
_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.pkl", "*/*.json", "*/*.txt", "*/*.safetensors"]
TEXT_ONLY_LOGIT_SCALE = 20.0
MAX_LENGTH_CAP = 512
# Architectures whose position ids start after the padding index (usable positions = max - 2).
_OFFSET_POSITIONS = ("xlm-roberta", "roberta", "camembert")

# Texts for export-time parity: several scripts, padding inside a batch, and
# one text longer than any max length (truncation).
PARITY_TEXTS: list[list[str]] = [
    ["zwei Hunde im Schnee"],
    ["雪中的两只狗", "Two dogs in the snow", "", "Собака бежит по пляжу 🐕", "كلب يجري على الشاطئ",
     "東京の夜景", "Ünïcödé ÇAFÉ crème brûlée"],
    [" ".join(["a very long caption about many things in many places"] * 60)],
]
# Texts on which the bundle's tokenizer.json must give the reference tokenizer's ids.
TOKENIZER_PROBE: list[str] = [t for batch in PARITY_TEXTS for t in batch] + [
    "Ein Mann fährt Fahrrad in München", "Un chat noir sur une chaise", "Μια γάτα στον καναπέ",
    "כלב בשלג", "बर्फ में दो कुत्ते", "สุนัขสองตัวในหิมะ", "Kar üstünde iki köpek", "Hai con chó trên tuyết",
    "Dwa psy na śniegu", "눈 속의 개 두 마리", "Dos perros en la nieve", "MiXeD CaSe TeXt!!", "emoji 😀🎉 test",
]


class PooledTextTower(torch.nn.Module):
    """input_ids, attention_mask[, token_type_ids] (n, L) -> L2-normalised embedding (n, dim)."""

    def __init__(self, parts: TextEncoderParts, use_token_type_ids: bool):
        super().__init__()
        self.transformer = parts.transformer
        self.pooling = parts.pooling
        self.dense = torch.nn.ModuleList([torch.nn.Sequential(d.linear, d.activation) for d in parts.dense])
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**kwargs).last_hidden_state
        x = pool(hidden, attention_mask, self.pooling)
        for layer in self.dense:
            x = layer(x)
        return torch.nn.functional.normalize(x, dim=-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence-transformers' pooling rules over right-padded batches."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]  # right padding: the first token is always real
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    summed = (hidden * mask).sum(dim=1)
    count = torch.clamp(mask.sum(dim=1), min=1e-9)
    if mode == "mean":
        return summed / count
    if mode == "mean_sqrt_len_tokens":
        return summed / torch.sqrt(count)
    raise ArtifactError(f"pooling mode {mode!r} is not supported")


# ----------------------------------------------------------------- tokenizer
def load_reference_tokenizer(tok_dir: Path) -> Any:
    """transformers' AutoTokenizer on the source directory: the reference the bundle must reproduce."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tok_dir))
    except Exception as exc:  # missing/broken tokenizer files surface as many exception types
        raise ArtifactError(f"cannot load the tokenizer in {tok_dir} with transformers ({exc})") from exc


def bundle_tokenizer(tok_dir: Path, reference: Any, lower: bool) -> tuple[Any, str]:
    """tokenizer.json from the source directory (or the reference's backend when the directory has none).

    ``lower`` (sentence-transformers' ``do_lower_case``) lower-cases before the
    tokenizer; the same happens here through a Lowercase normalizer placed first.
    """
    from tokenizers import Tokenizer, normalizers

    path = tok_dir / "tokenizer.json"
    if path.is_file():
        tok, origin = Tokenizer.from_file(str(path)), "source tokenizer.json"
    else:
        tok, origin = Tokenizer.from_str(reference.backend_tokenizer.to_str()), "transformers backend tokenizer"
    tok.no_truncation()
    tok.no_padding()
    if lower:
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer else []))
        origin += " + Lowercase (do_lower_case)"
    return tok, origin


def max_length_for(parts: TextEncoderParts, reference: Any) -> int:
    """Longest token sequence (special tokens included) the reference feeds the model."""
    limits = [MAX_LENGTH_CAP]
    if parts.max_seq_length:
        limits.append(int(parts.max_seq_length))
    tok_max = getattr(reference, "model_max_length", None)
    if isinstance(tok_max, int) and 1 < tok_max < 100_000:
        limits.append(tok_max)
    positions = getattr(parts.transformer.config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions) - (2 if parts.model_type in _OFFSET_POSITIONS else 0))
    return min(limits)


def needs_token_type_ids(parts: TextEncoderParts, reference: Any) -> bool:
    """True when the reference tokenizer passes token_type_ids and the model's forward takes them."""
    import inspect

    takes = "token_type_ids" in inspect.signature(parts.transformer.forward).parameters
    return takes and "token_type_ids" in list(getattr(reference, "model_input_names", []))


def reference_ids(reference: Any, texts: Sequence[str], max_length: int, lower: bool) -> dict[str, NDArray[np.int64]]:
    """What the reference pipeline feeds the model for ``texts`` (right-padded to the longest)."""
    batch = [t.lower() for t in texts] if lower else list(texts)
    enc = reference(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def check_tokenizer(tok: Any, settings: TextSettings, reference: Any, lower: bool, texts: Sequence[str]) -> None:
    """Raise when the bundle's tokenizer gives other ids than the reference on ``texts``."""
    from crossmodal.text import TextTokenizer

    ours = TextTokenizer(tok, settings)
    for text in texts:
        got = ours.encode([text])
        want = reference_ids(reference, [text], settings.max_length, lower)
        for key in ("input_ids", "attention_mask"):
            if not np.array_equal(got[key], want[key]):
                raise ArtifactError(
                    f"the tokenizer.json of this model gives other {key} than transformers' tokenizer for "
                    f"{text[:60]!r}: {got[key][0][:12].tolist()}... vs {want[key][0][:12].tolist()}...; "
                    "the bundle would not reproduce the model. Report it with the model id."
                )


# ----------------------------------------------------------------- specs
def build_text_spec(parts: TextEncoderParts) -> TowerSpec:
    """The text TowerSpec for already loaded parts (tokenizer checked against the reference)."""
    from crossmodal.text import TextTokenizer

    reference = load_reference_tokenizer(parts.tokenizer_dir)
    tok, origin = bundle_tokenizer(parts.tokenizer_dir, reference, parts.do_lower_case)
    pad_id = reference.pad_token_id
    if pad_id is None:
        raise ArtifactError(f"{parts.tokenizer_dir}: the tokenizer has no pad token")
    wordpiece = json.loads(tok.to_str()).get("model", {}).get("type") == "WordPiece"
    use_tt = needs_token_type_ids(parts, reference)
    settings = TextSettings(max_length=max_length_for(parts, reference), cleaning="bert" if wordpiece else "none",
                            pad_id=int(pad_id), needs_token_type_ids=use_tt)
    check_tokenizer(tok, settings, reference, parts.do_lower_case, TOKENIZER_PROBE)
    encoder = TextTokenizer(tok, settings)
    feeds = [encoder.encode(batch) for batch in PARITY_TEXTS]
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if use_tt else ())
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["embedding"] = {0: "batch"}
    cfg = parts.transformer.config
    return TowerSpec(
        tower="text", module=PooledTextTower(parts, use_tt).eval(), input_names=names, output_names=("embedding",),
        dynamic_axes=axes, parity_inputs=feeds, dim=parts.dim, text=settings, tokenizer=tok,
        ort_optimizer={"model_type": "bert", "num_heads": int(cfg.num_attention_heads), "hidden_size": int(cfg.hidden_size)},
        extra={**parts.describe(), "tokenizer": origin, "normalized_in_graph": True,
               "int8_kept_fp32": [
                   "word/position/type embeddings (Gather): the int8 recipes quantise MatMul weights only",
                   "projection (traced as Gemm on the pooled vector): MatMul-only recipes leave it fp32; it is "
                   "one small matrix per query, so int8 would save nothing measurable"]},
    )


# ----------------------------------------------------------------- cards and pairing
def _key(name: str) -> str:
    """Comparable form of a model id or folder: its last path component, lower-cased."""
    return str(name).rstrip("/").rsplit("/", 1)[-1].lower()


def load_cards() -> list[dict[str, Any]]:
    """Every shipped pairing card (``models/cards/mbert-*.json`` in the source tree)."""
    return list(resources.cards(CARD_PREFIX).values())


def find_card(model: str, name: str | None = None) -> dict[str, Any] | None:
    """The card whose ``card_name`` is ``name``, or whose hub id matches ``model`` (id or folder name)."""
    cards = load_cards()
    if name is not None:
        for c in cards:
            if c.get("card_name") == name:
                return c
        raise ArtifactError(f"no model card {name!r} (have: {', '.join(c['card_name'] for c in cards)})")
    key = _key(model)
    for c in cards:
        if key == _key(c.get("hub_id", "")):
            return c
    return None


def check_pairing(card: dict[str, Any] | None, image_space: str, force: bool) -> None:
    """Refuse an image space the model card says the text encoder was not trained against."""
    if card is None or force:
        return
    accepted = card.get("paired_image", {}).get("spaces", [])
    if _key(image_space) not in {_key(s) for s in accepted}:
        raise IncompatibleTowersError(
            f"{card['hub_id']} was trained against {card['paired_image'].get('model')} (spaces {accepted}), "
            f"not {image_space!r}: its text embeddings would not match these images. Use the matching CLIP, "
            "or pass --force-pairing if you know this CLIP shares that space."
        )


def _check_dims(text_dim: int, image_dim: int, what: str) -> None:
    if text_dim != image_dim:
        raise IncompatibleTowersError(
            f"the text encoder embeds into {text_dim} dims but the image tower of {what} into {image_dim}; "
            "they cannot share a space. Pair the text encoder with the CLIP it was trained against."
        )


def export(
    model: str,
    options: ExportOptions,
    *,
    image_bundle: Path | None = None,
    image_model: str | None = None,
    head: Path | None = None,
    base_config: Path | None = None,
    card: str | None = None,
    force_pairing: bool = False,
) -> Path:
    """Export a multilingual text encoder (optionally with its CLIP image tower) as ``options`` say.

    ``options.calib_dir`` calibrates the image tower of ``image_model`` only.
    """
    if image_bundle is not None and image_model is not None:
        raise ArtifactError("pass either --image-bundle or --image-model, not both")
    if options.space is not None and (image_bundle is not None or image_model is not None):
        raise ArtifactError("--space names the space of a text-only bundle; a paired bundle takes the CLIP's space")
    target_list = list(options.targets)
    source = resolve(model, allow_patterns=_PATTERNS)
    if not any(source.path.glob("*.safetensors")) and not any(source.path.glob("*/*.safetensors")):
        # Older hub repos (M-CLIP/*) ship pytorch_model.bin only; fetch it only when no safetensors exist.
        source = resolve(model, allow_patterns=_PATTERNS + ["pytorch_model*.bin", "*/pytorch_model*.bin"])
    model_card = find_card(model, card)

    # Check the image side first: a refused pairing must not cost a text export.
    bundle_info = None
    if image_bundle is not None:
        image_bundle = Path(image_bundle)
        bundle_info = read_bundle(image_bundle)
        if "image" not in bundle_info.towers:
            raise ArtifactError(f"--image-bundle {image_bundle} has no image tower (it has {sorted(bundle_info.towers)})")
        check_pairing(model_card, bundle_info.space, force_pairing)
    clip_source = None
    if image_model is not None:
        from . import clip

        clip_source = resolve(image_model, allow_patterns=clip.CHECKPOINT_FILES)
        check_pairing(model_card, clip_source.space, force_pairing)

    parts = read_parts(source.path, head=head, base_config_path=base_config)
    text_spec = build_text_spec(parts)
    text_dim = parts.dim
    source_dict = {**source.to_dict(), "format": parts.fmt, "card": None if model_card is None else model_card["card_name"]}
    del parts  # the spec holds what the text tower runs; the pipeline drops it once traced
    specs = [text_spec]
    extra_towers: dict[str, str] = {}

    if bundle_info is not None:
        assert image_bundle is not None
        folder = bundle_info.towers["image"]
        variants = [v for v in target_list if (image_bundle / folder / v / "manifest.json").is_file()]
        if not variants:
            raise ArtifactError(f"--image-bundle {image_bundle} has none of the variants {target_list} of its image tower")
        for v in variants:
            _check_dims(text_dim, read_manifest(image_bundle / folder / v).dim, f"bundle {image_bundle}")
        for v in variants:
            artifact.copy_tower(image_bundle, folder, options.out, "image", v)
        extra_towers["image"] = "image"
        bundle_space, logit_scale, dim = bundle_info.space, bundle_info.logit_scale, bundle_info.dim
        pairing = {"image": {"bundle": str(image_bundle.resolve()), "space": bundle_info.space,
                             "source": dict(bundle_info.source), "variants": variants},
                   "text": source_dict, "forced": bool(force_pairing)}
    elif clip_source is not None:
        from . import clip

        clip_space = clip_source.space
        image_specs, facts = clip.build_specs(clip_source, calib_dir=options.calib_dir, towers=("image",))
        _check_dims(text_dim, int(facts["dim"]), f"CLIP {image_model}")
        specs = image_specs + specs
        bundle_space, logit_scale, dim = clip_space, float(facts["logit_scale"]), int(facts["dim"])
        pairing = {"image": {"space": clip_space, "source": clip_source.to_dict()}, "text": source_dict,
                   "forced": bool(force_pairing)}
    else:
        bundle_space, logit_scale, dim = options.space or source.space, TEXT_ONLY_LOGIT_SCALE, text_dim
        pairing = {"text": source_dict}

    return export_bundle(
        options, family="mbert", space=bundle_space, dim=dim, logit_scale=logit_scale, source=source_dict,
        specs=specs, extra_towers=extra_towers, pairing=pairing,
    )


def export_mbert(model: str, out: str | Path, targets: str | Sequence[str] = DEFAULT_TARGETS, *,
                 image_bundle: Path | None = None, image_model: str | None = None, head: Path | None = None,
                 base_config: Path | None = None, card: str | None = None, force_pairing: bool = False,
                 **settings: Any) -> Path:
    """Export a multilingual text encoder (optionally with its CLIP image tower) to a bundle at ``out``.

    ``settings`` are the other :class:`~crossmodal.export.options.ExportOptions`
    fields (``name``, ``space``, ``calib_dir``, ``int8_recipe``, ``optimize``, ``thresholds``).
    """
    return export(model, ExportOptions.create(out, targets, **settings), image_bundle=image_bundle,
                  image_model=image_model, head=head, base_config=base_config, card=card, force_pairing=force_pairing)
