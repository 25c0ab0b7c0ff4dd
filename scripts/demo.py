"""`make demo`: export a CLIP checkpoint, embed the example images, run text queries.

The export runs in a child process (torch); everything after it runs here on
the lean runtime, so the printed latencies are what a torch-free service sees.
An existing bundle is reused only when it was exported from the same
checkpoint and `crossmodal verify` passes on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ["a red circle", "a stop sign", "the word hello", "a green triangle", "a sunset", "a black square"]


def _bundle_is_current(bundle: Path, model: str, variants: list[str]) -> bool:
    from crossmodal.errors import CrossmodalError
    from crossmodal.manifest import read_bundle
    from crossmodal.verify import verify_bundle

    if not (bundle / "bundle.json").is_file():
        return False
    try:
        info = read_bundle(bundle)
        if info.source.get("model") != model:
            return False
        results = verify_bundle(bundle, variants)
    except CrossmodalError:
        return False
    return all(r.ok for r in results)


def _export(model: str, bundle: Path, targets: str) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "crossmodal.cli", "export", "clip", "--model", model, "--out", str(bundle), "--targets", targets]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return time.perf_counter() - t0


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="openai/clip-vit-base-patch32", help="hub id or local CLIP directory")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "clip-vit-b-32")
    ap.add_argument("--images", type=Path, default=ROOT / "examples" / "images")
    ap.add_argument("--variant", default="cpu-int8")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import crossmodal

    variants = ["cpu-fp32", "cpu-int8"]
    if _bundle_is_current(args.bundle, args.model, variants):
        print(f"[export] reusing {args.bundle} (same source, verify passed)")
        export_s = 0.0
    else:
        print(f"[export] {args.model} -> {args.bundle}")
        export_s = _export(args.model, args.bundle, ",".join(variants))

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
    for q in QUERIES:
        t0 = time.perf_counter()
        v = enc.encode_text([q])[0]
        scores = image_vecs @ v
        top = np.argsort(-scores)[:3]
        per_query.append(_ms(t0))
        results[q] = [(files[i].name, float(scores[i])) for i in top]

    print(f"\nbundle {enc.bundle.name} ({enc.variant}, dim {enc.dim}), {len(files)} images from {args.images}")
    for q, hits in results.items():
        print(f"\n  query: {q!r}")
        for rank, (name, score) in enumerate(hits, 1):
            print(f"    {rank}. {score:+.4f}  {name}")
    print("\nper-stage latency")
    if export_s:
        print(f"  export (both towers, fp32+int8)   {export_s:8.1f} s")
    print(f"  load bundle                       {load_ms:8.1f} ms")
    print(f"  decode+preprocess                 {prep_ms / len(files):8.2f} ms/image")
    print(f"  image tower ({len(files)} images, 1 batch)  {image_ms / len(files):8.2f} ms/image")
    print(f"  text query (tokenise+encode+rank) {float(np.median(per_query)):8.2f} ms median")
    summary = {"load_ms": load_ms, "prep_ms_per_image": prep_ms / len(files), "image_ms_per_image": image_ms / len(files),
               "query_ms_median": float(np.median(per_query))}
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
