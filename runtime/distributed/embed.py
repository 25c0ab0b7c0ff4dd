"""Embedding a Ray Dataset: one actor per worker loads the bundle once and embeds batch after batch.

:func:`embed_dataset` maps a dataset of image paths, image bytes or texts to rows of
``key``, ``sha256``, ``vector`` and ``error`` (the input's other columns pass through).
A bad item never fails the job: its row carries the reason in ``error`` and a null
``vector``, exactly the files ``crossmodal index build`` skips and reports. Keys are the
index's content keys (:func:`crossmodal.index.content_key` of the file bytes,
:func:`~crossmodal.index.text_key` of a text), so a vector embedded here lands on the same
key as the one ``crossmodal index build`` would give the same file.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import CrossmodalError, InputError
from ..inputs import positive_int
from ..variants import DEFAULT_VARIANT, get_variant
from .extras import import_pyarrow, import_ray

MODALITIES = ("image", "text")
# Columns embed_dataset writes; an input column of the same name is replaced.
RESULT_COLUMNS = ("key", "sha256", "vector", "error")
IMAGE_BYTES = "bytes"  # the column ray.data.read_binary_files produces
IMAGE_PATH = "path"
TEXT = "text"
# Optional in a text dataset: the sha256 of the image a caption describes (keys it as a caption item).
OF_IMAGE = "image_sha256"


# The model runs on a Ray batch of images in this many sub-batches (but at least MIN_SUB_BATCH
# images each), so that the first sub-batch's decoding is the only decoding not overlapped
# with a model call. ViT-B/32 cpu-int8 embeds as many images/s in batches of 8 as of 32 here.
SUB_BATCHES = 4
MIN_SUB_BATCH = 8


def sub_batch_size(n: int) -> int:
    """Images per model call for a Ray batch of ``n`` images (see ``SUB_BATCHES``)."""
    return max(MIN_SUB_BATCH, -(-n // SUB_BATCHES))


def vector_type(dim: int) -> Any:
    """The Arrow type of a ``vector`` column: a fixed-size list of ``dim`` float32."""
    pa = import_pyarrow()
    return pa.list_(pa.float32(), dim)


def vector_column(vectors: NDArray[np.float32], valid: NDArray[np.bool_]) -> Any:
    """``(n, dim)`` float32 as a fixed-size-list array; rows where ``valid`` is False are null."""
    pa = import_pyarrow()
    n, dim = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    # A validity bitmap built by hand: FixedSizeListArray.from_arrays has no mask argument
    # in every pyarrow the extra allows.
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    return pa.Array.from_buffers(vector_type(dim), n, [bitmap], null_count=int(n - valid.sum()), children=[values])


def _read(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    with open(os.fspath(item), "rb") as f:
        return f.read()


class _Prepared:
    __slots__ = ("sha256", "pixels", "error")

    def __init__(self, sha256: str | None = None, pixels: NDArray[np.float32] | None = None,
                 error: str | None = None) -> None:
        self.sha256, self.pixels, self.error = sha256, pixels, error


class BatchEmbedder:
    """The callable class :func:`embed_dataset` hands to ``map_batches``: Ray builds one per actor.

    ``__init__`` loads the bundle (once per actor); ``__call__`` embeds one pyarrow batch.
    """

    def __init__(self, bundle: str, variant: str, modality: str, threads: int) -> None:
        from .. import loader

        self.encoder = loader.load(bundle, variant=variant, modality=modality, threads=threads)
        self.modality = modality
        self.workers = threads  # decode threads of the shared pool, one per CPU the actor holds
        self.dim = int(self.encoder.dim)

    def __call__(self, batch: Any) -> Any:
        n = batch.num_rows
        vectors = np.zeros((n, self.dim), np.float32)
        keys: list[int | None] = [None] * n
        shas: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        if self.modality == "image":
            self._images(batch, vectors, shas, errors)
        else:
            self._texts(batch, vectors, shas, errors)
        from ..index.format import key_from_sha256

        for i, sha in enumerate(shas):
            if sha is not None:
                keys[i] = key_from_sha256(sha)
        return with_results(batch, keys, shas, vectors, errors)

    def _images(self, batch: Any, vectors: NDArray[np.float32], shas: list[str | None],
                errors: list[str | None]) -> None:
        from ..decode_pool import gather_in_batches, submit_each

        names = batch.column_names
        if IMAGE_BYTES in names:
            items = batch.column(IMAGE_BYTES).to_pylist()
        elif IMAGE_PATH in names:
            items = batch.column(IMAGE_PATH).to_pylist()
        else:
            raise InputError(f"an image dataset needs a {IMAGE_BYTES!r} or {IMAGE_PATH!r} column; it has {names}. "
                             "Read files with ray.data.read_binary_files(..., include_paths=True).")
        # Every item is submitted at once; the model runs on each sub-batch as soon as its items
        # are decoded, while the pool decodes the rest (as `index build` decodes ahead).
        futures: list[Future[_Prepared]] = submit_each(self.workers, self._prepare, items)
        size = sub_batch_size(len(items))
        # _prepare never raises: a bad item is an error row.
        for start, prepared in zip(range(0, len(items), size), gather_in_batches(futures, size)):
            ok = []
            for i, p in enumerate(prepared, start):
                shas[i], errors[i] = p.sha256, p.error
                if p.error is None:
                    ok.append(i)
            if ok:
                vectors[ok] = self.encoder.image.run_pixels(np.stack([prepared[i - start].pixels for i in ok]))

    def _prepare(self, item: Any) -> _Prepared:
        from ..index.format import content_key

        if item is None:
            return _Prepared(error="no image (null value)")
        try:
            data = _read(item)
        except OSError as exc:
            return _Prepared(error=f"unreadable ({exc.strerror or exc})")
        if not data:
            return _Prepared(error="empty file")
        sha = content_key(data)[1]
        try:
            return _Prepared(sha, self.encoder.image.preprocess_one(data))
        except CrossmodalError as exc:
            return _Prepared(sha, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not fail the job
            return _Prepared(sha, error=f"decoder failed: {type(exc).__name__}: {exc}")

    def _texts(self, batch: Any, vectors: NDArray[np.float32], shas: list[str | None],
               errors: list[str | None]) -> None:
        from ..index.format import caption_key, text_key

        if TEXT not in batch.column_names:
            raise InputError(f"a text dataset needs a {TEXT!r} column; it has {batch.column_names}.")
        texts = batch.column(TEXT).to_pylist()
        images = batch.column(OF_IMAGE).to_pylist() if OF_IMAGE in batch.column_names else [None] * len(texts)
        ok = []
        for i, (t, image) in enumerate(zip(texts, images)):
            if isinstance(t, str):
                shas[i] = (caption_key(image, t) if image else text_key(t))[1]
                ok.append(i)
            else:
                errors[i] = f"text is not a string ({type(t).__name__})"
        if ok:
            vectors[ok] = self.encoder.text.encode([texts[i] for i in ok])


def with_results(batch: Any, keys: Sequence[int | None], shas: Sequence[str | None],
                 vectors: NDArray[np.float32], errors: Sequence[str | None]) -> Any:
    """``batch`` without its image bytes, with the four result columns appended."""
    pa = import_pyarrow()
    drop = [c for c in (IMAGE_BYTES, *RESULT_COLUMNS) if c in batch.column_names]
    out = batch.drop(drop) if drop else batch
    valid = np.array([e is None for e in errors], dtype=bool)
    out = out.append_column("key", pa.array(keys, type=pa.int64()))
    out = out.append_column("sha256", pa.array(shas, type=pa.string()))
    out = out.append_column("vector", vector_column(vectors, valid))
    return out.append_column("error", pa.array(errors, type=pa.string()))


def check_bundle(bundle: str | os.PathLike[str], variant: str, modality: str) -> Any:
    """The bundle's :class:`~crossmodal.manifest.BundleInfo`, checked before any actor starts.

    An actor that fails to load would fail the whole job with a remote traceback; the
    same mistakes are caught here with the runtime's own messages.
    """
    from ..errors import ArtifactError
    from ..manifest import available_variants, read_bundle

    if modality not in MODALITIES:
        raise InputError(f"modality={modality!r} is not supported; use one of {list(MODALITIES)}.")
    get_variant(variant)
    info = read_bundle(Path(bundle))
    if modality not in info.towers:
        raise ArtifactError(f"bundle {bundle} has no {modality} tower (it has: {sorted(info.towers)}).")
    have = available_variants(Path(bundle), info.towers[modality])
    if variant not in have:
        raise ArtifactError(f"bundle {bundle} has no {variant} variant of its {modality} tower (it has: {have}); "
                            f"export it with `crossmodal export ... --targets {variant}`.")
    return info


def embed_dataset(ds: Any, bundle: str | os.PathLike[str], *, variant: str = DEFAULT_VARIANT,
                  modality: str = "image", batch_size: int = 32, concurrency: int = 1,
                  num_cpus: float = 1, num_gpus: float = 0, threads: int | None = None) -> Any:
    """Embed a Ray Dataset lazily: returns a new dataset with ``key``, ``sha256``, ``vector``, ``error``.

    ``ds``: for ``modality="image"`` a ``bytes`` column (file contents, e.g. from
    ``ray.data.read_binary_files(..., include_paths=True)``) or else a ``path`` column
    (files every worker can read); for ``"text"`` a ``text`` column, and optionally
    ``image_sha256``, the content digest of the image a text captions (its key is then
    the caption key ``index build --captions`` gives it). Other columns
    (``path``, ``caption``, ...) pass through; image bytes are dropped from the output.

    ``bundle``: a bundle directory at the same path on every node. ``concurrency`` actors
    each load it once (``variant``; ``gpu-fp16`` with ``num_gpus=1`` on a GPU cluster) and
    embed ``batch_size`` rows per call, holding ``num_cpus`` CPUs and ``threads``
    onnxruntime threads each (default: ``num_cpus``, at least 1). An image batch is decoded
    in ``threads`` threads and embedded in model calls of :func:`sub_batch_size` images (a
    quarter of the batch, at least 8), each as soon as its images are decoded, so decoding
    overlaps the model. cpu-int8 quantises activations per model call: its vectors differ
    from the library's by ~1e-4 in cosine unless it embeds the same images in one call.

    Leave CPUs for the tasks that produce ``ds`` (e.g. ``read_binary_files``): actors that
    hold every CPU of the cluster starve them and the dataset hangs (Ray issue 44687). A
    dataset already in memory (``from_items``, ``from_arrow``) has no such tasks.

    ``vector`` is a fixed-size list of float32 (L2-normalised, the bundle's dim), null
    where ``error`` says why the item could not be embedded; ``key`` is the index key of
    the content (null when the file could not be read).
    """
    ray = import_ray()
    batch_size = positive_int("batch_size", batch_size)
    concurrency = positive_int("concurrency", concurrency)
    threads = positive_int("threads", threads if threads is not None else max(1, int(num_cpus)))
    if not (num_cpus > 0 and num_gpus >= 0):
        raise InputError(f"num_cpus must be > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}.")
    check_bundle(bundle, variant, modality)
    return ds.map_batches(
        BatchEmbedder,
        fn_constructor_kwargs={"bundle": os.path.abspath(bundle), "variant": variant, "modality": modality,
                               "threads": threads},
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus or None, zero_copy_batch=True,
    )


__all__ = ["embed_dataset", "BatchEmbedder", "check_bundle", "sub_batch_size", "vector_type", "vector_column",
           "with_results", "MODALITIES", "RESULT_COLUMNS"]
