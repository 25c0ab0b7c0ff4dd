"""Benchmark inputs, built once per output directory and reused between runs.

* a CLIP checkpoint in transformers format: the real architecture built with
  transformers' own classes (``CLIPConfig()`` defaults are ViT-B/32 sizes) and
  random weights, with OpenAI's real BPE vocabulary (read from open_clip's
  ``bpe_simple_vocab_16e6.txt.gz``), or a user's checkpoint (``--model``);
* its crossmodal bundle (``crossmodal export clip``, cpu-fp32 + cpu-int8);
* synthetic "photos" as 1600x1200 JPEG files (smooth shapes + texture, so that
  decoding costs what a photo costs; random noise would not compress);
* realistic caption-length queries (about 12 tokens);
* usearch HNSW graphs over N random unit vectors, with recall@10 against an
  exact scan measured when built.

Everything heavy happens here, in the parent process, before any timing.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Caption parts for queries and for the fidelity corpus: combinations give
# thousands of distinct, caption-like sentences of 8-16 CLIP tokens.
_SUBJECTS = ["two dogs", "a black cat", "an old man", "a young woman", "three children", "a red car", "a small boat",
             "a brown horse", "a cyclist", "a group of tourists", "a white bird", "a street vendor", "a yellow bus",
             "a chef", "a tall giraffe", "a skateboarder", "a fisherman", "a police officer", "an orange tabby",
             "a wooden bench"]
_ACTIONS = ["playing in", "walking through", "sitting near", "running across", "resting beside", "waiting at",
            "standing in front of", "looking at", "crossing", "parked next to"]
_PLACES = ["the snow", "a busy market", "the river bank", "an empty beach", "a city street at night",
           "a green field", "the kitchen table", "a crowded train station", "a mountain lake", "the old bridge",
           "a foggy forest", "a sunny park"]


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct caption-like sentences (deterministic order for a seed)."""
    combos = [f"{s} {a} {p}" for s in _SUBJECTS for a in _ACTIONS for p in _PLACES]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} captions can be generated, asked for {n}")
    order = np.random.default_rng(seed).permutation(len(combos))[:n]
    return [combos[i] for i in order]


# ----------------------------------------------------------------------------- CLIP vocabulary


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level alphabet, in id order (printable bytes first, then the rest shifted to 256+)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def write_clip_vocab(out_dir: Path) -> None:
    """vocab.json / merges.txt / tokenizer config of OpenAI CLIP, built from open_clip's BPE file.

    The ids follow OpenAI's SimpleTokenizer: 256 byte symbols, the same with
    ``</w>``, one token per merge (48,894 of them) and the two specials: 49,408.
    """
    spec = importlib.util.find_spec("open_clip")  # finds the folder without importing (that needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed: it ships the CLIP BPE vocabulary the benchmark needs "
                           "(pip install --no-deps open_clip_torch), or pass --model with a real checkpoint")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    cfg = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace", **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """What the benchmark measures: a transformers CLIP directory and its crossmodal bundle."""

    name: str
    hf_dir: Path
    bundle: Path
    random_weights: bool | None  # None: weights from a user's directory, trained or not is unknown
    image_size: int
    description: str


_TINY = dict(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8),
    projection_dim=16,
)


# Full-size CLIP architectures the harness can make with random weights: transformers' CLIPConfig
# overrides (ViT-B/32 is CLIPConfig()'s defaults; ViT-L/14 as openai/clip-vit-large-patch14).
CLIP_SIZES: dict[str, dict[str, Any]] = {
    "ViT-B/32": {},
    "ViT-L/14": dict(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768,
    ),
}


def clip_config(sizes: str) -> Any:
    """transformers' CLIPConfig for one of :data:`CLIP_SIZES` (or ``"tiny"``), with openai's text token ids."""
    from transformers import CLIPConfig

    if sizes != "tiny" and sizes not in CLIP_SIZES:
        raise ValueError(f"unknown CLIP sizes {sizes!r}: choose one of {', '.join(CLIP_SIZES)}")
    cfg = CLIPConfig(**(_TINY if sizes == "tiny" else CLIP_SIZES[sizes]))
    # eos/bos as in openai's CLIP configs: pooling at argmax(input_ids) = first end-of-text.
    for k, v in dict(bos_token_id=0, eos_token_id=2, pad_token_id=1).items():
        setattr(cfg.text_config, k, v)
    return cfg


# Written into every checkpoint the harness makes, so that `--model DIR` on one of them
# is reported as random weights, not as someone's trained model.
RANDOM_MARK = "crossmodal-bench-random.json"


def random_clip(out: Path, *, tiny: bool, seed: int = 0, sizes: str = "ViT-B/32") -> Path:
    """Save a random-weight CLIP (``sizes`` from :data:`CLIP_SIZES`, or tiny widths for ``--quick``) in transformers format."""
    if (out / "config.json").is_file() and (out / "vocab.json").is_file():
        if not (out / RANDOM_MARK).is_file():  # made before the mark existed: this path is the harness's own
            _mark_random(out, tiny=tiny, seed=seed)
        return out
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    cfg = clip_config("tiny" if tiny else sizes)
    model = CLIPModel(cfg).eval()
    perturb(model)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    write_clip_vocab(tmp)
    size = cfg.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(tmp)
    _mark_random(tmp, tiny=tiny, seed=seed, sizes=sizes)
    tmp.rename(out)
    return out


def perturb(model: Any, seed: int | None = None) -> None:
    """Move LayerNorms and biases off their init (identity and 0), which no trained model has: it gives
    quantisation realistic ranges to handle. ``seed`` None draws from torch's global generator."""
    import torch

    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _mark_random(folder: Path, *, tiny: bool, seed: int, sizes: str = "ViT-B/32") -> None:
    label = "tiny" if tiny else ("ViT-B/32 (CLIPConfig() defaults)" if sizes == "ViT-B/32" else sizes)
    (folder / RANDOM_MARK).write_text(json.dumps({"weights": "random", "made_by": "crossmodal bench", "seed": seed,
                                                  "sizes": label}))


def describe_checkpoint(model: str, hf_dir: Path) -> tuple[bool | None, str]:
    """(random_weights, description) of a ``--model`` checkpoint: only what is known about it.

    Random when the harness made it (its mark is there); otherwise the weights
    are whatever the directory holds, and the description says just that.
    """
    mark = hf_dir / RANDOM_MARK
    if mark.is_file():
        info = json.loads(mark.read_text())
        return True, (f"{model}: random weights made by crossmodal bench (seed {info.get('seed')}, "
                      f"{info.get('sizes')})")
    return None, f"{model} (weights as found in that directory)"


def export_bundle(hf_dir: Path, bundle: Path, calib_dir: Path | None, *, int8_recipe: str = "auto") -> Path:
    """``crossmodal export clip`` into ``bundle`` unless a complete bundle for the same source is there."""
    stamp = bundle / ".bench-source"
    key = _dir_key(hf_dir) + f":{int8_recipe}:{exporter_key()}"
    if (bundle / "bundle.json").is_file() and stamp.is_file() and stamp.read_text() == key:
        return bundle
    from crossmodal.export.clip import export_clip

    export_clip(str(hf_dir), bundle, "cpu-fp32,cpu-int8", calib_dir=calib_dir, int8_recipe=int8_recipe)
    stamp.write_text(key)
    return bundle


def exporter_key() -> str:
    """Hash of the exporter's source: a bundle cached by an older exporter is exported again
    (a cached text int8 graph kept its 140 MB fp32 token table after the exporter had cut it to 64 MB)."""
    import crossmodal.export as export_pkg

    h = hashlib.sha256()
    root = Path(export_pkg.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _dir_key(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != RANDOM_MARK:  # the mark says what the weights are, not which
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def prepare_model(work: Path, *, quick: bool, model: str | None, photos: Path | None) -> ModelSpec:
    """The checkpoint and bundle to benchmark (built or exported on first use)."""
    if model:
        from crossmodal.export.clip import find_transformers_dir
        from crossmodal.export.sources import resolve

        src = resolve(model)
        hf = find_transformers_dir(src.path)
        name = Path(model).name or model
        random_weights, desc = describe_checkpoint(model, hf)
    else:
        name = "clip-tiny-random" if quick else "clip-vit-b-32-random"
        hf = random_clip(work / name / "hf", tiny=quick)
        random_weights = True
        desc = ("tiny CLIP (random weights, CI smoke: figures mean nothing)" if quick else
                "CLIP ViT-B/32 architecture (transformers CLIPModel, CLIPConfig() defaults), random weights, real BPE vocabulary")
    bundle = export_bundle(hf, work / name / "bundle", photos)
    cfg = json.loads((hf / "config.json").read_text())
    image_size = int(cfg.get("vision_config", {}).get("image_size", 224))
    return ModelSpec(name=name, hf_dir=hf, bundle=bundle, random_weights=random_weights, image_size=image_size,
                     description=desc)


# ----------------------------------------------------------------------------- images


def synthetic_photo(width: int, height: int, seed: int) -> NDArray[np.uint8]:
    """An RGB image with the statistics JPEG cares about: smooth regions, edges and fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):  # low-frequency background
        fx, fy, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 128 + 80 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + ph)
    for _ in range(12):  # discs with hard edges
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.2) * min(width, height)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape).astype(np.float32)  # sensor-like texture
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photos(folder: Path, n: int, size: tuple[int, int] = (1600, 1200), quality: int = 90) -> list[Path]:
    """``n`` JPEG files of ``size`` (width, height) in ``folder``; existing ones are reused."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"photo_{size[0]}x{size[1]}_{i:03d}.jpg"
        if not p.is_file():
            Image.fromarray(synthetic_photo(size[0], size[1], seed=1000 + i)).save(p, quality=quality)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class VectorIndex:
    """A saved usearch graph over ``n`` random unit vectors, with its measured recall@10."""

    n: int
    path: Path
    recall_at_10: float
    settings: dict[str, Any]
    build_seconds: float


# i8 storage and a light graph: on 2 cores a 1M x 512 graph must build in minutes, not hours.
# Random 512-d vectors are the worst case for HNSW (recall is measured and printed).
INDEX_SETTINGS = {"metric": "cos", "dtype": "i8", "connectivity": 16, "expansion_add": 64, "expansion_search": 64}


def build_index(folder: Path, n: int, dim: int, *, recall_queries: int = 200, seed: int = 7) -> VectorIndex:
    """usearch graph over ``n`` random unit vectors (built in chunks to bound memory), cached by size.

    Random vectors in 512-d are HNSW's hardest case (no clusters), so the
    recall figure is a lower bound for real embeddings.
    """
    from crossmodal.index.native_imports import import_usearch

    from .recall import random_units

    Index = import_usearch().Index  # onnxruntime first: the other order segfaults (see native_imports)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"random-{n}-{dim}.usearch"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("settings") == INDEX_SETTINGS:
            return VectorIndex(n, path, m["recall_at_10"], m["settings"], m["build_seconds"])
    idx = Index(ndim=dim, **INDEX_SETTINGS)
    t0 = time.perf_counter()
    chunk = 100_000
    for start in range(0, n, chunk):
        vecs = random_units(min(chunk, n - start), dim, seed + start)
        idx.add(np.arange(start, start + len(vecs), dtype=np.uint64), vecs)
    build = time.perf_counter() - t0
    queries = random_units(recall_queries, dim, seed - 1)
    found = np.asarray(idx.search(queries, 10).keys).reshape(recall_queries, -1)
    exact = np.asarray(idx.search(queries, 10, exact=True).keys).reshape(recall_queries, -1)
    recall = float(np.mean([len(set(found[i]) & set(exact[i])) / 10 for i in range(recall_queries)]))
    idx.save(str(path))
    meta.write_text(json.dumps({"recall_at_10": recall, "settings": INDEX_SETTINGS, "build_seconds": build}))
    return VectorIndex(n, path, recall, dict(INDEX_SETTINGS), build)


def save_inputs(path: Path, arrays: dict[str, NDArray[Any]]) -> Path:
    """Inputs shared by every engine of one case, so all of them compute on the same numbers."""
    np.savez(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m crossmodal.bench.fixtures OUT --sizes ViT-L/14``: save a random-weight CLIP checkpoint.

    The directory is what ``crossmodal export clip --model OUT`` and ``crossmodal
    bench --model OUT`` take; its mark file makes every report say "random weights".
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m crossmodal.bench.fixtures",
                                     description="Save a random-weight CLIP checkpoint (transformers format) for "
                                                 "export and latency measurements; weights do not change latency.")
    parser.add_argument("out", type=Path, help="folder to create (kept as is if it already holds a checkpoint)")
    parser.add_argument("--sizes", choices=[*CLIP_SIZES, "tiny"], default="ViT-B/32",
                        help="architecture sizes (default: ViT-B/32; tiny: the tests' widths)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    args = parser.parse_args(argv)
    random_clip(args.out, tiny=args.sizes == "tiny", seed=args.seed, sizes=args.sizes)
    print(args.out)
    return 0


__all__ = ["CLIP_SIZES", "clip_config", "ModelSpec", "VectorIndex", "build_index", "captions", "describe_checkpoint", "export_bundle", "prepare_model",
           "random_clip", "perturb", "RANDOM_MARK", "write_clip_vocab", "write_photos", "synthetic_photo", "save_inputs", "INDEX_SETTINGS"]


if __name__ == "__main__":
    raise SystemExit(main())
