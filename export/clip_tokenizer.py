"""Build the CLIP text tower's ``tokenizer.json`` from ``vocab.json`` + ``merges.txt``.

The file is rebuilt from the vocabulary and merges rather than copied from the
source checkpoint, because a hub ``tokenizer.json`` (as transformers'
CLIPTokenizerFast writes it) differs from OpenAI's tokenizer in ways that change
ids:

* its normalizer applies NFC *after* our cleaning would have run, which
  re-composes e.g. ``e`` + U+0301 that ``html.unescape`` produced, and its Rust
  ``Lowercase`` knows newer Unicode capitals than Python's ``str.lower``;
* its pre-split regex lacks ``re.IGNORECASE`` (OpenAI splits ``'ſ`` as a
  contraction) and lets U+0345 through (OpenAI's case-insensitive classes drop
  it);
* ``<|startoftext|>`` / ``<|endoftext|>`` typed by a user become special ids.

What we build instead: no normalizer (``crossmodal.text_cleaning.clean_clip``
does all of OpenAI's normalisation, including ``lower``), the CLIP split regex
adjusted to behave like Python's ``regex`` module with ``IGNORECASE``, byte-level
mapping, BPE with the ``</w>`` end-of-word suffix, and ``[sot] ... [eot]``
added by the post-processor, so that truncation keeps ``eot`` last. The special
tokens are not registered as added tokens: a user's text can never inject them
(open_clip's reference tokenizer treats ``<|endoftext|>`` as plain text too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from crossmodal.errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_CONTEXT_LENGTH = 77

# OpenAI's pattern is compiled with regex.IGNORECASE. Checked against every
# code point assigned in Unicode 14 (tests/test_clip_tokenizer.py keeps a sample):
# with Oniguruma, case-insensitivity must be limited to the contractions (it
# makes ``'ſ`` one piece, as in Python) and U+0345 must match no alternative,
# because Python's case-folded ``[\p{L}]`` and ``[^\s\p{L}\p{N}]`` both reject it
# and OpenAI's findall therefore drops it like whitespace.
CLIP_SPLIT_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{0345}]+"""

# Subfolders where a sentence-transformers CLIP directory keeps its tokenizer.
_SUBFOLDER_HINTS = ("0_CLIPModel",)


def read_merges(merges_txt: Path) -> list[tuple[str, str]]:
    """Read a BPE ``merges.txt`` (optional ``#version`` header, one ``a b`` pair per line)."""
    try:
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{merges_txt}: cannot read the BPE merges ({exc}).") from exc
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ArtifactError(f"{merges_txt}:{lineno}: expected two space-separated symbols, got {line!r}.")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ArtifactError(f"{merges_txt}: holds no merges.")
    return merges


def read_vocab(vocab_json: Path) -> dict[str, int]:
    """Read a BPE ``vocab.json`` (token -> id) and check it has CLIP's special tokens."""
    try:
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{vocab_json}: cannot read the vocabulary ({exc}).") from exc
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ArtifactError(f"{vocab_json}: must be a JSON object mapping tokens to integer ids.")
    missing = [t for t in (SOT_TOKEN, EOT_TOKEN) if t not in vocab]
    if missing:
        raise ArtifactError(f"{vocab_json}: missing CLIP special tokens {missing}; is this a CLIP vocabulary?")
    return vocab


def build_clip_tokenizer(vocab_json: Path, merges_txt: Path, max_length: int = CLIP_CONTEXT_LENGTH) -> "Tokenizer":
    """A ``tokenizers.Tokenizer`` that maps *cleaned* text to OpenAI CLIP's ids.

    Feed it the output of ``crossmodal.text_cleaning.clean_clip``. Encoding adds
    ``<|startoftext|>`` and ``<|endoftext|>``; truncation is enabled at
    ``max_length`` (special tokens included), so an over-long text keeps ``eot``
    as its last id. Padding is left to the runtime.
    """
    return _build(read_vocab(vocab_json), read_merges(merges_txt), max_length)


def _build(vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int) -> "Tokenizer":
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if max_length < 3:
        raise ValueError(f"max_length must leave room for sot, one token and eot, got {max_length}")
    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        end_of_word_suffix=END_OF_WORD,
        fuse_unk=False,
        # No unk_token: every byte and byte+</w> is in the vocabulary, so nothing
        # is ever unknown, and an unk of <|endoftext|> (as transformers sets it)
        # could be mistaken for the pooling position.
    )
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        # The split above already isolated words; the byte map only turns UTF-8 bytes into symbols.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}",
        pair=f"{SOT_TOKEN} $A {EOT_TOKEN} $B {EOT_TOKEN}",
        special_tokens=[(SOT_TOKEN, vocab[SOT_TOKEN]), (EOT_TOKEN, vocab[EOT_TOKEN])],
    )
    # Bytes back to text first, then the word ends become spaces (OpenAI's decode).
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " "), decoders.Strip(" ", 0, 1)])
    tok.enable_truncation(max_length=max_length)
    return tok


def find_clip_tokenizer_files(src_dir: Path) -> tuple[Path, Path]:
    """Locate ``vocab.json`` and ``merges.txt`` in a transformers or sentence-transformers CLIP directory.

    transformers keeps them at the top level; sentence-transformers' ``clip-ViT-*``
    directories keep them in the CLIPModel module folder (``0_CLIPModel``, or
    whichever folder ``modules.json`` names).
    """
    src_dir = Path(src_dir)
    candidates = [src_dir]
    candidates += [src_dir / name for name in _SUBFOLDER_HINTS]
    modules = src_dir / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            candidates += [src_dir / str(e["path"]) for e in entries if isinstance(e, dict) and e.get("path")]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken modules.json only means fewer places to look
    if src_dir.is_dir():
        candidates += sorted(p for p in src_dir.iterdir() if p.is_dir())
    for folder in candidates:
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    raise ArtifactError(
        f"{src_dir}: no vocab.json + merges.txt found (looked in the folder itself, 0_CLIPModel/ "
        "and the modules of modules.json). Pass a transformers or sentence-transformers CLIP directory."
    )


def vocab_and_merges_from_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges stored inside an HF ``tokenizer.json`` (nothing else of it is used)."""
    try:
        model = json.loads(Path(path).read_text(encoding="utf-8"))["model"]
        vocab, raw_merges = model["vocab"], model["merges"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a BPE tokenizer.json ({exc!r}).") from exc
    # tokenizers writes merges as "a b" strings (old) or [a, b] pairs (new).
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw_merges]
    if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
        raise ArtifactError(f"{path}: malformed BPE vocab/merges.")
    missing = [t for t in (SOT_TOKEN, EOT_TOKEN) if t not in vocab]
    if missing:
        raise ArtifactError(f"{path}: missing CLIP special tokens {missing}; is this a CLIP tokenizer?")
    return vocab, merges  # type: ignore[return-value]


def clip_tokenizer_from_source(src_dir: Path, max_length: int = CLIP_CONTEXT_LENGTH) -> "Tokenizer":
    """Build the CLIP tokenizer from the vocabulary and merges of a source checkpoint directory.

    Only the vocabulary and merges are taken from the source: from vocab.json +
    merges.txt, or, where a checkpoint ships only a ``tokenizer.json`` (newer
    sentence-transformers saves), from that file's BPE model section. Its
    normalizer/pre-tokenizer are deliberately ignored (see the module docstring
    for what they would get wrong).
    """
    try:
        vocab, merges = find_clip_tokenizer_files(src_dir)
    except ArtifactError:
        tj = Path(src_dir) / "tokenizer.json"
        if not tj.is_file():
            raise
        return _build(*vocab_and_merges_from_tokenizer_json(tj), max_length)
    return build_clip_tokenizer(vocab, merges, max_length=max_length)


def _special_id(tok: "Tokenizer", token: str) -> int:
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise ArtifactError(f"tokenizer has no {token} token; is this a CLIP tokenizer?")
    return int(token_id)


def sot_id(tok: "Tokenizer") -> int:
    """Id of ``<|startoftext|>`` (49406 for OpenAI's vocabulary)."""
    return _special_id(tok, SOT_TOKEN)


def eot_id(tok: "Tokenizer") -> int:
    """Id of ``<|endoftext|>`` (49407 for OpenAI's vocabulary); CLIP pools at this position."""
    return _special_id(tok, EOT_TOKEN)


__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "CLIP_SPLIT_PATTERN",
    "EOT_TOKEN",
    "SOT_TOKEN",
    "build_clip_tokenizer",
    "clip_tokenizer_from_source",
    "eot_id",
    "find_clip_tokenizer_files",
    "read_merges",
    "read_vocab",
    "sot_id",
]
