"""Tiny random multilingual text encoders saved in their real on-disk formats.

* :func:`write_tiny_st_mbert`: a sentence-transformers directory saved by
  sentence-transformers itself, shaped like ``clip-ViT-B-32-multilingual-v1``
  (cased multilingual DistilBERT + mean Pooling + Dense without bias and with
  an Identity activation), with a WordPiece vocabulary built from
  :data:`CORPUS`.
* :func:`write_tiny_mclip`: a Multilingual-CLIP checkpoint saved by the
  ``multilingual-clip`` package's ``MultilingualCLIP`` class around a tiny
  XLM-R, with a SentencePiece-Unigram tokenizer trained here on :data:`CORPUS`.
* :func:`write_tiny_legacy_mbert`: a legacy ``M-BERT-*`` checkpoint: a tiny
  BERT directory plus the ``* Linear Weights.pkl`` head as plain pickled arrays.

Only widths are tiny and weights random; classes, file layouts and tokenizer
pipelines are the real ones.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from pathlib import Path

TINY_HIDDEN = 32
TINY_DIM = 16  # = the tiny CLIP's projection_dim, so the towers can be paired
TINY_MAX_SEQ = 64

# One short caption set per language/script; also the tokenizer parity corpus.
CORPUS: dict[str, list[str]] = {
    "en": ["Two dogs play in the snow.", "A man rides a bicycle through the city at night.", "A red apple on a table"],
    "de": ["Zwei Hunde spielen im Schnee.", "Ein Mann fährt nachts mit dem Fahrrad durch die Stadt.", "Größere Straßenbahn"],
    "fr": ["Deux chiens jouent dans la neige.", "Un homme fait du vélo en ville la nuit.", "Une pomme rouge sur une table"],
    "es": ["Dos perros juegan en la nieve.", "Un hombre monta en bicicleta por la ciudad de noche.", "¿Dónde está el niño?"],
    "pl": ["Dwa psy bawią się na śniegu.", "Mężczyzna jedzie rowerem przez miasto nocą.", "Źółć gęślą jaźń"],
    "tr": ["İki köpek karda oynuyor.", "Bir adam gece şehirde bisiklet sürüyor.", "Işık ılık ğüşöç"],
    "vi": ["Hai con chó chơi trong tuyết.", "Một người đàn ông đạp xe qua thành phố vào ban đêm.", "Phở bò Hà Nội"],
    "ru": ["Две собаки играют в снегу.", "Мужчина едет на велосипеде по городу ночью.", "Ёлка и щётка"],
    "el": ["Δύο σκύλοι παίζουν στο χιόνι.", "Ένας άντρας κάνει ποδήλατο στην πόλη τη νύχτα.", "Καλημέρα κόσμε"],
    "ar": ["كلبان يلعبان في الثلج.", "رجل يركب دراجة في المدينة ليلا.", "تفاحة حمراء على الطاولة"],
    "he": ["שני כלבים משחקים בשלג.", "איש רוכב על אופניים בעיר בלילה.", "תפוח אדום על השולחן"],
    "hi": ["दो कुत्ते बर्फ में खेल रहे हैं।", "एक आदमी रात में शहर में साइकिल चला रहा है।", "मेज़ पर एक लाल सेब"],
    "th": ["สุนัขสองตัวเล่นในหิมะ", "ผู้ชายขี่จักรยานในเมืองตอนกลางคืน", "แอปเปิ้ลสีแดงบนโต๊ะ"],
    "zh": ["两只狗在雪中玩耍。", "一个男人晚上在城市里骑自行车。", "桌子上有一个红苹果"],
    "ja": ["二匹の犬が雪の中で遊んでいる。", "男性が夜の街を自転車で走っている。", "テーブルの上の赤いリンゴ"],
    "ko": ["두 마리의 개가 눈 속에서 놀고 있다.", "한 남자가 밤에 도시에서 자전거를 탄다.", "탁자 위의 빨간 사과"],
    "emoji": ["🐕🐕 in the ❄️ snow", "I ❤️ 🍎 and 🚲!", "👨‍👩‍👧 family 😀"],
    "mixed": ["MiXeD CaSe ÜBER Straße", "café naïve résumé Ångström", "ALL CAPS CAPTION HERE"],
}


def all_texts() -> list[str]:
    return [t for texts in CORPUS.values() for t in texts]


def long_text() -> str:
    """Longer than every max length used here (truncation test)."""
    return " ".join(all_texts() * 3)


def _perturb(model: object, seed: int) -> None:
    """Random init leaves LayerNorms at identity and biases at 0: move them so every parameter matters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # type: ignore[attr-defined]
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _wordpiece_vocab() -> list[str]:
    """Specials, every character (alone and as ##continuation) and the corpus's frequent words."""
    text = " ".join(all_texts())
    chars = sorted({c for c in text if not c.isspace()})
    words = Counter(w for w in re.findall(r"\w+", text) if len(w) > 1)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + [f"##{c}" for c in chars] + [w for w, _ in words.most_common(150)]
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


def write_wordpiece_tokenizer(cls_name: str, out: Path, max_len: int) -> Path:
    """A cased multilingual WordPiece tokenizer (``BertTokenizer`` / ``DistilBertTokenizer``) saved by transformers."""
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    cls = getattr(transformers, cls_name)
    # Cased multilingual models: no lower-casing, accents kept (strip_accents None).
    tok = cls(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False, model_max_length=max_len)
    tok.save_pretrained(str(out))
    return out


def write_tiny_st_mbert(out: Path, *, seed: int = 0, dim: int = TINY_DIM) -> Path:
    """A sentence-transformers DistilBERT + mean Pooling + Dense(bias=False, Identity) directory."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    hf = out.parent / f"{out.name}-hf"
    write_wordpiece_tokenizer("DistilBertTokenizer", hf, 512)
    n_vocab = len(_wordpiece_vocab())
    cfg = DistilBertConfig(vocab_size=n_vocab, dim=TINY_HIDDEN, hidden_dim=64, n_layers=2, n_heads=4,
                           max_position_embeddings=512, pad_token_id=0)
    model = DistilBertModel(cfg).eval()
    _perturb(model, seed)
    model.save_pretrained(str(hf))
    st = SentenceTransformer(modules=[
        Transformer(str(hf), max_seq_length=TINY_MAX_SEQ),
        Pooling(TINY_HIDDEN, pooling_mode="mean"),
        Dense(TINY_HIDDEN, dim, bias=False, activation_function=torch.nn.Identity()),
    ], device="cpu")
    st.save(str(out))
    return out


def _unigram_vocab(size: int = 600) -> list[tuple[str, float]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.75)
    tok.train_from_iterator(all_texts() * 4, trainer)
    import json

    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    return [(str(p), float(s)) for p, s in vocab] + [("<mask>", 0.0)]


def xlmr_tokenizer(max_len: int = TINY_MAX_SEQ) -> object:
    """transformers' XLMRobertaTokenizer around a SentencePiece-Unigram vocabulary trained on :data:`CORPUS`."""
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer(vocab=_unigram_vocab(), model_max_length=max_len)


def write_tiny_mclip(out: Path, *, seed: int = 1, dim: int = TINY_DIM) -> Path:
    """An M-CLIP checkpoint saved by ``multilingual_clip.pt_multilingual_clip.MultilingualCLIP``.

    The base XLM-R is saved to ``<out>-base`` first, because the package's
    class builds its transformer with ``AutoModel.from_pretrained(modelBase)``.
    """
    import torch
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    base = out.parent / f"{out.name}-base"
    tok = xlmr_tokenizer()
    cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=TINY_MAX_SEQ + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    base_model = XLMRobertaModel(cfg).eval()
    _perturb(base_model, seed)
    base_model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    mcfg = MCLIPConfig(modelBase=str(base), transformerDimSize=TINY_HIDDEN, imageDimSize=dim)
    model = MultilingualCLIP(mcfg).eval()
    with torch.no_grad():
        model.LinearTransformation.bias.add_(0.1 * torch.randn(dim))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def load_mclip_reference(path: Path) -> object:
    """The package's MultilingualCLIP holding the saved weights.

    ``MultilingualCLIP.from_pretrained`` fails under transformers 5, so the
    object is built from its config (its __init__ loads the local base) and the
    saved state dict is loaded strictly.
    """
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
    from safetensors.torch import load_file

    model = MultilingualCLIP(MCLIPConfig.from_pretrained(str(path))).eval()
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [k for k in missing if not k.endswith("position_ids")], missing
    assert not unexpected, unexpected
    return model


def write_tiny_legacy_mbert(out: Path, *, seed: int = 2, dim: int = TINY_DIM) -> tuple[Path, Path]:
    """(BERT dir, head pickle) in the legacy M-BERT layout; the head is ``[W (in, out), b (out,)]`` numpy arrays."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    write_wordpiece_tokenizer("BertTokenizer", out, 512)
    n_vocab = len(_wordpiece_vocab())
    cfg = BertConfig(vocab_size=n_vocab, hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
    model = BertModel(cfg).eval()
    _perturb(model, seed)
    with torch.no_grad():  # token type 0 must matter, or a dropped token_type_ids input would go unnoticed
        model.embeddings.token_type_embeddings.weight.mul_(5.0)
    model.save_pretrained(str(out))
    rng = np.random.default_rng(seed)
    head = out / "Tiny-M-BERT Linear Weights.pkl"
    with open(head, "wb") as f:
        pickle.dump([rng.standard_normal((TINY_HIDDEN, dim)).astype(np.float32),
                     rng.standard_normal(dim).astype(np.float32)], f)
    return out, head
