"""One ONNX tower each: the image tower (pixels -> embedding) and the text tower (strings -> embedding).

A tower owns its onnxruntime session and the pre-processing its manifest
describes. Both are thread-safe for concurrent ``encode`` calls
(``InferenceSession.run`` is).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import NDArray

from .decode_pool import cancel, gather, submit_each
from .errors import ArtifactError, ImageInputError, InputError, TextInputError
from .inputs import image_batch, positive_int, text_batch
from .manifest import TowerManifest

if TYPE_CHECKING:  # pragma: no cover
    from .image import ImageSource


class Tower:
    """Shared part: the session, its I/O names and the declared embedding dim."""

    def __init__(self, path: Path, manifest: TowerManifest, session: Any):
        self.path = Path(path)
        self.manifest = manifest
        self.session = session
        self.dim = manifest.dim
        graph_inputs = [i.name for i in session.get_inputs()]
        if sorted(graph_inputs) != sorted(manifest.input_names):
            raise ArtifactError(
                f"{self.path}: graph inputs {graph_inputs} differ from the manifest's {list(manifest.input_names)}; "
                "the folder mixes files of different exports: re-export it"
            )
        self._output = manifest.outputs[0].name

    def run(self, feeds: dict[str, NDArray]) -> NDArray[np.float32]:
        """Run the graph on prepared inputs; returns (n, dim) float32."""
        out = self.session.run([self._output], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every output the manifest declares; the embedding is the first."""
        return tuple(o.name for o in self.manifest.outputs)

    def run_outputs(self, feeds: dict[str, NDArray], names: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        """Run the graph once and fetch the named outputs (e.g. ALBEF's ``token_states`` for the re-ranker)."""
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise ArtifactError(
                f"{self.path}: the graph has no output {missing[0]!r} (outputs: {list(self.output_names)}); "
                "re-export the bundle with an exporter that writes it"
            )
        outs = self.session.run(list(names), feeds)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(names, outs)}


class ImageTower(Tower):
    """Images (paths, bytes, PIL images, uint8 arrays) -> L2-normalised embeddings."""

    def __init__(self, path: Path, manifest: TowerManifest, session: Any, *, workers: int = 2,
                 fast_decode: bool = False):
        super().__init__(path, manifest, session)
        assert manifest.preprocess is not None  # validated by TowerManifest
        self.preprocess_config = manifest.preprocess
        self.workers = positive_int("workers", workers)  # threads of the shared decode pool it uses
        self.fast_decode = fast_decode

    @property
    def input_size(self) -> int:
        return self.preprocess_config.output_size

    def preprocess_one(self, source: "ImageSource", *, index: int | None = None) -> NDArray[np.float32]:
        """Decode and preprocess one image to (3, S, S) float32; ``index`` labels it in errors."""
        from .image import preprocess_one

        name = None if index is None else f"image #{index}"
        return preprocess_one(source, self.preprocess_config, name=name, fast_decode=self.fast_decode)

    def preprocess(self, sources: Sequence["ImageSource"], *, offset: int = 0) -> NDArray[np.float32]:
        """Decode and preprocess a batch in the shared decode pool (PIL releases the GIL).

        ``offset`` is the position of ``sources[0]`` in the caller's list, so an
        error names the image by its position there.
        """
        if len(sources) == 0:
            return np.zeros((0, 3, self.input_size, self.input_size), np.float32)
        if len(sources) == 1 or self.workers == 1:  # nothing to run side by side: no thread hop
            return np.stack([self.preprocess_one(s, index=i) for i, s in enumerate(sources, offset)])
        return self._collect(self._submit(sources, offset))

    def _submit(self, sources: Sequence["ImageSource"], offset: int) -> list[Any]:
        """Start decoding ``sources`` in the decode pool (see :mod:`crossmodal.decode_pool`)."""
        return submit_each(self.workers, lambda job: self.preprocess_one(job[1], index=job[0]),
                           enumerate(sources, offset))

    @staticmethod
    def _collect(futures: list[Any]) -> NDArray[np.float32]:
        return np.stack(gather(futures))

    def pixel_feed(self, pixel_values: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """The graph's feed for already preprocessed pixels of shape (n, 3, S, S), shape-checked."""
        s = self.input_size
        arr = np.asarray(pixel_values)
        if arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            raise InputError(f"pixel_values must have shape (n, 3, {s}, {s}), got {arr.shape}")
        return {self.manifest.inputs[0].name: np.ascontiguousarray(arr, dtype=np.float32)}

    def run_pixels(self, pixel_values: NDArray[np.float32]) -> NDArray[np.float32]:
        """Embed already preprocessed pixels of shape (n, 3, S, S)."""
        return self.run(self.pixel_feed(pixel_values))

    def encode(self, images: Any, batch_size: int = 16) -> NDArray[np.float32]:
        """Embed images (one or a batch, see :mod:`crossmodal.inputs`) -> (n, dim), in batches of ``batch_size``.

        The next batch decodes in the shared decode pool while the model runs on the current one.
        """
        items, _ = image_batch(images)
        batch_size = positive_int("batch_size", batch_size)
        if not items:
            raise ImageInputError("encode_image got an empty list of images; pass at least one image")
        if len(items) <= batch_size:
            return self.run_pixels(self.preprocess(items))
        outs: list[NDArray[np.float32]] = []
        pending = self._submit(items[:batch_size], 0)
        try:
            for start in range(0, len(items), batch_size):
                pixels = self._collect(pending)
                nxt = start + batch_size
                pending = self._submit(items[nxt:nxt + batch_size], nxt)  # [] after the last batch
                outs.append(self.run_pixels(pixels))
        finally:
            cancel(pending)  # a failed batch or model run: stop decoding images nobody will embed
        return np.concatenate(outs)


class TextTower(Tower):
    """Strings -> L2-normalised embeddings, tokenised exactly like the reference model."""

    def __init__(self, path: Path, manifest: TowerManifest, session: Any):
        super().__init__(path, manifest, session)
        from .text import TextTokenizer

        assert manifest.text is not None  # validated by TowerManifest
        self.tokenizer = TextTokenizer.from_file(self.path / manifest.text.tokenizer_file, manifest.text)

    def tokenize(self, texts: Sequence[str]) -> dict[str, NDArray[np.int64]]:
        return self.tokenizer.encode(texts)

    def encode(self, texts: str | Sequence[str], batch_size: int = 64) -> NDArray[np.float32]:
        """Embed texts (a str is one text) -> (n, dim), in batches each padded only to its own longest text.

        Texts are grouped by length first (and put back in order after), so a
        long text does not make every short one in its batch pay for padding.
        """
        texts, _ = text_batch(texts)
        batch_size = positive_int("batch_size", batch_size)
        if not texts:
            raise TextInputError("encode_text got an empty list of texts; pass at least one string")
        if len(texts) <= batch_size:
            return self.run(self.tokenize(texts))
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            out[idx] = self.run(self.tokenize([texts[j] for j in idx]))
        return out
