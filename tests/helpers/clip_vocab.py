"""OpenAI CLIP's real BPE vocabulary on disk, and open_clip's tokenizer as the reference.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges OpenAI trained);
``write_clip_vocab`` turns it into the ``vocab.json`` / ``merges.txt`` pair a
transformers CLIP checkpoint carries, with ids assigned exactly as OpenAI's
``SimpleTokenizer`` assigns them. ``import open_clip`` fails without
torchvision, so its ``tokenizer.py`` is loaded by file path.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

OPEN_CLIP_DIR = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "open_clip"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # what OpenAI keeps from the file: vocab 49408 = 512 + merges + 2


def open_clip_dir() -> Path:
    """Folder of the installed open_clip package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return OPEN_CLIP_DIR


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte map: printable bytes map to themselves, the other 68 bytes
    # to code points from 256 up, in byte order. The order defines ids 0..255.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return {b: mapping[b] for b in keep + [b for b in range(256) if b not in keep]}


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges as ``"a b"`` lines) of OpenAI CLIP, 49408 tokens."""
    lines = gzip.open(open_clip_dir() / BPE_FILE).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]  # line 0 is the file's version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [SOT, EOT]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return vocab, merges


def write_clip_vocab(out_dir: Path) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs of openai/clip-vit-base-patch32 into ``out_dir``.

    ``transformers.CLIPTokenizer.from_pretrained(out_dir)`` loads the result.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config: dict[str, Any] = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


@lru_cache(maxsize=1)
def _reference_module() -> ModuleType:
    path = open_clip_dir() / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_reference", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def load_reference_tokenizer() -> Any:
    """open_clip's ``SimpleTokenizer`` (OpenAI's tokenizer, context length 77), loaded by file path."""
    return _reference_module().SimpleTokenizer()


def reference_clean(text: str) -> str:
    """open_clip's default cleaning (``_clean_lower``: ftfy, html unescape x2, whitespace, lower)."""
    return _reference_module()._clean_lower(text)


def reference_sequences(texts: Sequence[str], context_length: int = 77) -> list[list[int]]:
    """Unpadded reference ids per text: ``[sot] + bpe + [eot]``, cut to ``context_length`` with eot last."""
    ref = load_reference_tokenizer()
    out = []
    for text in texts:
        ids = [ref.sot_token_id, *ref.encode(text), ref.eot_token_id]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = ref.eot_token_id
        out.append(ids)
    return out


def reference_ids(texts: Sequence[str] | str, context_length: int = 77) -> NDArray[np.int64]:
    """``open_clip.tokenize(texts, context_length)`` as a numpy array (zero padded to ``context_length``)."""
    return load_reference_tokenizer()(texts, context_length=context_length).numpy().astype(np.int64)


__all__ = [
    "clip_vocab_and_merges",
    "load_reference_tokenizer",
    "open_clip_dir",
    "reference_clean",
    "reference_ids",
    "reference_sequences",
    "write_clip_vocab",
]
