"""Loading an original ALBEF checkpoint into :mod:`crossmodal.export.albef_model`.

Two state-dict layouts exist among the released files:

* ``pretrain`` (``ALBEF_4M.pth``, ``ALBEF.pth``; ``models.model_pretrain.ALBEF``):
  the text encoder is a ``BertForMaskedLM``, so its keys read
  ``text_encoder.bert.*`` and it carries an MLM head ``text_encoder.cls.*``;
* ``retrieval`` (``mscoco.pth``, ``flickr30k.pth``; ``models.model_retrieval.ALBEF``):
  a plain ``BertModel`` (``text_encoder.*``), no MLM head, an extra
  ``idx_queue`` and a ``pos_embed`` sized for 384 pixels.

Both carry momentum copies (``*_m``), feature queues and the temperature. The
loader maps every parameter of our modules to exactly one checkpoint key,
fails on a missing one (naming key and file), and sorts every key it does not
read into a named category, so a new or renamed key can never be dropped
silently. Files are read with ``torch.load(weights_only=True)``: no arbitrary
object is ever unpickled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from crossmodal.errors import ArtifactError
from crossmodal.inputs import positive_int

from . import resources
from .albef_model import AlbefConfig, AlbefModel, TextConfig, VisionConfig

CARD_PREFIX = "albef_"
LAYOUTS = ("pretrain", "retrieval")

_TEXT_PREFIX = {"pretrain": "text_encoder.bert.", "retrieval": "text_encoder."}
_VISION_PREFIX = "visual_encoder."

# Our parameter names -> the original module paths (one rule per sub-module kind).
_IMAGE_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^blocks\.(\d+)\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^blocks\.(\d+)\.attn_out\.", r"blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.fc1\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.fc2\.", r"blocks.\1.mlp.fc2."),
    (r"^ln_final\.", "norm."),
)
_TEXT_EMB_RULES: tuple[tuple[str, str], ...] = (
    (r"^word_emb\.", "embeddings.word_embeddings."),
    (r"^pos_emb\.", "embeddings.position_embeddings."),
    (r"^type_emb\.", "embeddings.token_type_embeddings."),
    (r"^ln_emb\.", "embeddings.LayerNorm."),
    (r"^position_ids$", "embeddings.position_ids"),
)
_LAYER_RULES: tuple[tuple[str, str], ...] = (
    (r"^self_attn\.q\.", "attention.self.query."),
    (r"^self_attn\.k\.", "attention.self.key."),
    (r"^self_attn\.v\.", "attention.self.value."),
    (r"^self_attn\.out\.", "attention.output.dense."),
    (r"^self_attn\.ln\.", "attention.output.LayerNorm."),
    (r"^cross_attn\.q\.", "crossattention.self.query."),
    (r"^cross_attn\.k\.", "crossattention.self.key."),
    (r"^cross_attn\.v\.", "crossattention.self.value."),
    (r"^cross_attn\.out\.", "crossattention.output.dense."),
    (r"^cross_attn\.ln\.", "crossattention.output.LayerNorm."),
    (r"^fc1\.", "intermediate.dense."),
    (r"^fc2\.", "output.dense."),
    (r"^ln_ffn\.", "output.LayerNorm."),
)

# Keys that are never read, by category. Order matters: the first match wins.
_IGNORED_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("momentum", r"^(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m)\."),
    ("queues", r"^(image_queue|text_queue|idx_queue|queue_ptr)$"),
    ("mlm_head", r"^text_encoder\.cls\."),
)


def _apply_rules(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in rules:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    return name


def source_key(tower: str, name: str, layout: str, fusion_layer: int) -> str:
    """The checkpoint key that fills parameter ``name`` of our ``tower`` module."""
    text = _TEXT_PREFIX[layout]
    if tower == "image":
        if name.startswith("proj."):
            return "vision_proj." + name[len("proj."):]
        return _VISION_PREFIX + _apply_rules(name, _IMAGE_RULES)
    if tower == "text":
        if name.startswith("proj."):
            return "text_proj." + name[len("proj."):]
        m = re.match(r"^layers\.(\d+)\.(.*)$", name)
        if m:
            return f"{text}encoder.layer.{m.group(1)}." + _apply_rules(m.group(2), _LAYER_RULES)
        return text + _apply_rules(name, _TEXT_EMB_RULES)
    if tower == "rerank":
        if name.startswith("itm_head."):
            return name
        m = re.match(r"^layers\.(\d+)\.(.*)$", name)
        if m:
            return f"{text}encoder.layer.{fusion_layer + int(m.group(1))}." + _apply_rules(m.group(2), _LAYER_RULES)
    raise ValueError(f"no checkpoint key for {tower}.{name}")


# ----------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an original ALBEF ``.pth`` (``{'model': state_dict}`` or a bare state dict).

    ``weights_only=True`` refuses anything that is not tensors and plain
    containers; training checkpoints that also pickled their yaml config or
    argparse namespace are refused with the offending classes named.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ALBEF checkpoint {path} does not exist. Pass the downloaded .pth file with --model.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (non-zip) serialisation cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or zipfile errors here
        unsafe = ""
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            if names:
                unsafe = f" It pickles non-tensor objects ({', '.join(names[:8])})."
        except Exception:  # the file may not even be a zip archive
            pass
        raise ArtifactError(
            f"ALBEF checkpoint {path} cannot be read as tensors only ({type(exc).__name__}: {str(exc)[:200]}).{unsafe} "
            "Re-save it in a trusted environment as torch.save({'model': ckpt['model']}, path)."
        ) from exc
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtifactError(f"ALBEF checkpoint {path} holds no state dict: expected {{'model': state_dict}} of tensors.")
    return sd


def detect_layout(sd: Mapping[str, Any], where: str) -> str:
    """``pretrain`` or ``retrieval``, from the text encoder's key prefix."""
    if "text_encoder.bert.embeddings.word_embeddings.weight" in sd:
        return "pretrain"
    if "text_encoder.embeddings.word_embeddings.weight" in sd:
        return "retrieval"
    raise ArtifactError(
        f"{where}: not an ALBEF checkpoint: neither text_encoder.bert.embeddings.word_embeddings.weight (pretrain layout) "
        "nor text_encoder.embeddings.word_embeddings.weight (retrieval layout) is present."
    )


# ----------------------------------------------------------------------------- configuration


def card_names() -> list[str]:
    """Names accepted by ``--config`` (the ``config_name`` of each shipped ALBEF card)."""
    return [str(c.get("config_name", stem)) for stem, c in resources.cards(CARD_PREFIX).items()]


def read_config_file(spec: str | Path) -> dict[str, Any]:
    """A card name (``albef_4m``, ``retrieval_coco``, ...) or a JSON/yaml file in the original vocabulary.

    Returns the raw mapping; :func:`build_config` interprets it.
    """
    import json

    spec_str = str(spec)
    if isinstance(spec, str) and spec_str.replace("_", "").isalnum():
        # Bare names are cards: "albef_4m" -> albef_4m.json, "retrieval_coco" -> albef_retrieval_coco.json.
        for stem in (spec_str, f"{CARD_PREFIX}{spec_str}"):
            card = resources.card(stem)
            if card is not None:
                return card
    path = Path(spec_str)
    if not path.is_file():
        raise ArtifactError(
            f"ALBEF config {spec_str!r} is neither a model card ({', '.join(card_names()) or 'none found'}) nor an existing file."
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:
        raise ArtifactError(f"ALBEF config {path} is not valid JSON/yaml ({exc}).") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"ALBEF config {path} must hold a mapping.")
    # The original yaml names its BERT config by a path relative to the repository root.
    if isinstance(raw.get("bert_config"), str):
        for base in (path.parent, path.parent.parent, Path.cwd()):
            bert_path = base / raw["bert_config"]
            if bert_path.is_file():
                raw["bert_config"] = json.loads(bert_path.read_text(encoding="utf-8"))
                break
        else:
            raise ArtifactError(f"ALBEF config {path}: bert_config file {raw['bert_config']!r} not found next to it.")
    return raw


def _sections(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(yaml-level values, bert_config, vision_config) from either a card/golden layout or a flat yaml."""
    yaml_cfg = dict(raw.get("yaml_config") or {k: v for k, v in raw.items() if not isinstance(v, (dict, list))})
    bert = dict(raw.get("bert_config") or {})
    vision = dict(raw.get("vision_config") or {})
    return yaml_cfg, bert, vision


@dataclass
class _Resolver:
    """Chooses each config value: tensor shapes win over declarations, but a contradiction is an error."""

    where: str
    sources: dict[str, str] = field(default_factory=dict)

    def pick(self, name: str, declared: Any, inferred: Any, default: Any) -> Any:
        if declared is not None and inferred is not None and declared != inferred:
            raise ArtifactError(
                f"{self.where}: the config declares {name}={declared!r} but the checkpoint's tensors imply {inferred!r}. "
                "Pass the --config that matches this checkpoint."
            )
        if inferred is not None:
            self.sources[name] = "checkpoint"
            return inferred
        if declared is not None:
            self.sources[name] = "config"
            return declared
        self.sources[name] = "default"
        return default


def _count(sd: Mapping[str, Any], pattern: str) -> int | None:
    idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else None


def _shape(sd: Mapping[str, torch.Tensor], key: str, dim: int) -> int | None:
    t = sd.get(key)
    return int(t.shape[dim]) if t is not None and t.dim() > dim else None


def checkpoint_image_res(sd: Mapping[str, torch.Tensor], patch_size: int) -> int:
    """Resolution the checkpoint's ``pos_embed`` was trained for (square grid plus ``[CLS]``)."""
    n = int(sd["visual_encoder.pos_embed"].shape[1]) - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ArtifactError(f"visual_encoder.pos_embed has {n + 1} positions, which is not a square grid plus [CLS].")
    return grid * patch_size


def build_config(raw: Mapping[str, Any], sd: Mapping[str, torch.Tensor], layout: str, where: str,
                 image_res: int | None = None) -> tuple[AlbefConfig, dict[str, str]]:
    """The model config: shapes from the tensors, the rest (heads, eps, resolution) from ``raw``.

    ``image_res`` overrides the config's resolution (the position embeddings
    are then interpolated). Returns the config and where each value came from.
    """
    if image_res is not None:  # 0 once meant "the config's" without a word
        image_res = positive_int("image_res", image_res)
    yaml_cfg, bert, vision = _sections(raw)
    r = _Resolver(where)
    t = _TEXT_PREFIX[layout]
    ve = _VISION_PREFIX
    for key in (ve + "pos_embed", ve + "cls_token", ve + "patch_embed.proj.weight", t + "embeddings.word_embeddings.weight"):
        if key not in sd:
            raise ArtifactError(f"{where}: the checkpoint misses {key}, which the image/text towers need.")

    width = r.pick("vision.width", vision.get("embed_dim", yaml_cfg.get("vision_width")), _shape(sd, ve + "cls_token", 2), 768)
    patch = r.pick("vision.patch_size", vision.get("patch_size"), _shape(sd, ve + "patch_embed.proj.weight", 2), 16)
    depth = r.pick("vision.depth", vision.get("depth"), _count(sd, r"^visual_encoder\.blocks\.(\d+)\."), 12)
    mlp_hidden = r.pick("vision.mlp_hidden",
                        None if vision.get("mlp_ratio") is None else int(vision["mlp_ratio"] * width),
                        _shape(sd, ve + "blocks.0.mlp.fc1.weight", 0), 4 * width)
    v_heads = r.pick("vision.num_heads", vision.get("num_heads"), None, 12)
    qkv_bias = r.pick("vision.qkv_bias", vision.get("qkv_bias"), (ve + "blocks.0.attn.qkv.bias") in sd, True)
    ckpt_res = checkpoint_image_res(sd, patch)
    declared_res = yaml_cfg.get("image_res", vision.get("img_size"))
    target_res = image_res or declared_res or ckpt_res
    r.sources["vision.image_res"] = "argument" if image_res else ("config" if declared_res else "checkpoint")
    if target_res % patch:
        raise ArtifactError(f"{where}: image_res {target_res} is not a multiple of the patch size {patch}.")
    v_cfg = VisionConfig(image_res=int(target_res), patch_size=patch, width=width, depth=depth, num_heads=int(v_heads),
                         mlp_hidden=mlp_hidden, qkv_bias=bool(qkv_bias), layer_norm_eps=1e-6)

    layer0 = t + "encoder.layer.0."
    fusion_inferred = next((i for i in range(_count(sd, rf"^{re.escape(t)}encoder\.layer\.(\d+)\.") or 0)
                            if f"{t}encoder.layer.{i}.crossattention.self.key.weight" in sd), None)
    hidden = r.pick("text.hidden_size", bert.get("hidden_size"), _shape(sd, t + "embeddings.word_embeddings.weight", 1), 768)
    t_cfg = TextConfig(
        vocab_size=r.pick("text.vocab_size", bert.get("vocab_size"), _shape(sd, t + "embeddings.word_embeddings.weight", 0), 30522),
        hidden_size=hidden,
        num_hidden_layers=r.pick("text.num_hidden_layers", bert.get("num_hidden_layers"),
                                 _count(sd, rf"^{re.escape(t)}encoder\.layer\.(\d+)\."), 12),
        fusion_layer=r.pick("text.fusion_layer", bert.get("fusion_layer"), fusion_inferred, 6),
        num_attention_heads=int(r.pick("text.num_attention_heads", bert.get("num_attention_heads"), None, 12)),
        intermediate_size=r.pick("text.intermediate_size", bert.get("intermediate_size"),
                                 _shape(sd, layer0 + "intermediate.dense.weight", 0), 3072),
        max_position_embeddings=r.pick("text.max_position_embeddings", bert.get("max_position_embeddings"),
                                       _shape(sd, t + "embeddings.position_embeddings.weight", 0), 512),
        type_vocab_size=r.pick("text.type_vocab_size", bert.get("type_vocab_size"),
                               _shape(sd, t + "embeddings.token_type_embeddings.weight", 0), 2),
        layer_norm_eps=float(r.pick("text.layer_norm_eps", bert.get("layer_norm_eps"), None, 1e-12)),
        encoder_width=r.pick("text.encoder_width", bert.get("encoder_width"),
                             _shape(sd, f"{t}encoder.layer.{fusion_inferred}.crossattention.self.key.weight", 1)
                             if fusion_inferred is not None else None, width),
        pad_token_id=int(bert.get("pad_token_id", 0)),
    )
    for what, size, heads in (("vision width", width, v_cfg.num_heads), ("text hidden_size", hidden, t_cfg.num_attention_heads)):
        if heads <= 0 or size % heads:
            raise ArtifactError(f"{where}: {what} {size} is not divisible by {heads} attention heads; "
                                "the config's num_heads does not fit this checkpoint.")
    if bert.get("hidden_act", "gelu") != "gelu":
        raise ArtifactError(f"{where}: hidden_act {bert['hidden_act']!r} is not supported (ALBEF uses exact 'gelu').")
    embed_dim = r.pick("embed_dim", yaml_cfg.get("embed_dim"), _shape(sd, "vision_proj.weight", 0), 256)
    temp = float(sd["temp"].item()) if "temp" in sd and sd["temp"].device.type != "meta" else float(yaml_cfg.get("temp", 0.07))
    return AlbefConfig(vision=v_cfg, text=t_cfg, embed_dim=embed_dim, temp=temp), r.sources


# ----------------------------------------------------------------------------- position embeddings


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a [1, 1 + g*g, C] position table to ``grid`` x ``grid`` patches, keeping ``[CLS]``.

    Same operation as the original fine-tuning code: bicubic
    ``torch.nn.functional.interpolate`` on the [C, g, g] image of the table,
    ``align_corners=False`` (torch's bicubic uses the a = -0.75 kernel).
    """
    n, c = pos_embed.shape[1] - 1, pos_embed.shape[2]
    old = math.isqrt(n)
    if old == grid:
        return pos_embed
    cls_pos, patches = pos_embed[:, :1], pos_embed[:, 1:]
    img = patches.reshape(-1, old, old, c).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat((cls_pos, img.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What the loader did with every key of the checkpoint."""

    source: str
    layout: str
    consumed: list[str]
    ignored: dict[str, list[str]]
    config_sources: dict[str, str]
    checkpoint_image_res: int
    image_res: int
    pos_embed_interpolated: bool
    temp: float

    @property
    def num_consumed(self) -> int:
        return len(self.consumed)

    def summary(self) -> dict[str, Any]:
        """Counts per category, for manifests and logs."""
        return {
            "layout": self.layout,
            "consumed": len(self.consumed),
            "ignored": {k: len(v) for k, v in sorted(self.ignored.items())},
            "checkpoint_image_res": self.checkpoint_image_res,
            "image_res": self.image_res,
            "pos_embed_interpolated": self.pos_embed_interpolated,
        }


def _categorise(key: str, layout: str, fusion_layer: int) -> str | None:
    for name, pattern in _IGNORED_CATEGORIES:
        if re.search(pattern, key):
            return name
    if key == "temp":
        return "temperature"
    m = re.match(rf"^{re.escape(_TEXT_PREFIX[layout])}encoder\.layer\.(\d+)\.", key)
    if (m and int(m.group(1)) >= fusion_layer) or key.startswith("itm_head."):
        return "fusion"
    return None


def _check_ties(sd: Mapping[str, torch.Tensor], layout: str, where: str) -> None:
    """The pretrain layout stores the MLM decoder tied to the word embeddings; edited files break the tie."""
    if layout != "pretrain":
        return
    words = sd.get("text_encoder.bert.embeddings.word_embeddings.weight")
    decoder = sd.get("text_encoder.cls.predictions.decoder.weight")
    if words is None or decoder is None or words.device.type == "meta" or decoder.device.type == "meta":
        return
    if words.shape != decoder.shape or not torch.equal(words, decoder):
        # model_pretrain would read the decoder's copy, Retrieval.py the embeddings': no single right answer.
        raise ArtifactError(
            f"{where}: text_encoder.cls.predictions.decoder.weight differs from the tied "
            "text_encoder.bert.embeddings.word_embeddings.weight; the file was edited after saving."
        )


def load_albef(checkpoint: str | Path | Mapping[str, torch.Tensor], config: str | Path | Mapping[str, Any], *,
               image_res: int | None = None, with_rerank: bool = True, strict: bool = True,
               where: str | None = None) -> tuple[AlbefModel, LoadReport]:
    """Build the retrieval slices of an original ALBEF checkpoint.

    ``checkpoint`` is a ``.pth`` path or an already loaded state dict (tensors
    on the ``meta`` device give a shape-only model, for key audits).
    ``config`` is a card name, a config file or a raw mapping in the original
    vocabulary. With ``with_rerank=False`` the fusion layers and ``itm_head``
    are not needed and are reported as ignored. ``strict`` makes keys of no
    known category an error.
    """
    if isinstance(checkpoint, Mapping):
        sd = dict(checkpoint)
        where = where or "state dict"
    else:
        where = where or str(checkpoint)
        sd = read_state_dict(checkpoint)
    raw = read_config_file(config) if isinstance(config, (str, Path)) else dict(config)
    layout = detect_layout(sd, where)
    cfg, sources = build_config(raw, sd, layout, where, image_res=image_res)
    _check_ties(sd, layout, where)
    # Every parameter is replaced by a checkpoint tensor below, so nothing is allocated or initialised here.
    with torch.device("meta"):
        model = AlbefModel.build(cfg, with_rerank=with_rerank)

    towers: dict[str, torch.nn.Module] = {"image": model.image, "text": model.text}
    if model.rerank is not None:
        towers["rerank"] = model.rerank
    consumed: list[str] = []
    ckpt_res = checkpoint_image_res(sd, cfg.vision.patch_size)
    for tower, module in towers.items():
        new_state: dict[str, torch.Tensor] = {}
        targets = dict(module.named_parameters())
        targets.update({n: b for n, b in module.named_buffers()})
        for name, param in targets.items():
            key = source_key(tower, name, layout, cfg.text.fusion_layer)
            if key not in sd:
                raise ArtifactError(f"{where}: missing key {key} (needed by the {tower} tower as {name}).")
            value = sd[key]
            if name == "pos_embed":
                value = interpolate_pos_embed(value.float(), cfg.vision.grid)
            if name == "position_ids" and value.shape[1] < param.shape[1]:
                raise ArtifactError(f"{where}: {key} has {value.shape[1]} positions, max_position_embeddings says {param.shape[1]}.")
            if name == "position_ids":
                value = value[:, : param.shape[1]]
            if tuple(value.shape) != tuple(param.shape):
                raise ArtifactError(f"{where}: {key} has shape {tuple(value.shape)}, the {tower} tower expects {tuple(param.shape)}.")
            if value.is_floating_point() != param.is_floating_point():
                raise ArtifactError(f"{where}: {key} has dtype {value.dtype}, the {tower} tower expects {param.dtype}.")
            new_state[name] = value.to(param.dtype)
            consumed.append(key)
        # load_state_dict only handles persistent buffers; position_ids is not one.
        position_ids = new_state.pop("position_ids", None)
        module.load_state_dict(new_state, strict=True, assign=True)
        if position_ids is not None:
            module.position_ids = position_ids
        module.eval().requires_grad_(False)

    done = set(consumed)
    ignored: dict[str, list[str]] = {}
    for key in sd:
        if key in done:
            continue
        cat = _categorise(key, layout, cfg.text.fusion_layer) or "unknown"
        ignored.setdefault(cat, []).append(key)
    if strict and ignored.get("unknown"):
        unknown = ignored["unknown"]
        raise ArtifactError(
            f"{where}: {len(unknown)} key(s) of no known ALBEF category, e.g. {', '.join(unknown[:5])}. "
            "This is not an original ALBEF retrieval/pre-training checkpoint (or a newer layout); pass strict=False to skip them."
        )
    report = LoadReport(
        source=where, layout=layout, consumed=consumed, ignored=ignored, config_sources=sources,
        checkpoint_image_res=ckpt_res, image_res=cfg.vision.image_res,
        pos_embed_interpolated=ckpt_res != cfg.vision.image_res, temp=cfg.temp,
    )
    return model, report


def logit_scale(temp: float) -> float:
    """ALBEF's similarity scale: 1/temp, with temp clamped to [0.001, 0.5] as the original's forward does."""
    return 1.0 / min(max(temp, 0.001), 0.5)
