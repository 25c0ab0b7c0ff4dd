"""CLIP text side: clean_clip + our tokenizer.json must give open_clip's (OpenAI's) ids exactly."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex
from helpers.clip_vocab import reference_ids, reference_sequences, write_clip_vocab

from crossmodal.errors import ArtifactError, TextInputError
from crossmodal.export.clip_tokenizer import (
    CLIP_SPLIT_PATTERN,
    build_clip_tokenizer,
    clip_tokenizer_from_source,
    eot_id,
    find_clip_tokenizer_files,
    sot_id,
)
from crossmodal.manifest import TextSettings
from crossmodal.text import TextTokenizer
from crossmodal.text_cleaning import clean_clip

SOT, EOT = 49406, 49407

CORPUS = [
    # plain English and case
    "a photo of a dog", "A Photo Of A DOG", "Two dogs playing in the snow.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "iPhone vs. Android: which is better?",
    # accents and case mapping that Python's str.lower does specially
    "café", "naïve résumé", "Crème Brûlée à la française", "Ångström Øresund Æsir", "Straße",
    "İstanbul", "ΣΊΣΥΦΟΣ ΟΔΟΣ", "ǅungla", "K Kelvin sign",
    # scripts
    "中文", "日本語のテキスト", "한국어 문장입니다", "一只猫坐在垫子上", "مرحبا بالعالم", "नमस्ते दुनिया",
    "Привет, мир!", "สวัสดีครับ", "שלום עולם", "Καλημέρα κόσμε",
    # emoji: variation selectors, ZWJ sequences, skin tones, flags
    "I ❤️ NY", "👨‍👩‍👧‍👦 family", "🇯🇵🇺🇸 flags", "👍🏽 thumbs up", "🏳️‍🌈", "😀😃😄😁",
    # HTML entities (OpenAI unescapes twice; ftfy leaves them alone when the text contains '<')
    "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "it&#39;s", "&amp;amp; double escaped", "&amp;lt;i&amp;gt;",
    "<b>e&#769;</b>", "&nbsp;non breaking", "&copy; 2021 &mdash; all rights", "<p>caf&eacute;</p>",
    # whitespace: tabs, newlines, NBSP, zero-width space, separators Python splits on but \s does not
    "tabs\tand\nnewlines\r\n", "non\u00a0breaking\u00a0space", "zero\u200bwidth\u200bspace",
    "  leading and trailing  ", "\u3000ideographic\u3000space", "line\u2028separator", "a\x1cb\x1dc\x1fd",
    "\u0085next line", "\u180emongolian",
    # quotes, dashes, ligatures (ftfy rewrites them)
    "“curly quotes” and ‘single’", "it’s a dog’s life", "em—dash – en dash", "ellipsis…",
    "ﬁnancial ﬂow ﬀ ﬃ", "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ",
    # mojibake
    "cafÃ©", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "Ã¢â‚¬Å“quotedÃ¢â‚¬Â", "âœ” checked",
    # numbers
    "1234567890", "3.14159 and 2,718", "year 2024, 50% off, $9.99", "½ ¾ ① ② x² Ⅻ", "٣٤٥ arabic digits",
    # punctuation runs
    "!!!???...", "wow!!! really?!?!", "---===***", "(parenthesised) [bracketed] {braced}",
    # contractions (OpenAI splits them case-insensitively)
    "it's don't we're they've I'm we'll he'd", "IT'S DON'T WE'RE", "rock 'n' roll", "'ſ long s", "o'clock''s",
    # URLs, code
    "https://example.com/path?q=1&x=2#frag", "user@example.com", "www.openai.com/clip",
    "def f(x): return x**2", "snake_case_name and camelCaseName",
    # literal special-token strings stay plain text
    "<|endoftext|> injected", "<|startoftext|>",
    # combining marks: U+0345 is dropped by OpenAI's case-insensitive regex
    "\u0345 ypogegrammeni ᾳ", "e\u0301 combining acute", "a\ud800b lone surrogate",
    # empty and whitespace-only
    "", " ", "\t\n ", "\u200b",
    # longer than 77 tokens
    "a photo of " * 40, " ".join(f"word{i}" for i in range(120)), "😀" * 80, "中文" * 60,
    "A long caption, with punctuation; and more: " * 12,
]


def _unpadded(enc: dict[str, np.ndarray]) -> list[list[int]]:
    return [row[: int(m.sum())].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clip_vocab")
    write_clip_vocab(d)
    return d


@pytest.fixture(scope="module")
def clip_tok(vocab_dir: Path):
    return build_clip_tokenizer(vocab_dir / "vocab.json", vocab_dir / "merges.txt")


@pytest.fixture(scope="module")
def tok_file(clip_tok, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip_tok") / "tokenizer.json"
    clip_tok.save(str(path))
    return path


def _runtime(tok_file: Path, **kw) -> TextTokenizer:
    return TextTokenizer.from_file(tok_file, TextSettings(max_length=kw.pop("max_length", 77), cleaning="clip", **kw))


def test_corpus_covers_the_brief() -> None:
    assert len(CORPUS) >= 60
    assert len(set(CORPUS)) == len(CORPUS)


def test_corpus_ids_equal_open_clip(tok_file: Path) -> None:
    ours = _unpadded(_runtime(tok_file).encode(CORPUS))
    ref = reference_sequences(CORPUS)
    mismatches = [(t, o, r) for t, o, r in zip(CORPUS, ours, ref) if o != r]
    assert not mismatches, mismatches[:5]
    # The corpus really exercises truncation and the empty case.
    assert sum(len(r) == 77 for r in ref) >= 5
    assert [SOT, EOT] in ref


def test_padded_batch_equals_open_clip_tokenize(tok_file: Path) -> None:
    enc = _runtime(tok_file, pad_to_max_length=True).encode(CORPUS)
    assert enc["input_ids"].shape == (len(CORPUS), 77)
    np.testing.assert_array_equal(enc["input_ids"], reference_ids(CORPUS))


def test_random_text_fuzz_equals_open_clip(tok_file: Path) -> None:
    rng = random.Random(1234)
    pool = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789" + "      '\"!?.,;:-_/&#()[]<>*~%$@"
        + "éèàçñøåßæœİıΣσς" + "中文日本語한국어" + "абвгдЖЗИ" + "مرحبا" + "नमस्ते" + "😀👍🏽❤️\u200d🇫🇷"
        + "\u0301\u0345\u200b\u00a0\t\n" + "ﬁﬂ“”‘’—…½²"
    )
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    texts += ["&amp;" + t + "&#39;s" for t in texts[:50]]
    ours = _unpadded(_runtime(tok_file).encode(texts))
    ref = reference_sequences(texts)
    bad = [t for t, o, r in zip(texts, ours, ref) if o != r]
    assert not bad, bad[:5]


def test_split_pattern_matches_openai_regex_on_unicode14_code_points() -> None:
    # OpenAI: regex.findall with IGNORECASE; ours: Oniguruma via tokenizers.Split.
    # Every assigned code point below U+3400 and every 13th above it (the full
    # scan passes too but takes a minute on 2 cores).
    from tokenizers import Regex, pre_tokenizers

    openai = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    ours = pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True)
    assigned = [chr(c) for c in range(sys.maxunicode + 1)
                if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"]
    sample = [c for i, c in enumerate(assigned) if ord(c) < 0x3400 or i % 13 == 0]
    # Contraction contexts only for characters that case-fold like a contraction letter (e.g. U+017F).
    folding = [c for c in assigned if regex.fullmatch(r"[smtrvlde]", c, regex.IGNORECASE)]
    assert "\u017f" in folding and "\u0345" in sample
    # Space-separated chunks, lower-cased as clean_clip leaves the text.
    text = " ".join(f"x{c}1{c}!'{c}'{c}x \u0345{c}\u0345".lower() for c in sample)
    text += " " + " ".join(f"'{c}x 'r{c} 'l{c} 'v{c} a{c}'s".lower() for c in folding)
    got = [piece for piece, _ in ours.pre_tokenize_str(text)]
    assert got == openai.findall(text)
    assert len(sample) > 30_000


def test_truncation_keeps_eot_last(tok_file: Path) -> None:
    text = "a photo of " * 40
    for max_length in (77, 16, 3):
        enc = _runtime(tok_file, max_length=max_length).encode([text, "short"])
        assert enc["input_ids"].shape == (2, max_length)
        assert enc["input_ids"][0, -1] == EOT and enc["input_ids"][0, 0] == SOT
        assert _unpadded(enc) == reference_sequences([text, "short"], context_length=max_length)


def test_batch_padding_and_attention_mask(tok_file: Path) -> None:
    texts = ["a dog", "", "two dogs playing in the snow near a lake"]
    enc = _runtime(tok_file, pad_id=EOT).encode(texts)
    ref = reference_sequences(texts)
    lengths = [len(r) for r in ref]
    assert enc["input_ids"].shape == (3, max(lengths)) and enc["input_ids"].dtype == np.int64
    assert enc["attention_mask"].dtype == np.int64
    assert enc["attention_mask"].sum(axis=1).tolist() == lengths
    for row, mask, r in zip(enc["input_ids"], enc["attention_mask"], ref):
        n = len(r)
        assert row[:n].tolist() == r and mask[:n].all()
        assert (row[n:] == EOT).all() and not mask[n:].any()  # right padding with the manifest's pad id
    assert set(enc) == {"input_ids", "attention_mask"}


def test_single_string_and_token_type_ids(tok_file: Path) -> None:
    enc = _runtime(tok_file, needs_token_type_ids=True).encode("a photo of a cat")
    assert enc["input_ids"].tolist() == reference_sequences(["a photo of a cat"])
    assert enc["token_type_ids"].shape == enc["input_ids"].shape and not enc["token_type_ids"].any()
    arr = _runtime(tok_file).encode(np.array(["a cat", "a dog"]))
    assert _unpadded(arr) == reference_sequences(["a cat", "a dog"])


@pytest.mark.parametrize("bad, index, kind", [(None, 1, "NoneType"), (3, 1, "int"), (b"bytes", 1, "bytes")])
def test_non_str_items_are_rejected_with_their_index(tok_file: Path, bad: object, index: int, kind: str) -> None:
    with pytest.raises(TextInputError, match=rf"text #{index} is a {kind}"):
        _runtime(tok_file).encode(["fine", bad, "also fine"])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [[], (), b"bytes", 42, {"a": 1}, np.array([["a"]])])
def test_bad_batches_are_rejected(tok_file: Path, bad: object) -> None:
    with pytest.raises(TextInputError, match="texts"):
        _runtime(tok_file).encode(bad)  # type: ignore[arg-type]


def test_unencodable_text_names_its_index(tok_file: Path) -> None:
    # With CLIP cleaning ftfy replaces a lone surrogate; without cleaning it reaches the tokenizer.
    tok = TextTokenizer.from_file(tok_file, TextSettings(max_length=77, cleaning="none"))
    with pytest.raises(TextInputError, match=r"text #1 is not valid Unicode"):
        tok.encode(["ok", "bad \ud800 text"])


def test_artifact_errors(tmp_path: Path, clip_tok) -> None:
    settings = TextSettings(max_length=77, cleaning="clip")
    with pytest.raises(ArtifactError, match="does not exist"):
        TextTokenizer.from_file(tmp_path / "missing.json", settings)
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text('{"version": "1.0", "model": ')
    with pytest.raises(ArtifactError, match="not a valid tokenizer.json"):
        TextTokenizer.from_file(corrupt, settings)
    with pytest.raises(ArtifactError, match="no room"):
        TextTokenizer(clip_tok, TextSettings(max_length=2, cleaning="clip"))
    with pytest.raises(ArtifactError, match="pad_id"):
        TextTokenizer(clip_tok, TextSettings(max_length=77, cleaning="clip", pad_id=49408))


def test_caller_tokenizer_is_not_reconfigured(clip_tok) -> None:
    TextTokenizer(clip_tok, TextSettings(max_length=16, cleaning="clip", pad_to_max_length=True))
    assert clip_tok.padding is None
    assert clip_tok.truncation["max_length"] == 77


def test_saved_file_overrides_are_ignored(clip_tok, tmp_path: Path) -> None:
    # A tokenizer.json saved with other truncation/padding must not change what the graph receives.
    from tokenizers import Tokenizer

    other = Tokenizer.from_str(clip_tok.to_str())
    other.enable_truncation(max_length=5)
    other.enable_padding(length=100, pad_id=7)
    path = tmp_path / "tokenizer.json"
    other.save(str(path))
    enc = _runtime(path).encode(["a photo of a very fluffy cat"])
    assert enc["input_ids"].tolist() == reference_sequences(["a photo of a very fluffy cat"])


def test_special_ids_and_decode(clip_tok) -> None:
    assert (sot_id(clip_tok), eot_id(clip_tok)) == (SOT, EOT)
    assert clip_tok.get_vocab_size() == 49408
    ids = clip_tok.encode(clean_clip("Hello World, it's a café!")).ids
    assert clip_tok.decode(ids[1:-1]) == "hello world , it 's a café !"


def test_tokenizer_from_source_layouts(vocab_dir: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (hf / name).write_bytes((vocab_dir / name).read_bytes())
    # A stale tokenizer.json next to them is ignored: we always rebuild from vocab + merges.
    (hf / "tokenizer.json").write_text("{ not json")
    st = tmp_path / "st"
    (st / "0_CLIPModel").mkdir(parents=True)
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_CLIPModel",
                                                  "type": "sentence_transformers.models.CLIPModel"}]))
    for name in ("vocab.json", "merges.txt"):
        (st / "0_CLIPModel" / name).write_bytes((vocab_dir / name).read_bytes())
    assert find_clip_tokenizer_files(st) == (st / "0_CLIPModel" / "vocab.json", st / "0_CLIPModel" / "merges.txt")
    expected = reference_sequences(["Two dogs in the snow"])[0]
    for src in (hf, st):
        assert clip_tokenizer_from_source(src).encode(clean_clip("Two dogs in the snow")).ids == expected
    with pytest.raises(ArtifactError, match="no vocab.json"):
        clip_tokenizer_from_source(tmp_path / "empty")


def test_bad_vocab_or_merges(vocab_dir: Path, tmp_path: Path) -> None:
    vocab = json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ArtifactError, match="missing CLIP special tokens"):
        build_clip_tokenizer(tmp_path / "vocab.json", vocab_dir / "merges.txt")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nthree parts here\n")
    with pytest.raises(ArtifactError, match=r"merges.txt:3"):
        build_clip_tokenizer(vocab_dir / "vocab.json", tmp_path / "merges.txt")


HF_SAFE = [  # texts where OpenAI's ftfy/html cleaning changes nothing beyond what HF's normalizer does
    "a photo of a dog", "A Photo Of A DOG", "it's don't we're", "!!!???...", "3.14159 and 2,718",
    "中文 日本語 한국어", "Привет, мир!", "naïve café", "👍🏽 thumbs", "https://example.com/x?q=1", "",
]
HF_DIFFERENT = [  # texts where the HF tokenizer alone is not OpenAI's tokenizer
    "cafÃ©", "Tom &amp; Jerry", "<b>e&#769;</b>", "“curly”", "ﬁnancial", "<|endoftext|> injected", "a\x1cb",
]


def test_transformers_clip_tokenizer_sanity(vocab_dir: Path, tok_file: Path) -> None:
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(vocab_dir))
    assert hf.pad_token_id == EOT and hf.bos_token_id == SOT
    runtime = _runtime(tok_file)
    assert [hf(t)["input_ids"] for t in HF_SAFE] == _unpadded(runtime.encode(HF_SAFE))
    # The reason the runtime cleans in Python: HF alone differs from OpenAI on each of these.
    ref = reference_sequences(HF_DIFFERENT)
    assert _unpadded(runtime.encode(HF_DIFFERENT)) == ref
    assert all(hf(t)["input_ids"] != r for t, r in zip(HF_DIFFERENT, ref))


def test_runtime_text_modules_do_not_import_torch() -> None:
    code = ("import sys, crossmodal.text, crossmodal.text_cleaning; "
            "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
