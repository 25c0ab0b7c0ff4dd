"""Text cleaning rules applied before a tower's ``tokenizer.json``.

Each rule reproduces, character for character, what a family's reference
implementation does to a caption before its tokenizer sees it. The rule name is
stored in the manifest (``TextSettings.cleaning``), so the runtime never guesses:

``"clip"``
    OpenAI CLIP: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse
    whitespace, lower-case. The tokenizer.json written by
    ``crossmodal.export.clip_tokenizer`` has no normalizer of its own, so this
    function is the only place CLIP text is changed before the pre-split.
``"albef"``
    ALBEF's ``pre_caption``: lower-case, drop some punctuation, split ``-``/``/``,
    collapse whitespace, keep the first ``max_words`` words.
``"bert"`` and ``"none"``
    No change here; a BERT tokenizer.json lower-cases and strips accents in its
    own normalizer.
"""

from __future__ import annotations

import html
import re

from .errors import InputError
from .inputs import positive_int

CLEANING_RULES = ("none", "clip", "albef", "bert")
ALBEF_DEFAULT_MAX_WORDS = 30

# ALBEF (dataset/utils.py) runs these with the stdlib `re`, whose `\s` is what
# we must match, so the stdlib module is used here too.
_ALBEF_DROP = re.compile(r"[,.'!?\"()*#:;~]")
_ALBEF_SPACES = re.compile(r"\s{2,}")


def clean_clip(text: str) -> str:
    """OpenAI CLIP's caption cleaning (``basic_clean``, ``whitespace_clean``, ``lower``).

    ``ftfy`` repairs mojibake and unusual code points, then HTML entities are
    unescaped twice (so ``&amp;amp;`` becomes ``&``), every run of whitespace
    (as ``str.split`` sees it, e.g. tabs, NBSP) becomes one space and the result
    is lower-cased with Python's ``str.lower``.
    """
    # Imported here so that the ALBEF/BERT paths never pay for ftfy's import.
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def clean_albef(text: str, max_words: int = ALBEF_DEFAULT_MAX_WORDS) -> str:
    """ALBEF's ``pre_caption(caption, max_words)``, step for step.

    The order matters and is kept: ``<person>`` survives the punctuation pass
    (``<`` and ``>`` are not dropped) and a hyphen next to a space leaves a
    double space that the collapse step then removes. Words are counted by
    splitting on single spaces, as the original does.
    """
    max_words = positive_int("clean_albef: max_words", max_words)
    text = _ALBEF_DROP.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _ALBEF_SPACES.sub(" ", text)
    # Two narrow strips, not one .strip(): the original keeps e.g. a leading "\n" or a trailing "\t".
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def clean(text: str, rule: str, max_words: int | None = None) -> str:
    """Apply the cleaning ``rule`` (a ``TextSettings.cleaning`` value) to one text.

    ``max_words`` is used by ``"albef"`` only (``None`` means ALBEF's own
    default of 30) and ignored by the other rules.
    """
    if rule == "clip":
        return clean_clip(text)
    if rule == "albef":
        return clean_albef(text, ALBEF_DEFAULT_MAX_WORDS if max_words is None else max_words)
    if rule in ("none", "bert"):
        return text
    raise InputError(f"unknown text cleaning rule {rule!r}; expected one of {CLEANING_RULES}")


__all__ = ["CLEANING_RULES", "ALBEF_DEFAULT_MAX_WORDS", "clean", "clean_albef", "clean_clip"]
