"""Re-ranking with a cross-attention model (ALBEF's image-text matching head).

An embedding search compares one vector per image with one vector per text; a
re-ranker reads both token sequences at once (the text attends to every image
patch) and is much better at telling the right caption from a close one, at a
cost per *pair*. So it re-scores a short list: the top candidates of the
embedding search, as ALBEF's ``Retrieval.py`` does with its ``k_test`` best.

A bundle with a re-ranker has three towers: ``image`` and ``text`` (whose graphs
return ``token_states`` next to the embedding) and ``rerank`` (``text_states``,
``attention_mask``, ``image_states`` -> ``itm_score``, the raw "match" logit;
higher is better). :class:`Reranker` loads all three and never imports torch.

>>> rr = crossmodal.Reranker.load("models/albef-14m")                     # doctest: +SKIP
>>> rr.rerank_text("two dogs in the snow", ["a.jpg", "b.jpg", "c.jpg"])   # doctest: +SKIP
[(2, 1.93), (0, -0.41), (1, -3.2)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .decode_pool import gather, submit_each
from .encoder import Encoder
from .errors import ArtifactError, ImageInputError, InputError, TextInputError
from .inputs import image_batch, positive_int, text_batch
from .manifest import BundleInfo, TowerManifest, read_bundle
from .towers import ImageTower, TextTower
from .variants import DEFAULT_VARIANT

if TYPE_CHECKING:  # pragma: no cover
    from .image import ImageSource

TOKEN_STATES = "token_states"
RERANK_INPUTS = ("text_states", "attention_mask", "image_states")


@dataclass(frozen=True)
class TextStates:
    """Token states of a batch of texts and the attention mask they were computed with.

    The re-ranker's self-attention must mask exactly the padding the text tower
    masked, so the two always travel together.
    """

    states: NDArray[np.float32]  # (n, L, width)
    mask: NDArray[np.int64]  # (n, L), 1 = token, 0 = padding

    def __len__(self) -> int:
        return int(self.states.shape[0])


def _top_k(k: int | None) -> int | None:
    return None if k is None else positive_int("k", k)


def _ranked(scores: NDArray[np.float32], k: int | None) -> list[tuple[int, float]]:
    # Stable: equal scores keep the caller's (embedding) order.
    order = np.argsort(-scores, kind="stable")
    return [(int(i), float(scores[i])) for i in order[: k if k is not None else len(order)]]


class Reranker:
    """Scores (image, text) pairs with a bundle's ``rerank`` graph; see the module docstring.

    Made by :meth:`load`. ``encoder`` is the bundle's image + text
    :class:`~crossmodal.encoder.Encoder` (the same sessions), usable for the
    embedding search that produces the candidates.
    """

    def __init__(self, encoder: Encoder, path: Path, manifest: TowerManifest, session: Any):
        if encoder.image is None or encoder.text is None:
            raise ArtifactError(f"bundle {encoder.bundle.name!r}: the re-ranker needs both an image and a text tower")
        self.encoder = encoder
        self.path = Path(path)
        self.manifest = manifest
        self.session = session
        self._image_output = str(encoder.image.manifest.extra.get("token_states_output", TOKEN_STATES))
        self._text_output = str(encoder.text.manifest.extra.get("token_states_output", TOKEN_STATES))
        self._check_graphs()

    # ------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike[str],
        variant: str = DEFAULT_VARIANT,
        threads: int | None = None,
        *,
        allow_cpu_fallback: bool = False,
        providers: Sequence[str] | None = None,
        spin: bool = True,
    ) -> "Reranker":
        """Load the ``rerank`` graph of a bundle and its image and text towers (one variant for all three).

        Raises :class:`~crossmodal.errors.ArtifactError` when the bundle has no
        re-ranker (CLIP and M-BERT bundles never have one; ALBEF bundles
        exported with ``--no-rerank`` neither) or lacks the variant.
        """
        from .loader import load, open_tower

        root = Path(bundle_dir)
        if not root.is_dir():
            raise ArtifactError(f"bundle directory {root} does not exist; create one with `crossmodal export`")
        bundle = read_bundle(root)
        if "rerank" not in bundle.towers:
            raise ArtifactError(
                f"bundle {root} ({bundle.family}) has no rerank tower (it has: {sorted(bundle.towers)}); "
                "only ALBEF bundles carry one: export it with `crossmodal export albef ...` without --no-rerank"
            )
        missing = [t for t in ("image", "text") if t not in bundle.towers]
        if missing:
            raise ArtifactError(f"bundle {root} has a rerank tower but no {missing[0]} tower; re-export the bundle")
        encoder = load(root, variant=variant, threads=threads, allow_cpu_fallback=allow_cpu_fallback, providers=providers,
                       spin=spin)
        path, manifest, session = open_tower(root, bundle, "rerank", variant, threads=threads,
                                             allow_cpu_fallback=allow_cpu_fallback, providers=providers, spin=spin)
        return cls(encoder, path, manifest, session)

    def _check_graphs(self) -> None:
        """Refuse a bundle whose towers cannot feed this re-ranker (mixed exports, missing outputs)."""
        names = tuple(i.name for i in self.session.get_inputs())
        if sorted(names) != sorted(RERANK_INPUTS) or sorted(self.manifest.input_names) != sorted(RERANK_INPUTS):
            raise ArtifactError(f"{self.path}: re-ranker inputs {list(names)} are not {list(RERANK_INPUTS)}; re-export the bundle")
        self._score_output = self.manifest.outputs[0].name
        shapes = {t.name: t.shape for t in self.manifest.inputs}
        for tower, output, feeds in ((self.image, self._image_output, "image_states"),
                                     (self.text, self._text_output, "text_states")):
            have = {o.name: o.shape for o in tower.manifest.outputs}
            if output not in have:
                raise ArtifactError(
                    f"{tower.path}: the {tower.manifest.tower} tower has no {output!r} output (outputs: {sorted(have)}); "
                    "it was exported without token states: re-export the whole bundle with `crossmodal export albef`"
                )
            # Widths (and the image token count) are fixed numbers in both manifests: they must agree.
            got, want = have[output][-1], shapes[feeds][-1]
            if isinstance(got, int) and isinstance(want, int) and got != want:
                raise ArtifactError(
                    f"{tower.path}: {output} width {got} differs from the re-ranker's {feeds} width {want} "
                    f"({self.path}); the folders come from different exports: re-export the bundle"
                )

    # ------------------------------------------------------------- properties

    @property
    def bundle(self) -> BundleInfo:
        return self.encoder.bundle

    @property
    def variant(self) -> str:
        return self.encoder.variant

    @property
    def image(self) -> ImageTower:
        assert self.encoder.image is not None  # checked in __init__
        return self.encoder.image

    @property
    def text(self) -> TextTower:
        assert self.encoder.text is not None  # checked in __init__
        return self.encoder.text

    # ------------------------------------------------------------- token states

    def pixel_states(self, pixel_values: NDArray[np.float32]) -> NDArray[np.float32]:
        """Image token states (n, tokens, width) of already preprocessed pixels (n, 3, S, S)."""
        feed = self.image.pixel_feed(pixel_values)
        return self.image.run_outputs(feed, [self._image_output])[self._image_output]

    def image_states(self, images: Any, batch_size: int = 16) -> NDArray[np.float32]:
        """Image token states (n, tokens, width) of one image or a batch (paths, bytes, PIL images, uint8 arrays).

        Always 3-D: one image gives ``n = 1``. Preprocessing is the image tower's own
        (the manifest's resize, mean, std).
        """
        items, _ = image_batch(images)
        batch_size = positive_int("batch_size", batch_size)
        if not items:
            raise ImageInputError("got an empty list of images; pass at least one image")
        return np.concatenate([self.pixel_states(self.image.preprocess(items[start:start + batch_size], offset=start))
                               for start in range(0, len(items), batch_size)])

    def preprocess_readable(self, images: Sequence["ImageSource"]) -> tuple[NDArray[np.float32], list[int], dict[int, str]]:
        """Preprocess what can be read: (pixels of the readable images, their indices, {index: error} of the rest).

        Used where one unreadable image must not sink the others (re-ranking index
        hits whose files may have been moved since they were indexed). Decodes in the
        shared decode pool (:mod:`crossmodal.decode_pool`).
        """
        size = self.image.input_size

        def one(source: "ImageSource") -> NDArray[np.float32] | str:
            try:
                return self.image.preprocess_one(source)
            except ImageInputError as exc:
                return str(exc)

        done = gather(submit_each(self.image.workers, one, images))
        ok = [i for i, d in enumerate(done) if not isinstance(d, str)]
        failed = {i: d for i, d in enumerate(done) if isinstance(d, str)}
        pixels = np.stack([done[i] for i in ok]) if ok else np.zeros((0, 3, size, size), np.float32)
        return pixels, ok, failed  # type: ignore[return-value]

    def text_states(self, texts: Sequence[str] | str, batch_size: int = 64) -> TextStates:
        """Text token states and the mask they were computed with, all padded to the batch's longest text.

        A str is one text (``n = 1``). Captions are cleaned and tokenised by the text
        tower (the manifest's rule, e.g. ALBEF's ``pre_caption`` and at most 30 tokens).
        """
        items, _ = text_batch(texts)
        batch_size = positive_int("batch_size", batch_size)
        feeds = self.text.tokenize(items)
        n = len(feeds["input_ids"])
        states = [
            self.text.run_outputs({k: v[i:i + batch_size] for k, v in feeds.items()}, [self._text_output])[self._text_output]
            for i in range(0, n, batch_size)
        ]
        return TextStates(np.concatenate(states), np.ascontiguousarray(feeds["attention_mask"], dtype=np.int64))

    # ------------------------------------------------------------- scoring

    def _run(self, text_states: NDArray[np.float32], mask: NDArray[np.int64], image_states: NDArray[np.float32]) -> NDArray[np.float32]:
        out = self.session.run([self._score_output], {
            "text_states": np.ascontiguousarray(text_states, dtype=np.float32),
            "attention_mask": np.ascontiguousarray(mask, dtype=np.int64),
            "image_states": np.ascontiguousarray(image_states, dtype=np.float32),
        })[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def score_states(self, image_states: NDArray[np.float32], text: TextStates, batch_size: int = 64) -> NDArray[np.float32]:
        """ITM scores (n_images, n_texts) from token states computed by :meth:`image_states` / :meth:`text_states`."""
        batch_size = positive_int("batch_size", batch_size)
        image_states = np.asarray(image_states, dtype=np.float32)
        if image_states.ndim != 3 or text.states.ndim != 3 or text.mask.shape != text.states.shape[:2]:
            raise InputError(f"token states have the wrong rank: image {image_states.shape}, text {text.states.shape}, "
                             f"mask {text.mask.shape}; compute them with image_states() / text_states()")
        n_img, n_txt = len(image_states), len(text)
        out = np.empty((n_img, n_txt), np.float32)
        if n_img == 0 or n_txt == 0:
            return out
        if n_txt == 1:
            # One text against many images: the caption is tiled to each chunk. (The graph could
            # broadcast it, but int8 graphs from a symbolic-shape-inferred source reject that shape,
            # and only the first self-attention would be shared: the cross-attention differs per image.)
            for i in range(0, n_img, batch_size):
                chunk = image_states[i:i + batch_size]
                reps = np.zeros(len(chunk), dtype=np.intp)
                out[i:i + len(chunk), 0] = self._run(text.states[reps], text.mask[reps], chunk)
            return out
        # One image against a chunk of texts: the graph broadcasts the image, so its cross-attention
        # keys/values are computed once per image instead of once per pair.
        for r in range(n_img):
            for j in range(0, n_txt, batch_size):
                out[r, j:j + batch_size] = self._run(text.states[j:j + batch_size], text.mask[j:j + batch_size],
                                                     image_states[r:r + 1])
        return out

    def score(self, images: Any, texts: Sequence[str]) -> NDArray[np.float32]:
        """ITM score of every (image, text) pair: float32 array (n_images, n_texts); higher = better match.

        ``images`` is one image or a batch (:mod:`crossmodal.inputs`); the result is
        always 2-D (one image gives one row). The score is the raw "match" logit of
        ALBEF's ITM head (``itm_logits[:, 1]``), the number ALBEF's retrieval
        evaluation ranks its candidates by.
        """
        if isinstance(texts, str):
            raise TextInputError("texts must be a list of strings; wrap a single text in a list")
        return self.score_states(self.image_states(images), self.text_states(texts))

    def rerank_text(self, query_text: str | Sequence[str], candidate_images: Any,
                    k: int | None = None) -> list[tuple[int, float]] | list[list[tuple[int, float]]]:
        """Text -> image: ``(index into candidate_images, ITM score)``, best first, at most ``k`` (default all).

        One query gives one ranked list; a list of queries gives one list per query.
        ``candidate_images`` is one image or a batch (a list, or a ``(n, H, W, C)`` array).
        """
        queries, single = text_batch(query_text)
        k = _top_k(k)
        candidates, _ = image_batch(candidate_images)
        if not candidates or not queries:
            ranked: list[list[tuple[int, float]]] = [[] for _ in queries]
        else:
            scores = self.score(candidates, queries)  # (n_candidates, n_queries)
            ranked = [_ranked(scores[:, q], k) for q in range(len(queries))]
        return ranked[0] if single else ranked

    def rerank_image(self, image: Any, candidate_texts: Sequence[str],
                     k: int | None = None) -> list[tuple[int, float]] | list[list[tuple[int, float]]]:
        """Image -> text: ``(index into candidate_texts, ITM score)``, best first, at most ``k`` (default all).

        One image gives one ranked list; a batch of images (a list, or a ``(n, H, W, C)``
        array) gives one list per image.
        """
        k = _top_k(k)
        if isinstance(candidate_texts, str):
            raise TextInputError("candidate_texts must be a list of strings; wrap a single text in a list")
        texts, _ = text_batch(candidate_texts)
        images, single = image_batch(image)
        if not texts or not images:
            ranked: list[list[tuple[int, float]]] = [[] for _ in images]
        else:
            scores = self.score(images, texts)  # (n_images, n_texts)
            ranked = [_ranked(row, k) for row in scores]
        return ranked[0] if single else ranked

    def __repr__(self) -> str:
        return f"Reranker(bundle={self.bundle.name!r}, variant={self.variant!r})"


__all__ = ["Reranker", "TextStates"]
