"""Strings -> ``input_ids`` / ``attention_mask`` for every text tower.

One wrapper serves all families: the family-specific parts live in the
manifest's :class:`~crossmodal.manifest.TextSettings` (cleaning rule, maximum
length, pad id) and in the ``tokenizer.json`` written at export time (pre-split,
vocabulary, special tokens). Truncation and padding are configured here from the
settings, never taken from the file, so a tokenizer.json saved with other
defaults cannot change what the graph receives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ArtifactError, TextInputError
from .inputs import text_batch
from .manifest import TextSettings
from .text_cleaning import clean as clean_text

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer


def _as_text_list(texts: Any) -> list[str]:
    """The user's batch by :mod:`crossmodal.inputs`'s rule, refused when empty."""
    items, _ = text_batch(texts)
    if not items:
        raise TextInputError("texts: the batch is empty; pass at least one string (an empty string is fine)")
    return items


class TextTokenizer:
    """Cleans and tokenises batches of text exactly as a tower's reference model does.

    ``encode`` returns int64 arrays of shape ``(n, L)`` where ``L`` is the longest
    sequence of the batch (or ``settings.max_length`` with ``pad_to_max_length``),
    padded on the right with ``settings.pad_id``. Sequences longer than
    ``max_length`` are truncated by the tokenizer, which keeps the special tokens
    its post-processor adds (CLIP's end-of-text stays the last id).
    """

    def __init__(
        self, tokenizer: "Tokenizer", settings: TextSettings, *, source: str = "tokenizer", copy: bool = True
    ) -> None:
        if copy:
            # Truncation and padding are set below; the caller's object (e.g. the
            # exporter's, about to be saved) must not pick them up.
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._settings = settings
        self._source = source
        n_special = tokenizer.num_special_tokens_to_add(False)
        if n_special >= settings.max_length:
            raise ArtifactError(
                f"{source}: max_length {settings.max_length} leaves no room next to the "
                f"{n_special} special tokens. Re-export the bundle."
            )
        if not 0 <= settings.pad_id < tokenizer.get_vocab_size(with_added_tokens=True):
            raise ArtifactError(f"{source}: pad_id {settings.pad_id} is outside the vocabulary. Re-export the bundle.")
        tokenizer.enable_truncation(max_length=settings.max_length, stride=0, strategy="longest_first", direction="right")
        pad_token = tokenizer.id_to_token(settings.pad_id) or "[PAD]"
        tokenizer.enable_padding(
            direction="right",
            pad_id=settings.pad_id,
            pad_type_id=0,
            pad_token=pad_token,
            length=settings.max_length if settings.pad_to_max_length else None,
        )
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path, settings: TextSettings) -> "TextTokenizer":
        """Load ``tokenizer.json`` from ``path``; a missing or unreadable file raises ArtifactError."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path} does not exist. Re-export the bundle with `crossmodal export`.")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise ArtifactError(f"{path} is not a valid tokenizer.json ({exc}). Re-export the bundle.") from exc
        return cls(tokenizer, settings, source=str(path), copy=False)

    @property
    def settings(self) -> TextSettings:
        """The manifest settings this tokenizer was configured from."""
        return self._settings

    @property
    def tokenizer(self) -> "Tokenizer":
        """The underlying ``tokenizers.Tokenizer`` (truncation and padding already configured)."""
        return self._tokenizer

    def clean(self, texts: Sequence[str] | str) -> list[str]:
        """The texts after the manifest's cleaning rule, as the tokenizer will see them."""
        items = _as_text_list(texts)
        rule = self._settings.cleaning
        if rule in ("none", "bert"):
            return items
        return [clean_text(t, rule, self._settings.max_words) for t in items]

    def encode(self, texts: Sequence[str] | str) -> dict[str, NDArray[np.int64]]:
        """Tokenise a batch; returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the graph needs them)."""
        cleaned = self.clean(texts)
        try:
            # encode_batch runs in Rust threads and pads the batch to its longest row.
            encodings = self._tokenizer.encode_batch(cleaned, add_special_tokens=True)
        except Exception as exc:
            raise self._locate_bad_text(cleaned, exc) from exc
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        out = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
        if self._settings.needs_token_type_ids:
            out["token_type_ids"] = np.zeros_like(ids)
        return out

    @staticmethod
    def _locate_bad_text(texts: list[str], exc: Exception) -> TextInputError:
        # The Rust side reports failures without an index; the usual cause is a
        # string Python can hold but UTF-8 cannot (a lone surrogate).
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as bad:
                return TextInputError(f"text #{i} is not valid Unicode ({bad.reason} at position {bad.start}); fix or drop it")
        return TextInputError(f"tokenizer failed on this batch ({exc}); check the texts")


__all__ = ["TextTokenizer"]
