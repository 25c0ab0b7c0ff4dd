"""A tiny custom dual encoder shaped like the seed's text-guided image finder, saved as a user would save it.

* Image tower: an EfficientNet-style conv net (conv stem, MBConv blocks with a
  depthwise conv and squeeze-excite, 1x1 head conv, global average pool) and a
  projection head; it returns *unnormalised* embeddings.
* Text tower: a tiny transformers DistilBERT, [CLS] or mean pooling and a
  projection head; it returns L2-normalised embeddings. One tower of each kind
  exercises both sides of the exporter's "normalise in the graph" rule.
* Tokenizer: an uncased WordPiece ``DistilBertTokenizer`` over a vocabulary
  built here from :data:`CAPTIONS` (no downloads).

:func:`write_custom_model` saves the weights (``image.pt``, ``text/`` by
``save_pretrained``, ``text_head.pt``), the tokenizer and a settings file;
:func:`write_factories` writes the factory module a user would write.
Only widths are tiny and weights random.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

DIM = 24
TEXT_HIDDEN = 32
MAX_LENGTH = 40
IMAGE_SIZE = 64
# ImageNet statistics, as an EfficientNet trained with torchvision uses.
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CAPTIONS = [
    "a red circle on a white background", "two blue circles", "a green triangle", "a yellow star",
    "a stop sign at the corner", "a sunset over the sea", "a black square", "a purple square",
    "the word hello written in black", "the word cat", "a checkerboard pattern of black and white squares",
    "two dogs playing in the snow", "a man rides a bicycle through the city at night", "a cat sleeps on a sofa",
]
SETTINGS: dict[str, Any] = {
    "image": {"size": 72, "resize": "shortest_edge", "crop_size": IMAGE_SIZE, "interpolation": "bilinear",
              "mean": MEAN, "std": STD, "reference": "pil"},
    "text": {"max_length": MAX_LENGTH, "cleaning": "none", "lower_case": False, "token_type_ids": False},
    "logit_scale": 14.285714,
}


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, squeeze-excite, 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = (nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
                       if expand != 1 else nn.Identity())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.SiLU())
        self.se = SqueezeExcite(hidden, max(1, cin // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.skip else y


class ProjectionHead(nn.Module):
    """The seed's head: linear projection, GELU, linear, dropout, residual, LayerNorm."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, dim)
        self.fc = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.projection(x)
        return self.norm(self.dropout(self.fc(nn.functional.gelu(p))) + p)


class TinyEfficientNet(nn.Module):
    """pixel_values (n, 3, S, S) -> unnormalised embedding (n, DIM)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(8, 8, 1, 1), MBConv(8, 16, 4, 2), MBConv(16, 16, 4, 1))
        self.head = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.SiLU())
        self.projection = ProjectionHead(48, DIM)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(pixel_values)))
        return self.projection(x.mean(dim=(2, 3)))


class DistilBertTower(nn.Module):
    """input_ids, attention_mask (n, L) -> L2-normalised embedding (n, DIM)."""

    def __init__(self, bert: nn.Module, pooling: str = "cls") -> None:
        super().__init__()
        self.bert = bert
        self.pooling = pooling
        self.projection = ProjectionHead(TEXT_HIDDEN, DIM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(self.projection(pooled), dim=-1)


def _perturb(model: nn.Module, seed: int) -> None:
    """Random init leaves norms at identity, biases at 0 and BN statistics at (0, 1): move them so they matter."""
    g = torch.Generator().manual_seed(seed)
    norms = (nn.BatchNorm2d, nn.LayerNorm)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if name == "bias" or isinstance(module, norms):
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(1.0 + 0.2 * torch.rand(module.running_var.shape, generator=g))


def vocabulary() -> list[str]:
    """Specials, every character (alone and as ##continuation), then the captions' words (uncased)."""
    text = " ".join(CAPTIONS).lower()
    chars = sorted({c for c in text if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'"))
    words = Counter(re.findall(r"\w+", text))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    return vocab + [w for w, _ in words.most_common() if len(w) > 1 and w not in vocab]


def write_tokenizer(out: Path) -> Path:
    """An uncased WordPiece DistilBertTokenizer saved by transformers (tokenizer.json included)."""
    from transformers import DistilBertTokenizer

    tok = DistilBertTokenizer(vocab={t: i for i, t in enumerate(vocabulary())}, do_lower_case=True,
                              model_max_length=MAX_LENGTH)
    tok.save_pretrained(str(out))
    return out


def load_image_tower(root: Path) -> Any:
    """The image tower with the weights saved under ``root`` (what a user's factory does)."""
    model = TinyEfficientNet()
    model.load_state_dict(torch.load(Path(root) / "image.pt", weights_only=True))
    return model.eval()


def load_text_tower(root: Path, pooling: str = "cls") -> Any:
    """The text tower: DistilBERT from ``root/text`` (save_pretrained) and the head from ``text_head.pt``."""
    from transformers import DistilBertModel

    bert = DistilBertModel.from_pretrained(str(Path(root) / "text"), attn_implementation="eager")
    model = DistilBertTower(bert, pooling)
    model.projection.load_state_dict(torch.load(Path(root) / "text_head.pt", weights_only=True))
    return model.eval()


def write_custom_model(root: Path, *, seed: int = 0) -> Path:
    """Weights, tokenizer (``root/tokenizer``) and settings file (``root/preprocess.json``) of the tiny model."""
    from transformers import DistilBertConfig, DistilBertModel

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    image = TinyEfficientNet().eval()
    _perturb(image, seed)
    torch.save(image.state_dict(), root / "image.pt")
    write_tokenizer(root / "tokenizer")
    cfg = DistilBertConfig(vocab_size=len(vocabulary()), dim=TEXT_HIDDEN, hidden_dim=64, n_layers=2, n_heads=4,
                           max_position_embeddings=MAX_LENGTH, pad_token_id=0)
    bert = DistilBertModel(cfg).eval()
    _perturb(bert, seed + 1)
    bert.save_pretrained(str(root / "text"))
    head = DistilBertTower(bert).projection
    _perturb(head, seed + 2)
    torch.save(head.state_dict(), root / "text_head.pt")
    (root / "preprocess.json").write_text(json.dumps(SETTINGS, indent=2), encoding="utf-8")
    return root


def write_factories(root: Path, path: Path) -> Path:
    """The factory module a user writes: ``image_tower()`` and ``text_tower()`` loading the saved weights."""
    path.write_text(
        "from helpers.custom_models import load_image_tower, load_text_tower\n\n"
        f"ROOT = {str(root)!r}\n\n\n"
        "def image_tower():\n    return load_image_tower(ROOT)\n\n\n"
        "def text_tower():\n    return load_text_tower(ROOT)\n",
        encoding="utf-8")
    return path
