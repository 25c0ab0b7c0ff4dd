"""ALBEF family exporter: image and text towers plus the ITM re-ranker of an original salesforce checkpoint.

``crossmodal export albef --model ALBEF_4M.pth --config albef_4m --out DIR``
writes three towers into one bundle:

* ``image``: ``pixel_values`` -> ``embedding`` (L2-normalised, embed_dim) and
  ``token_states`` (the ViT's final-LayerNorm tokens, which the re-ranker
  attends to). One graph with two outputs: the token states are a by-product of
  the embedding, so a second graph would run the whole ViT twice. Measured on
  a ViT-B/16 at 256 px (random weights, 2 threads, onnxruntime 1.32, busy
  machine): the two-output graph ran as fast as an embedding-only graph
  (best of 12: 1.05-1.23 s vs 1.12 s), whether one or both outputs are fetched.
* ``text``: ``input_ids``/``attention_mask`` -> ``embedding`` and
  ``token_states`` (the text-mode BERT's last hidden states).
* ``rerank``: ``text_states``/``attention_mask``/``image_states`` of N
  (caption, image) pairs -> ``itm_score`` [N], the match logit that
  ``Retrieval.py`` ranks its top-k candidates by. Either side may have batch 1
  and is broadcast against the other (one image vs k captions, or the reverse).

Text settings reproduce ALBEF's evaluation path: ``pre_caption`` (cleaning
``"albef"``, 30 words), then bert-base-uncased WordPiece with only ``[CLS]``
prepended (ALBEF's tokenizer appends no ``[SEP]``), at most 30 tokens. Images
are resized bicubically (PIL) to a square of ``image_res`` with no crop and
normalised with the CLIP mean/std, as ALBEF's ``test_transform``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from crossmodal.errors import ArtifactError
from crossmodal.manifest import ImagePreprocess, TextSettings

from .albef_checkpoint import LoadReport, card_names, load_albef, logit_scale, read_config_file
from .albef_model import AlbefModel
from .options import DEFAULT_TARGETS, ExportOptions
from .pipeline import TowerSpec, export_bundle, random_pixels

log = logging.getLogger(__name__)

MAX_WORDS = 30
MAX_LENGTH = 30
ALBEF_MEAN = (0.48145466, 0.4578275, 0.40821073)
ALBEF_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_VOCAB = "bert-base-uncased"
# The re-ranker reads the towers' token states, so the pipeline gates them as well as the
# embedding. Hidden states are not unit vectors (LayerNorm outputs of magnitude ~1-10),
# hence a looser fp32 bound than the embedding's 1e-4; the cosine bound is the variant's.
TOKEN_STATES_MAX_ABS = 1e-3
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Fixed captions for parity: a short query, a padded batch (accents, CJK, hyphens), one over the word cap.
PARITY_CAPTIONS = [
    ["a dog"],
    ["A teddybear on a skateboard in Times Square.", "two people riding bicycles down a tree-lined street, past a red Café!",
     "雪中的两只狗", "unbelievably photobombing kittens"],
    [" ".join(["a very long caption about many different things"] * 6)],
]


# ----------------------------------------------------------------------------- tokenizer


def resolve_vocab(vocab: str | Path) -> Path:
    """``vocab.txt`` from a file, a directory holding one, or a hub id (bert-base-uncased)."""
    p = Path(vocab).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "vocab.txt").is_file():
            return p / "vocab.txt"
        raise ArtifactError(f"--vocab {p} is a directory without vocab.txt; pass the bert-base-uncased vocab.txt")
    from .sources import resolve

    source = resolve(str(vocab), allow_patterns=["vocab.txt"])
    if not (source.path / "vocab.txt").is_file():
        raise ArtifactError(f"--vocab {vocab}: the hub snapshot has no vocab.txt")
    return source.path / "vocab.txt"


def build_tokenizer(vocab_file: str | Path, max_length: int = MAX_LENGTH) -> Any:
    """ALBEF's tokenizer as a ``tokenizers.Tokenizer``: bert-base-uncased WordPiece, ``[CLS]`` prepended, no ``[SEP]``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = models.WordPiece.read_file(str(vocab_file))
    missing = [t for t in _BERT_SPECIALS if t not in vocab]
    if missing:
        raise ArtifactError(f"{vocab_file}: not a BERT vocabulary (no {', '.join(missing)})")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    # ALBEF's BasicTokenizer: do_lower_case, accents stripped with the lower-casing, CJK split, control chars dropped.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(_BERT_SPECIALS))
    # Truncation counts [CLS]: 29 wordpieces survive, as with ALBEF's tokenizer(max_length=30, truncation=True).
    tok.enable_truncation(max_length=max_length)
    return tok


def text_settings() -> TextSettings:
    return TextSettings(max_length=MAX_LENGTH, cleaning="albef", pad_id=0, max_words=MAX_WORDS)


def image_preprocess(image_res: int) -> ImagePreprocess:
    return ImagePreprocess(size=image_res, resize="square", crop_size=None, interpolation="bicubic",
                           mean=ALBEF_MEAN, std=ALBEF_STD, reference="pil")


def text_feeds(tokenizer: Any, settings: TextSettings, batches: Sequence[Sequence[str]]) -> list[dict[str, NDArray[np.int64]]]:
    """Tokenise captions exactly as the runtime will (cleaning, truncation, padding to the batch's longest)."""
    from crossmodal.text import TextTokenizer

    tok = TextTokenizer(tokenizer, settings)
    return [tok.encode(list(b)) for b in batches]


# ----------------------------------------------------------------------------- specs


def _rerank_feeds(model: AlbefModel, image_feeds: list[dict[str, NDArray]], txt_feeds: list[dict[str, NDArray]]) -> list[dict[str, NDArray]]:
    """Pairs built from the towers' own outputs, so the re-ranker is checked on realistic token states."""
    feeds = []
    with torch.inference_mode():
        images = torch.from_numpy(np.concatenate([f["pixel_values"] for f in image_feeds]))
        _, image_states = model.image.encode(images)
        for text in txt_feeds:
            ids, mask = torch.from_numpy(text["input_ids"]), torch.from_numpy(text["attention_mask"])
            _, text_states = model.text.encode(ids, mask)
            n = ids.shape[0]
            pick = torch.arange(n) % image_states.shape[0]
            feeds.append({"text_states": text_states.numpy(), "attention_mask": text["attention_mask"],
                          "image_states": image_states[pick].numpy()})
        # One image against several captions, broadcast inside the graph (the i2t re-ranking shape).
        feeds.append({**feeds[1], "image_states": image_states[:1].numpy()})
    return feeds


def build_specs(model: AlbefModel, tokenizer: Any, *, rerank: bool = True, calib_dir: Path | None = None,
                towers: Sequence[str] = ("image", "text")) -> list[TowerSpec]:
    """TowerSpecs for the image and text towers (two outputs each) and, optionally, the re-ranker."""
    cfg = model.config
    dim = cfg.embed_dim
    model.image.return_tokens = True
    model.text.return_tokens = True
    preprocess = image_preprocess(cfg.vision.image_res)
    if calib_dir is not None:
        from .clip import image_feeds

        image_parity, image_calib = image_feeds(preprocess, calib_dir)
    else:
        image_parity = [{"pixel_values": random_pixels(b, cfg.vision.image_res, 100 + b)} for b in (1, 3)]
        image_calib = image_parity
    settings = text_settings()
    txt_feeds = text_feeds(tokenizer, settings, PARITY_CAPTIONS)
    specs: list[TowerSpec] = []
    if "image" in towers:
        specs.append(TowerSpec(
            tower="image", module=model.image, input_names=("pixel_values",), output_names=("embedding", "token_states"),
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}, "token_states": {0: "batch"}},
            parity_inputs=image_parity, calibration_inputs=image_calib, dim=dim, preprocess=preprocess,
            ort_optimizer={"model_type": "vit", "num_heads": cfg.vision.num_heads, "hidden_size": cfg.vision.width},
            secondary_outputs={"token_states": TOKEN_STATES_MAX_ABS},
            extra={"image_res": cfg.vision.image_res, "patch_size": cfg.vision.patch_size,
                   "token_states_output": "token_states", "num_tokens": cfg.vision.num_tokens,
                   "token_width": cfg.vision.width},
        ))
    if "text" in towers:
        specs.append(TowerSpec(
            tower="text", module=model.text, input_names=("input_ids", "attention_mask"),
            output_names=("embedding", "token_states"),
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "embedding": {0: "batch"}, "token_states": {0: "batch", 1: "sequence"}},
            parity_inputs=txt_feeds, dim=dim, text=settings, tokenizer=tokenizer,
            ort_optimizer={"model_type": "bert", "num_heads": cfg.text.num_attention_heads, "hidden_size": cfg.text.hidden_size},
            secondary_outputs={"token_states": TOKEN_STATES_MAX_ABS},
            extra={"token_states_output": "token_states", "token_width": cfg.text.hidden_size,
                   "special_tokens": "[CLS] prepended, no [SEP]", "pooling": "[CLS] -> text_proj -> L2"},
        ))
    if rerank:
        if model.rerank is None:
            raise ValueError("the model was loaded without its fusion layers (with_rerank=False); cannot export the re-ranker")
        specs.append(TowerSpec(
            tower="rerank", module=model.rerank, input_names=("text_states", "attention_mask", "image_states"),
            output_names=("itm_score",),
            # Either side may have batch 1 and is then broadcast against the other, so the image's
            # cross-attention keys/values are computed once for k captions (measured 2.6x faster
            # than k copies for 16 captions at full size) and the caption's self-attention once for k images.
            dynamic_axes={"text_states": {0: "text_batch", 1: "sequence"}, "attention_mask": {0: "text_batch", 1: "sequence"},
                          "image_states": {0: "image_batch"}, "itm_score": {0: "pairs"}},
            parity_inputs=_rerank_feeds(model, image_parity, txt_feeds), dim=dim,
            ort_optimizer=None,
            extra={
                # What the runtime Reranker needs to feed this graph.
                "score": "ITM logit of 'match' (itm_head(fused [CLS])[:, 1]); higher is better, no softmax",
                "inputs_from": {"text_states": "text tower output token_states",
                                "attention_mask": "text tower input attention_mask",
                                "image_states": "image tower output token_states"},
                "text_width": cfg.text.hidden_size, "image_width": cfg.vision.width,
                "num_image_tokens": cfg.vision.num_tokens,
                "fusion_layers": [cfg.text.fusion_layer, cfg.text.num_hidden_layers],
                "broadcast": "text_batch and image_batch are equal (pair i = caption i with image i), or one of them "
                             "is 1 and is paired with every row of the other; pairs = max(text_batch, image_batch)",
            },
        ))
    return specs


# ----------------------------------------------------------------------------- entry points


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def source_info(model_path: Path, config: str | Path, report: LoadReport, sha256: str) -> dict[str, Any]:
    """What bundle.json and every manifest record about the checkpoint."""
    info: dict[str, Any] = {"model": str(Path(model_path).resolve()), "file": Path(model_path).name, "sha256": sha256,
                            "config": str(config), **report.summary()}
    if str(config) in card_names():
        card = read_config_file(str(config))
        info["card"] = {"name": card.get("config_name"), "url": card.get("checkpoint", {}).get("url")}
    return info


def export(
    model_path: str | Path,
    config: str | Path,
    options: ExportOptions,
    *,
    image_res: int | None = None,
    vocab: str | Path | None = None,
    rerank: bool = True,
) -> Path:
    """Export an original ALBEF ``.pth`` as ``options`` say; returns the bundle path.

    ``config`` is a card name (albef_4m, albef_14m, retrieval_coco,
    retrieval_flickr) or a config file in the original vocabulary;
    ``image_res`` overrides its resolution (position embeddings are then
    interpolated bicubically, as the original fine-tuning does). ``vocab``:
    see :func:`resolve_vocab` (default: :data:`DEFAULT_VOCAB`). Without
    ``options.calib_dir`` the image tower is calibrated on random pixels.
    """
    model_path = Path(model_path)
    tokenizer = build_tokenizer(resolve_vocab(vocab or DEFAULT_VOCAB))
    model, report = load_albef(model_path, config, image_res=image_res, with_rerank=rerank)
    for cat, keys in sorted(report.ignored.items()):
        log.info("ignored %d %s key(s), e.g. %s", len(keys), cat, keys[0])
    sha = _sha256(model_path)
    specs = build_specs(model, tokenizer, rerank=rerank, calib_dir=options.calib_dir)
    dim, scale = model.config.embed_dim, logit_scale(model.config.temp)
    # The specs hold what each tower runs and the pipeline drops each once traced; a live
    # `model` here would keep every weight (momentum encoders included) through the int8 search.
    del model
    return export_bundle(
        options, family="albef", space=options.space or f"albef:{model_path.stem}:{sha[:12]}",
        dim=dim, logit_scale=scale, source=source_info(model_path, config, report, sha), specs=specs,
    )


def export_albef(model_path: str | Path, config: str | Path, out: str | Path,
                 targets: str | Sequence[str] = DEFAULT_TARGETS, image_res: int | None = None, *,
                 vocab: str | Path | None = None, rerank: bool = True, **settings: Any) -> Path:
    """Export an original ALBEF ``.pth`` to a bundle at ``out`` (see :func:`export`); returns the bundle path.

    ``settings`` are the other :class:`~crossmodal.export.options.ExportOptions`
    fields (``name``, ``space``, ``calib_dir``, ``int8_recipe``, ``optimize``, ``thresholds``).
    """
    return export(model_path, config, ExportOptions.create(out, targets, **settings), image_res=image_res,
                  vocab=vocab, rerank=rerank)
