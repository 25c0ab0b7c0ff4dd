"""Zero-shot retrieval evaluation on the Karpathy splits of Flickr30k and COCO.

Reads the Karpathy-split JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``:
``images[]`` with ``filename``, optional ``filepath``, ``split``, ``sentences[].raw``,
``imgid``), embeds the split's images and captions with an encoder, and reports
Recall@1/5/10, mean and median rank in both directions:

* text -> image: for each caption, the rank of its one image among all images;
* image -> text: for each image, the best rank among its captions (the convention of the
  VSE/ALBEF/CLIP evaluation code).

With caption fusion (``fusion=CaptionFusion(...)``, ``crossmodal eval --fuse captions``)
the report also holds text -> image ranked by a fusion of the query's similarity to each
image and to that image's captions (:mod:`crossmodal.fusion`), computed over all images by the
rules search ranks with (:mod:`crossmodal.retrieval_fusion`; for rrf, its rank window).
The captions are either the split's own reference captions, leave-one-out (a query never
sees itself among its image's captions: an upper bound for what generated captions give),
or a captions file (``--fuse-captions FILE``, e.g. a captioning model's output).

Ranks count ties against the model (a ground truth tied with another candidate ranks
below it), so a degenerate encoder that gives every pair the same score gets the worst
rank, never a perfect one. Recalls are percentages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import InputError
from .fusion import RRF_K0, fuse_mode, fuse_weight, rrf_term, weighted
from .inputs import positive_int
from .retrieval_fusion import candidate_depth

DATASETS = ("flickr30k", "coco")
DEFAULT_KS = (1, 5, 10)
# Where the images usually live relative to --root when the JSON has no ``filepath``.
_IMAGE_DIRS = {"flickr30k": ("flickr30k-images", "images", "."), "coco": (".", "images")}


@dataclass(frozen=True)
class KarpathySplit:
    """One split of a Karpathy-format dataset, resolved to files on disk."""

    dataset: str
    split: str
    image_paths: tuple[Path, ...]
    captions: tuple[str, ...]
    text_to_image: NDArray[np.int64]  # caption i describes image text_to_image[i]

    @property
    def image_to_texts(self) -> list[NDArray[np.int64]]:
        """Indices of each image's captions."""
        return _groups(self.text_to_image, len(self.image_paths))


def _groups(text_to_image: NDArray[np.int64], n_images: int) -> list[NDArray[np.int64]]:
    order = np.argsort(text_to_image, kind="stable")
    bounds = np.searchsorted(text_to_image[order], np.arange(n_images + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n_images)]


@dataclass(frozen=True)
class DirectionScores:
    """Recall@K (percent), mean and median rank (1 = first) of one retrieval direction."""

    recall: dict[int, float]
    mean_rank: float
    median_rank: float
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"R@{k}": round(v, 2) for k, v in self.recall.items()}
        out.update(mean_rank=round(self.mean_rank, 2), median_rank=self.median_rank, n_queries=self.n_queries)
        return out


@dataclass(frozen=True)
class RetrievalScores:
    """Both directions of one evaluation."""

    text_to_image: DirectionScores
    image_to_text: DirectionScores
    n_images: int
    n_texts: int
    dataset: str = ""
    split: str = ""
    # text -> image ranked with caption fusion, and how (CaptionFusion.describe()); None without fusion.
    text_to_image_fused: DirectionScores | None = None
    fusion: dict[str, Any] | None = None

    @property
    def rsum(self) -> float:
        """Sum of the six recalls at 1/5/10, the usual single-number summary."""
        return sum(self.text_to_image.recall.values()) + sum(self.image_to_text.recall.values())

    def to_dict(self) -> dict[str, Any]:
        out = {"dataset": self.dataset, "split": self.split, "n_images": self.n_images, "n_texts": self.n_texts,
               "text_to_image": self.text_to_image.to_dict(), "image_to_text": self.image_to_text.to_dict(),
               "rsum": round(self.rsum, 2)}
        if self.text_to_image_fused is not None:
            out["text_to_image_fused"] = self.text_to_image_fused.to_dict()
            out["fusion"] = self.fusion
        return out

    def format_table(self) -> str:
        ks = sorted(self.text_to_image.recall)
        head = "direction       " + "".join(f"{'R@' + str(k):>8}" for k in ks) + f"{'meanR':>9}{'medR':>7}"
        rows = [head]
        directions = [("text -> image", self.text_to_image), ("image -> text", self.image_to_text)]
        if self.text_to_image_fused is not None:
            directions.insert(1, ("  fused", self.text_to_image_fused))
        for name, d in directions:
            rows.append(f"{name:<16}" + "".join(f"{d.recall[k]:>8.2f}" for k in ks)
                        + f"{d.mean_rank:>9.2f}{d.median_rank:>7.1f}")
        rows.append(f"{self.dataset} {self.split}: {self.n_images} images, {self.n_texts} captions, "
                    f"rsum {self.rsum:.2f}")
        if self.fusion is not None:
            f = self.fusion
            how = (f"rrf (k0 {f['k0']}, ranks within the top {f['window']})" if f["mode"] == "rrf"
                   else f"weighted, caption weight {f['weight']}")
            rows.append(f"fused: text -> image by image and caption similarity, {how}; captions: {f['captions']}")
        return "\n".join(rows)


# --------------------------------------------------------------------------- ranks


def _ranks_single(sim: NDArray[np.float32], gt: NDArray[np.int64], chunk: int = 1024) -> NDArray[np.int64]:
    """0-based rank of column ``gt[i]`` in row ``i`` of ``sim``, ties counted against."""
    ranks = np.empty(len(gt), dtype=np.int64)
    for s in range(0, len(gt), chunk):
        block = sim[s:s + chunk]
        g = block[np.arange(len(block)), gt[s:s + chunk]][:, None]
        ranks[s:s + chunk] = (block >= g).sum(axis=1) - 1
    return ranks


def ranks_text_to_image(sim_t2i: NDArray[np.float32], text_to_image: NDArray[np.int64]) -> NDArray[np.int64]:
    """Rank of each caption's image; ``sim_t2i`` has shape (n_texts, n_images)."""
    return _ranks_single(sim_t2i, np.asarray(text_to_image, dtype=np.int64))


def ranks_image_to_text(sim_i2t: NDArray[np.float32], image_to_texts: Sequence[NDArray[np.int64]]) -> NDArray[np.int64]:
    """Best rank among each image's captions; ``sim_i2t`` has shape (n_images, n_texts)."""
    ranks = np.empty(len(image_to_texts), dtype=np.int64)
    for i, gts in enumerate(image_to_texts):
        if len(gts) == 0:
            raise InputError(f"image #{i} has no caption; every evaluated image needs at least one.")
        row = sim_i2t[i]
        # For the best-placed caption no other ground truth sits above it, so counting every
        # candidate scoring >= it (minus itself) is its position in the sorted list.
        ranks[i] = min(int((row >= row[j]).sum()) - 1 for j in gts)
    return ranks


def scores_from_ranks(ranks: NDArray[np.int64], ks: Sequence[int] = DEFAULT_KS) -> DirectionScores:
    """Recall@K in percent and 1-based mean/median rank from 0-based ranks."""
    r = np.asarray(ranks)
    if r.size == 0:
        raise InputError("no queries to evaluate.")
    ks = [positive_int("each K of ks", k) for k in ks]
    return DirectionScores(recall={k: float(100.0 * (r < k).mean()) for k in ks},
                           mean_rank=float(r.mean() + 1), median_rank=float(np.median(r) + 1), n_queries=int(r.size))


def _min_ranks(scores: NDArray[np.floating]) -> NDArray[np.int64]:
    """1-based rank of every entry within its row, best first; equal scores share the best rank of the tie."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(scores.shape[1])[None, :], 0), axis=1)
    ranks = np.empty_like(first)
    np.put_along_axis(ranks, order, first + 1, axis=1)
    return ranks


@dataclass(frozen=True)
class CaptionFusion:
    """How :func:`evaluate` adds a caption-fused text -> image ranking (see the module docstring).

    ``mode``: ``'weighted'`` ((1 - weight) * image + weight * best caption cosine; an image
    without a caption keeps its image cosine) or ``'rrf'`` (reciprocal-rank fusion of the
    image ranking and the best-caption ranking, k0 = 60, a rank counted within the top
    ``max(4K, 50)`` of its ranking for the largest K reported, the window ``crossmodal
    search -k K`` ranks with). ``captions``: image file name ->
    its captions (e.g. :func:`crossmodal.ingest.read_captions` of a captioner's output);
    None: the split's reference captions, leave-one-out. ``source`` names them in the report.
    """

    mode: str = "weighted"
    weight: float | None = None
    captions: Mapping[str, Sequence[str]] | None = None
    source: str = "reference captions, leave-one-out"

    def __post_init__(self) -> None:
        fuse_mode(self.mode)
        object.__setattr__(self, "weight", fuse_weight(self.weight))

    def describe(self) -> dict[str, Any]:
        """What the report prints about the fusion."""
        out: dict[str, Any] = {"mode": self.mode, "captions": self.source}
        out.update({"k0": RRF_K0} if self.mode == "rrf" else {"weight": self.weight})
        return out


def ranks_text_to_image_fused(text_emb: NDArray[np.float32], image_emb: NDArray[np.float32],
                              caption_emb: NDArray[np.float32], caption_owner: NDArray[np.int64],
                              text_to_image: NDArray[np.int64], fusion: CaptionFusion, *,
                              leave_one_out: bool, window: int | None = None, chunk: int = 256) -> NDArray[np.int64]:
    """0-based rank of each query's image under caption fusion, over all images.

    ``caption_emb[j]`` is a caption of image ``caption_owner[j]``; ``leave_one_out``: caption
    ``i`` *is* query ``i`` (the reference captions) and is hidden from query ``i``.
    ``window`` (rrf): a rank term counts only within the top ``window`` of its ranking, as
    :mod:`crossmodal.retrieval_fusion` ranks a search of ``k`` hits with ``window = max(4k, 50)``;
    None: every rank counts.
    """
    n_images = len(image_emb)
    order = np.argsort(caption_owner, kind="stable")
    owners = caption_owner[order]
    captioned, starts = np.unique(owners, return_index=True)
    ranks = np.empty(len(text_emb), dtype=np.int64)
    for s in range(0, len(text_emb), chunk):
        q = text_emb[s:s + chunk]
        sim_image = q @ image_emb.T
        sim_caption = q @ caption_emb.T
        if leave_one_out:
            rows = np.arange(len(q))
            sim_caption[rows, s + rows] = -np.inf
        best = np.full((len(q), n_images), -np.inf, dtype=np.float32)
        if len(order):
            best[:, captioned] = np.maximum.reduceat(sim_caption[:, order], starts, axis=1)
        has_caption = np.isfinite(best)
        if fusion.mode == "weighted":
            # The rule of crossmodal.fusion.weighted_fusion: no caption -> the image cosine alone.
            fused = weighted(sim_image, np.where(has_caption, best, sim_image), float(fusion.weight or 0.0))
        else:
            rank_image, rank_caption = _min_ranks(sim_image), _min_ranks(best)
            if window is not None:
                has_caption &= rank_caption <= window
            fused = (np.where(rank_image <= (window or n_images), rrf_term(rank_image), 0.0)
                     + np.where(has_caption, rrf_term(rank_caption), 0.0))
        ranks[s:s + chunk] = _ranks_single(fused, text_to_image[s:s + chunk])
    return ranks


def evaluate_embeddings(image_emb: NDArray[np.float32], text_emb: NDArray[np.float32],
                        text_to_image: Sequence[int] | NDArray[np.int64], *, ks: Sequence[int] = DEFAULT_KS,
                        dataset: str = "", split: str = "", fusion: CaptionFusion | None = None,
                        caption_emb: NDArray[np.float32] | None = None,
                        caption_owner: Sequence[int] | NDArray[np.int64] | None = None) -> RetrievalScores:
    """Scores from L2-normalised embeddings; ``text_to_image[i]`` is the image of caption ``i``.

    ``fusion`` adds the caption-fused text -> image scores; its captions are ``caption_emb``
    (caption ``j`` belongs to image ``caption_owner[j]``) or, when not given, the texts
    themselves, leave-one-out.
    """
    img = np.asarray(image_emb, dtype=np.float32)
    txt = np.asarray(text_emb, dtype=np.float32)
    t2i = np.asarray(text_to_image, dtype=np.int64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise InputError(f"embeddings must be (n, dim) with one dim; got images {img.shape}, texts {txt.shape}.")
    if t2i.shape != (len(txt),) or (t2i.size and (t2i.min() < 0 or t2i.max() >= len(img))):
        raise InputError(f"text_to_image must give an image index in [0, {len(img)}) for each of {len(txt)} texts.")
    sim = txt @ img.T  # (n_texts, n_images)
    groups = _groups(t2i, len(img))
    fused = None
    # rrf counts ranks within the window a search for the largest K uses (crossmodal.retrieval_fusion).
    window = candidate_depth(max(positive_int("each K of ks", k) for k in ks)) if ks else None
    if fusion is not None:
        if caption_emb is None:
            fused = ranks_text_to_image_fused(txt, img, txt, t2i, t2i, fusion, leave_one_out=True, window=window)
        else:
            cap = np.asarray(caption_emb, dtype=np.float32).reshape(-1, img.shape[1])
            owner = np.asarray(caption_owner if caption_owner is not None else [], dtype=np.int64)
            if owner.shape != (len(cap),) or (owner.size and (owner.min() < 0 or owner.max() >= len(img))):
                raise InputError(f"caption_owner must give an image index in [0, {len(img)}) for each of "
                                 f"{len(cap)} captions.")
            fused = ranks_text_to_image_fused(txt, img, cap, owner, t2i, fusion, leave_one_out=False, window=window)
    return RetrievalScores(
        text_to_image=scores_from_ranks(ranks_text_to_image(sim, t2i), ks),
        image_to_text=scores_from_ranks(ranks_image_to_text(np.ascontiguousarray(sim.T), groups), ks),
        n_images=len(img), n_texts=len(txt), dataset=dataset, split=split,
        text_to_image_fused=None if fused is None else scores_from_ranks(fused, ks),
        fusion=None if fusion is None else {**fusion.describe(),
                                            **({"window": window} if fusion.mode == "rrf" else {})})


# --------------------------------------------------------------------------- dataset


def find_karpathy_json(root: Path, dataset: str) -> Path:
    """``dataset_<name>.json`` in ``root`` or the usual sub-folders."""
    name = f"dataset_{dataset}.json"
    for cand in (root / name, root / "karpathy" / name, root / "annotations" / name, root / "data" / name):
        if cand.is_file():
            return cand
    raise InputError(f"{name} not found under {root} (looked in ., karpathy/, annotations/, data/); pass "
                     "--karpathy-json FILE. It is the Karpathy-split file distributed with the dataset splits.")


def load_karpathy(root: str | os.PathLike[str], dataset: str, split: str = "test", *,
                  json_path: str | os.PathLike[str] | None = None, captions_per_image: int | None = None,
                  limit: int | None = None) -> KarpathySplit:
    """The ``split`` of a Karpathy JSON with every image file checked to exist.

    ``captions_per_image`` keeps only the first N captions of each image (some COCO images
    have 6 or 7; most published numbers use all of them). ``limit``: first N images only.
    """
    if dataset not in DATASETS:
        raise InputError(f"--dataset must be one of {DATASETS}, got {dataset!r}.")
    if captions_per_image is not None:
        captions_per_image = positive_int("captions_per_image", captions_per_image)
    if limit is not None:
        limit = positive_int("limit", limit)
    root = Path(root)
    jp = Path(json_path) if json_path else find_karpathy_json(root, dataset)
    try:
        data = json.loads(jp.read_text(encoding="utf-8"))
        entries = [im for im in data["images"] if im["split"] == split]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{jp} is not a Karpathy-split JSON ({exc!r}); expected images[].split/filename/sentences.") from exc
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise InputError(f"{jp} has no images in split {split!r}.")
    paths: list[Path] = []
    captions: list[str] = []
    owner: list[int] = []
    missing: list[str] = []
    for i, im in enumerate(entries):
        try:
            fname = str(im["filename"])
            sents = [str(s["raw"]).strip() for s in im["sentences"]]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{jp}: image #{i} lacks filename or sentences[].raw ({exc!r}).") from exc
        if captions_per_image is not None:
            sents = sents[:captions_per_image]
        path = _resolve_image(root, dataset, im.get("filepath"), fname)
        if path is None:
            missing.append(fname)
        paths.append(path or root / fname)
        captions.extend(sents)
        owner.extend([i] * len(sents))
    if missing:
        raise InputError(f"{len(missing)} of {len(entries)} {split} images are missing under {root} "
                         f"(e.g. {missing[:3]}); download the dataset images or fix --root.")
    return KarpathySplit(dataset=dataset, split=split, image_paths=tuple(paths), captions=tuple(captions),
                         text_to_image=np.asarray(owner, dtype=np.int64))


def _resolve_image(root: Path, dataset: str, filepath: Any, filename: str) -> Path | None:
    dirs = ([str(filepath)] if filepath else []) + list(_IMAGE_DIRS[dataset])
    for d in dirs:
        cand = root / d / filename
        if cand.is_file():
            return cand
    return None


def evaluate(encoder: Any, data: KarpathySplit, *, image_batch_size: int = 32, text_batch_size: int = 256,
             ks: Sequence[int] = DEFAULT_KS, progress: bool = False, stream: IO[str] | None = None,
             fusion: CaptionFusion | None = None) -> RetrievalScores:
    """Embed ``data`` with ``encoder`` (both towers) and score it; ``progress`` draws a bar on ``stream`` (stderr).

    ``fusion`` adds text -> image with caption fusion (:class:`CaptionFusion`); captions of a
    file are matched to the split's images by file name.
    """
    from .progress import progress_bar

    image_batch_size = positive_int("image_batch_size", image_batch_size)
    text_batch_size = positive_int("text_batch_size", text_batch_size)
    ks = [positive_int("each K of ks", k) for k in ks]
    # Chunks of several batches: the bar moves, and the encoder's decode-ahead still has batches to overlap.
    chunk = image_batch_size * 8
    parts = []
    with progress_bar(len(data.image_paths), desc="encoding images", enabled=progress, stream=stream) as bar:
        for s in range(0, len(data.image_paths), chunk):
            paths = [str(p) for p in data.image_paths[s:s + chunk]]
            parts.append(encoder.encode_image(paths, batch_size=image_batch_size))
            bar.update(len(paths))
    img = np.concatenate(parts)
    txt = encoder.encode_text(list(data.captions), batch_size=text_batch_size)
    cap_emb, owner = None, None
    if fusion is not None and fusion.captions is not None:
        texts, owners = [], []
        for i, p in enumerate(data.image_paths):
            for c in fusion.captions.get(p.name, ()):
                texts.append(c)
                owners.append(i)
        if not texts:
            raise InputError(f"none of the {len(data.image_paths)} {data.split} images has a caption in "
                             f"{fusion.source}; its records must name the images by file name.")
        cap_emb = encoder.encode_text(texts, batch_size=text_batch_size)
        owner = np.asarray(owners, dtype=np.int64)
    return evaluate_embeddings(img, txt, data.text_to_image, ks=ks, dataset=data.dataset, split=data.split,
                               fusion=fusion, caption_emb=cap_emb, caption_owner=owner)


__all__ = ["KarpathySplit", "DirectionScores", "RetrievalScores", "CaptionFusion", "ranks_text_to_image_fused", "load_karpathy", "find_karpathy_json",
           "evaluate", "evaluate_embeddings", "ranks_text_to_image", "ranks_image_to_text", "scores_from_ranks"]
