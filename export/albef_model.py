"""ALBEF in torch, reduced to what retrieval needs: two unimodal towers and the ITM re-ranker.

The original model (salesforce/ALBEF) is one large module with momentum copies,
queues and an MLM head; retrieval only ever runs three slices of it:

* the image tower: a pre-norm ViT (timm layout) whose final-LayerNorm ``[CLS]``
  goes through ``vision_proj`` and is L2-normalised;
* the text tower: the first ``fusion_layer`` layers of a post-norm BERT run in
  "text" mode, ``[CLS]`` -> ``text_proj`` -> L2 normalisation;
* the re-ranker: BERT layers ``fusion_layer..num_layers-1`` in "fusion" mode
  (masked self-attention, unmasked cross-attention to the image tokens, FFN)
  followed by ``itm_head``; the score is the "match" logit.

Each slice is its own ``nn.Module`` so that each can be traced into its own
ONNX graph. Weights are filled by :mod:`crossmodal.export.albef_checkpoint`;
nothing here knows the checkpoint's key names. The arithmetic follows the
order of operations of the original (scale after q·kᵀ in BERT, before softmax
in the ViT; additive -10000 mask) so that float32 results agree to rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    """The ViT of ALBEF; the original hard-codes ViT-B/16 and takes only ``image_res`` from its yaml."""

    image_res: int = 256
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 3072
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_res // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Patches plus ``[CLS]``."""
        return self.grid * self.grid + 1


@dataclass(frozen=True)
class TextConfig:
    """The BERT of ALBEF in the vocabulary of ``configs/config_bert.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    fusion_layer: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    encoder_width: int = 768
    pad_token_id: int = 0


@dataclass(frozen=True)
class AlbefConfig:
    """Everything needed to rebuild the three retrieval slices of one ALBEF checkpoint."""

    vision: VisionConfig
    text: TextConfig
    embed_dim: int = 256
    temp: float = 0.07

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _SplitHeads(nn.Module):
    """Reshape helper shared by both attention kinds: [N, T, H*D] <-> [N, H, T, D]."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim)


# ----------------------------------------------------------------------------- image tower


class ViTBlock(nn.Module):
    """Pre-norm transformer block with one fused qkv projection."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        c = cfg.width
        if c % cfg.num_heads:
            raise ValueError(f"vision width {c} is not divisible by num_heads {cfg.num_heads}")
        self.heads = _SplitHeads(cfg.num_heads, c // cfg.num_heads)
        self.scale = (c // cfg.num_heads) ** -0.5
        self.ln1 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(c, 3 * c, bias=cfg.qkv_bias)
        self.attn_out = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(c, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        # qkv rows are laid out [q | k | v], each split into heads.
        qkv = self.qkv(self.ln1(x)).view(n, t, 3, self.heads.num_heads, self.heads.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        ctx = self.heads.merge(attn.softmax(dim=-1) @ v)
        x = x + self.attn_out(ctx)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class AlbefImageTower(nn.Module):
    """Pixels [N, 3, R, R] -> L2-normalised embedding [N, embed_dim] (and optionally the token states)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, *, return_tokens: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.return_tokens = return_tokens
        c = cfg.width
        self.patch = nn.Conv2d(3, c, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, c))
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.depth))
        self.ln_final = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(c, embed_dim)

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Input of block 0 followed by the output of every block (before the final LayerNorm)."""
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised embedding, token states after the final LayerNorm)."""
        tokens = self.ln_final(self.hidden_states(pixel_values)[-1])
        return F.normalize(self.proj(tokens[:, 0]), dim=-1), tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        emb, tokens = self.encode(pixel_values)
        return (emb, tokens) if self.return_tokens else emb


# ----------------------------------------------------------------------------- BERT parts


class BertAttention(nn.Module):
    """Post-norm BERT attention sub-layer; with ``kv_width`` it attends to another sequence."""

    def __init__(self, cfg: TextConfig, kv_width: int | None = None) -> None:
        super().__init__()
        h = cfg.hidden_size
        if h % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {h} is not divisible by num_attention_heads {cfg.num_attention_heads}")
        head_dim = h // cfg.num_attention_heads
        self.heads = _SplitHeads(cfg.num_attention_heads, head_dim)
        self.inv_sqrt_d = math.sqrt(head_dim)
        kv = kv_width or h
        self.q = nn.Linear(h, h)
        self.k = nn.Linear(kv, h)
        self.v = nn.Linear(kv, h)
        self.out = nn.Linear(h, h)
        self.ln = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads.split(self.q(x))
        k = self.heads.split(self.k(context))
        v = self.heads.split(self.v(context))
        scores = (q @ k.transpose(-1, -2)) / self.inv_sqrt_d
        if additive_mask is not None:
            scores = scores + additive_mask
        ctx = self.heads.merge(scores.softmax(dim=-1) @ v)
        return self.ln(self.out(ctx) + x)


class BertLayer(nn.Module):
    """Self-attention, optional cross-attention to image tokens, FFN; all post-norm."""

    def __init__(self, cfg: TextConfig, *, cross: bool) -> None:
        super().__init__()
        self.self_attn = BertAttention(cfg)
        self.cross_attn = BertAttention(cfg, kv_width=cfg.encoder_width) if cross else None
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ln_ffn = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor, image_states: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn(h, h, additive_mask)
        if self.cross_attn is not None:
            if image_states is None:
                raise ValueError("a fusion layer needs image token states")
            # The original passes an all-ones image mask, whose additive form is 0: no mask at all.
            h = self.cross_attn(h, image_states, None)
        return self.ln_ffn(self.fc2(F.gelu(self.fc1(h))) + h)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, L] 1/0 mask -> [N, 1, 1, L] scores offset; ALBEF adds -10000, never -inf."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0


class AlbefTextTower(nn.Module):
    """``input_ids``/``attention_mask`` [N, L] -> L2-normalised embedding (and optionally token states)."""

    def __init__(self, cfg: TextConfig, embed_dim: int, *, return_tokens: bool = False) -> None:
        super().__init__()
        if not 0 < cfg.fusion_layer <= cfg.num_hidden_layers:
            raise ValueError(f"fusion_layer {cfg.fusion_layer} must be in 1..num_hidden_layers ({cfg.num_hidden_layers})")
        self.cfg = cfg
        self.return_tokens = return_tokens
        h = cfg.hidden_size
        self.word_emb = nn.Embedding(cfg.vocab_size, h)
        self.pos_emb = nn.Embedding(cfg.max_position_embeddings, h)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, h)
        self.ln_emb = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        # The checkpoint stores this buffer and the original indexes pos_emb through it.
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None, :], persistent=False)
        self.layers = nn.ModuleList(BertLayer(cfg, cross=False) for _ in range(cfg.fusion_layer))
        self.proj = nn.Linear(h, embed_dim)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Embedding output followed by the output of each text-mode layer."""
        length = input_ids.shape[1]
        # token_type_ids are never passed by ALBEF: row 0 for every position.
        h = self.word_emb(input_ids) + self.type_emb.weight[0] + self.pos_emb(self.position_ids[:, :length])
        h = self.ln_emb(h)
        mask = additive_mask(attention_mask, h.dtype)
        states = [h]
        for layer in self.layers:
            h = layer(h, mask)
            states.append(h)
        return states

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised embedding, last hidden states)."""
        tokens = self.hidden_states(input_ids, attention_mask)[-1]
        return F.normalize(self.proj(tokens[:, 0]), dim=-1), tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        emb, tokens = self.encode(input_ids, attention_mask)
        return (emb, tokens) if self.return_tokens else emb


class AlbefReranker(nn.Module):
    """(text token states, text mask, image token states) of N pairs -> ITM "match" logit [N]."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(BertLayer(cfg, cross=True) for _ in range(cfg.num_hidden_layers - cfg.fusion_layer))
        self.itm_head = nn.Linear(cfg.hidden_size, 2)

    def fused_cls(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Last fusion-layer state at ``[CLS]`` [N, hidden]."""
        h = text_states
        mask = additive_mask(attention_mask, h.dtype)
        for layer in self.layers:
            h = layer(h, mask, image_states)
        return h[:, 0]

    def logits(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Both ITM logits [N, 2]: column 0 "no match", column 1 "match"."""
        return self.itm_head(self.fused_cls(text_states, attention_mask, image_states))

    def forward(self, text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        # Retrieval.py ranks by the raw logit, no softmax.
        return self.logits(text_states, attention_mask, image_states)[:, 1]


@dataclass
class AlbefModel:
    """The three retrieval slices of one checkpoint, already in eval mode."""

    config: AlbefConfig
    image: AlbefImageTower
    text: AlbefTextTower
    rerank: AlbefReranker | None

    @classmethod
    def build(cls, config: AlbefConfig, *, with_rerank: bool = True) -> "AlbefModel":
        """Modules of the right shapes with default-initialised weights (the loader replaces every one).

        Build under ``torch.device("meta")`` to skip the initialisation cost.
        """
        model = cls(
            config=config,
            image=AlbefImageTower(config.vision, config.embed_dim),
            text=AlbefTextTower(config.text, config.embed_dim),
            rerank=AlbefReranker(config.text) if with_rerank else None,
        )
        for m in (model.image, model.text, model.rerank):
            if m is not None:
                m.eval().requires_grad_(False)
        return model
