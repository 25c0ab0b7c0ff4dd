"""A small Triton client: tokenise / preprocess locally from the bundle, embed on a Triton server.

Needs the ``triton`` extra (``pip install 'crossmodal[triton]'``, i.e.
``tritonclient[http]``). The server holds the repository written by
``crossmodal export triton``; this client reads the *bundle* for the
tokenizer, text rules and image preprocessing, so the server side stays pure
graph execution and both sides agree by construction.

>>> enc = TritonEncoder("models/clip-vit-b-32", url="localhost:8000")  # doctest: +SKIP
>>> enc.encode_text(["two dogs in the snow"]).shape                   # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import ArtifactError, ProviderUnavailableError
from .inputs import image_batch, positive_int, text_batch
from .manifest import TowerManifest, available_variants, read_bundle, read_manifest
from .variants import get_variant

if TYPE_CHECKING:  # pragma: no cover
    from .image import ImageSource

_NP_TO_TRITON = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8", "bool": "BOOL"}


def triton_http() -> Any:
    """Import ``tritonclient.http`` or say how to install it."""
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise ProviderUnavailableError("the Triton client needs tritonclient: pip install 'crossmodal[triton]'") from exc
    return httpclient


def model_name(bundle_name: str, tower: str) -> str:
    """Same naming rule as ``crossmodal export triton`` (``<bundle>_<tower>``, unsafe characters -> ``_``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{bundle_name}_{tower}")


def pad_sequences(feeds: Mapping[str, NDArray], multiple: int, max_length: int, pad_ids: Mapping[str, int]) -> dict[str, NDArray]:
    """Right-pad (n, L) token arrays to a multiple of ``multiple`` (capped at ``max_length``).

    Triton's dynamic batcher only merges requests of equal shape; bucketing
    lengths lets requests of similar length share a batch. Padding is masked
    (``attention_mask`` 0), which every exported text tower honours: the
    export-time parity cases include padded batches.
    """
    length = next(iter(feeds.values())).shape[1]
    target = min(max_length, -(-length // multiple) * multiple) if multiple > 1 else length
    if target <= length:
        return dict(feeds)
    out = {}
    for name, arr in feeds.items():
        pad = np.full((arr.shape[0], target - length), pad_ids.get(name, 0), dtype=arr.dtype)
        out[name] = np.concatenate([arr, pad], axis=1)
    return out


class TritonEncoder:
    """Embeds texts and images through a Triton server serving a crossmodal repository.

    Args:
        bundle: the bundle directory the repository was generated from.
        url: Triton's HTTP endpoint, ``host:port``.
        variant: which of the bundle's variants to read settings from (any
            present one: they share tokenizer and preprocessing).
        pad_multiple: bucket size for token lengths (see :func:`pad_sequences`); default 16, but 1
            (no padding) for variants whose output padding changes (``cpu-int8``: its dynamic
            activation quantisation sees pad tokens; the table's ``pad_exact``).
        client: an object with tritonclient's ``infer`` signature (tests, custom transports).
    """

    def __init__(self, bundle: str | os.PathLike[str], url: str = "localhost:8000", *, variant: str | None = None,
                 pad_multiple: int | None = None, client: Any = None, timeout_s: float = 60.0):
        self.bundle_dir = Path(bundle)
        self.bundle = read_bundle(self.bundle_dir)
        if pad_multiple is None:
            pad_multiple = 16 if variant is None or get_variant(variant).pad_exact else 1
        self.pad_multiple = positive_int("pad_multiple", pad_multiple)
        self.manifests: dict[str, TowerManifest] = {}
        for tower in ("image", "text"):
            folder = self.bundle.towers.get(tower)
            if folder is None:
                continue
            have = available_variants(self.bundle_dir, folder)
            chosen = variant if variant in have else (have[0] if have else None)
            if chosen is None:
                raise ArtifactError(f"bundle {self.bundle_dir} has no readable variant of its {tower} tower")
            self.manifests[tower] = read_manifest(self.bundle_dir / folder / chosen)
        self._client = client if client is not None else triton_http().InferenceServerClient(
            url=url, connection_timeout=timeout_s, network_timeout=timeout_s)
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        return self.bundle.dim

    def _manifest(self, tower: str) -> TowerManifest:
        if tower not in self.manifests:
            raise ArtifactError(f"bundle {self.bundle_dir} has no {tower} tower")
        return self.manifests[tower]

    def infer(self, tower: str, feeds: Mapping[str, NDArray]) -> NDArray[np.float32]:
        """Send prepared inputs to ``<bundle>_<tower>`` and return its first output (the embedding)."""
        httpclient = triton_http()
        manifest = self._manifest(tower)
        inputs = []
        for spec in manifest.inputs:
            arr = np.ascontiguousarray(feeds[spec.name], dtype=np.dtype(spec.dtype))
            item = httpclient.InferInput(spec.name, list(arr.shape), _NP_TO_TRITON[spec.dtype])
            item.set_data_from_numpy(arr, binary_data=True)
            inputs.append(item)
        out_name = manifest.outputs[0].name
        outputs = [httpclient.InferRequestedOutput(out_name, binary_data=True)]
        result = self._client.infer(model_name(self.bundle.name, tower), inputs, outputs=outputs)
        return np.asarray(result.as_numpy(out_name), dtype=np.float32)

    def tokenize(self, texts: Sequence[str]) -> dict[str, NDArray]:
        """Token arrays exactly as the local runtime makes them, padded to the length bucket."""
        from .text import TextTokenizer

        manifest = self._manifest("text")
        assert manifest.text is not None
        if self._tokenizer is None:
            folder = self.bundle_dir / self.bundle.towers["text"] / manifest.variant
            self._tokenizer = TextTokenizer.from_file(folder / manifest.text.tokenizer_file, manifest.text)
        feeds = self._tokenizer.encode(list(texts))
        pads = {"input_ids": manifest.text.pad_id}
        return pad_sequences(feeds, self.pad_multiple, manifest.text.max_length, pads)

    def encode_text(self, texts: Sequence[str] | str) -> NDArray[np.float32]:
        """(n, dim) float32 embeddings of ``texts``."""
        items, _ = text_batch(texts)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self.infer("text", self.tokenize(items))

    def encode_image(self, images: "ImageSource | Sequence[ImageSource]") -> NDArray[np.float32]:
        """(n, dim) float32 embeddings of images (paths, bytes, PIL images, uint8 arrays)."""
        from .image import preprocess

        manifest = self._manifest("image")
        assert manifest.preprocess is not None
        items, _ = image_batch(images)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self.infer("image", {manifest.inputs[0].name: preprocess(items, manifest.preprocess)})


__all__ = ["TritonEncoder", "pad_sequences", "model_name", "triton_http"]
