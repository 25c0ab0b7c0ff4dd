"""CLI subcommands for retrieval: ``index build``, ``index add``, ``search``, ``eval``.

:func:`register` adds them to the ``crossmodal`` parser; each handler takes the parsed
arguments and returns the exit code. Errors derived from CrossmodalError are printed
by ``crossmodal.cli.main`` (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import InputError
from .index import DTYPES, META_FILE, METRICS, TOWERS, Index


def _load_encoder(bundle: Path, variant: str | None, modality: str | None, threads: int | None) -> Any:
    from . import loader  # looked up at call time so tests can substitute an encoder

    return loader.load(bundle, variant=variant, modality=modality, threads=threads)


def _inside(folder: Path, root: str | None) -> bool:
    if root is None:
        return True
    a, r = os.path.abspath(folder), os.path.abspath(root)
    return os.path.commonpath([a, r]) == r


def _recorded_bundle(idx: Index, given: Path | None) -> Path:
    if given is not None:
        return given
    recorded = idx.info.get("bundle_path")
    if not recorded:
        raise InputError(f"index {idx.path} does not record its bundle's location; pass --bundle BUNDLE "
                         f"(a bundle of space {idx.space!r}).")
    return Path(recorded)


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        json.dump(report.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(report.summary())


def _ingest(idx: Index, enc: Any, args: argparse.Namespace, captions: Any) -> int:
    from .ingest import ingest_folder

    try:
        report = ingest_folder(idx, enc, args.images, captions=captions, batch_size=args.batch_size,
                               workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished batch is saved in {idx.path}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    _print_report(report, args.json)
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    """``crossmodal index build BUNDLE --images FOLDER --out INDEX``: create or resume an index."""
    from .ingest import IMAGE_EXTENSIONS, read_captions, walk_images

    files, _ = walk_images(args.images)
    if not files:
        raise InputError(f"--images {args.images}: no image files found (extensions "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); nothing to index.")
    captions = read_captions(args.captions) if args.captions else None
    enc = _load_encoder(args.bundle, args.variant, None if captions else "image", args.threads)
    if (args.out / META_FILE).exists():
        idx = Index.open(args.out)
        if not _inside(args.images, idx.root):
            idx.close()
            raise InputError(f"--images {args.images} is outside {idx.root}, the folder {args.out} indexes; "
                             "build a separate index for it.")
        print(f"resuming {args.out} ({len(idx)} vectors already indexed)", file=sys.stderr)
    else:
        idx = Index.create(args.out, bundle=enc.bundle, metric=args.metric, dtype=args.dtype, root=args.images,
                           info={"bundle_path": os.path.abspath(args.bundle), "variant": enc.variant})
    try:
        return _ingest(idx, enc, args, captions)
    finally:
        idx.close()


def cmd_index_add(args: argparse.Namespace) -> int:
    """``crossmodal index add INDEX --images FOLDER``: embed new files of a folder inside the index root."""
    from .ingest import read_captions

    idx = Index.open(args.index, repair=args.repair)
    try:
        for msg in idx.repairs:
            print(f"repaired: {msg}", file=sys.stderr)
        if not _inside(args.images, idx.root):
            raise InputError(f"--images {args.images} is outside {idx.root}, the folder {args.index} indexes; "
                             "build a separate index for it.")
        captions = read_captions(args.captions) if args.captions else None
        bundle = _recorded_bundle(idx, args.bundle)
        enc = _load_encoder(bundle, args.variant or idx.info.get("variant"), None if captions else "image",
                            args.threads)
        return _ingest(idx, enc, args, captions)
    finally:
        idx.close()


def cmd_search(args: argparse.Namespace) -> int:
    """``crossmodal search INDEX "query" -k 5`` or ``--image PATH``: ranked hits as text or JSON."""
    if (args.query is None) == (args.image is None):
        raise InputError('give a query text or --image PATH (exactly one), e.g. crossmodal search INDEX "a dog" -k 5')
    if args.k <= 0:
        raise InputError(f"-k must be a positive integer, got {args.k}.")
    if args.rerank is not None and (args.image is not None or args.rerank < args.k):
        raise InputError(f"--rerank R re-scores the top R hits of a text query: give a query text and R >= -k ({args.k}).")
    idx = Index.open(args.index, read_only=True)
    try:
        bundle = _recorded_bundle(idx, args.bundle)
        modality = "text" if args.query is not None else "image"
        variant = args.variant or idx.info.get("variant")
        if args.rerank is not None:
            from .rerank import Reranker

            # The re-ranker's own text tower encodes the query too: one load, no second copy.
            reranker = Reranker.load(bundle, variant=variant or "cpu-fp32", threads=args.threads)
            hits = idx.search_text(reranker.encoder, args.query, args.k, tower=args.target, exact=args.exact,
                                   rerank=args.rerank, reranker=reranker)
        elif args.query is not None:
            enc = _load_encoder(bundle, variant, modality, args.threads)
            hits = idx.search_text(enc, args.query, args.k, tower=args.target, exact=args.exact)
        else:
            enc = _load_encoder(bundle, variant, modality, args.threads)
            hits = idx.search_image(enc, str(args.image), args.k, tower=args.target, exact=args.exact)
        searched = "exact" if (args.exact if args.exact is not None else idx.uses_exact(args.target)) else "hnsw"
    finally:
        idx.close()
    rows = [{"rank": i + 1, "score": round(h.score, 6), "key": h.key, "path": h.path, "caption": h.caption}
            for i, h in enumerate(hits)]  # type: ignore[union-attr]
    if args.rerank is not None:
        for r, h in zip(rows, hits):  # None: the file could not be read, the hit kept its embedding rank
            r["itm_score"] = None if h.itm_score is None else round(h.itm_score, 6)  # type: ignore[union-attr]
    if args.json:
        json.dump({"index": str(args.index), "query": args.query, "image": None if args.image is None else str(args.image),
                   "target": args.target, "k": args.k, "rerank": args.rerank, "search": searched,
                   "results": rows}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for r in rows:
            itm = "" if args.rerank is None else ("   (unread)" if r["itm_score"] is None else f"  {r['itm_score']:+.4f}")
            print(f"{r['rank']:>3}{itm}  {r['score']:.4f}  {r['path'] or '-'}" + (f"  {r['caption']}" if r["caption"] else ""))
        if not rows:
            print("(the index is empty)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``crossmodal eval BUNDLE --dataset flickr30k|coco --root DIR``: Recall@1/5/10 both ways."""
    from .evaluate import evaluate, load_karpathy

    data = load_karpathy(args.root, args.dataset, args.split, json_path=args.karpathy_json,
                         captions_per_image=args.captions_per_image, limit=args.limit)
    enc = _load_encoder(args.bundle, args.variant, None, args.threads)
    scores = evaluate(enc, data, image_batch_size=args.batch_size, progress=not args.no_progress and not args.json)
    if args.json:
        out = scores.to_dict()
        out["bundle"] = getattr(enc.bundle, "name", None)
        out["variant"] = getattr(enc, "variant", None)
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(scores.format_table())
    return 0


def _common_ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="folder of images (walked recursively)")
    p.add_argument("--captions", type=Path, help="captions .jsonl or .csv (image + caption columns)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2)")
    p.add_argument("--variant", help="bundle variant (default: cpu-fp32, or the one the index was built with)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per tower")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def register(subparsers: Any) -> None:
    """Add ``index {build,add}``, ``search`` and ``eval`` to the ``crossmodal`` subparsers."""
    ix = subparsers.add_parser("index", help="build or extend a search index from a folder of images")
    ixs = ix.add_subparsers(dest="index_command", required=True)

    b = ixs.add_parser("build", help="embed a folder into a new index (reruns resume it)")
    b.add_argument("bundle", type=Path)
    b.add_argument("--out", type=Path, required=True, help="index directory to create (or resume)")
    _common_ingest_args(b)
    b.add_argument("--metric", choices=METRICS, default="cos")
    b.add_argument("--dtype", choices=DTYPES, default="f32", help="vector storage (f16/i8 trade recall for memory)")
    b.set_defaults(func=cmd_index_build)

    a = ixs.add_parser("add", help="embed new or changed files of a folder inside the index root")
    a.add_argument("index", type=Path)
    _common_ingest_args(a)
    a.add_argument("--bundle", type=Path, help="bundle to embed with (default: the one recorded at build)")
    a.add_argument("--repair", action="store_true", help="drop inconsistent entries instead of refusing to open")
    a.set_defaults(func=cmd_index_add)

    s = subparsers.add_parser("search", help="query an index with a text or an image")
    s.add_argument("index", type=Path)
    s.add_argument("query", nargs="?", help="query text")
    s.add_argument("--image", type=Path, help="query image instead of a text")
    s.add_argument("-k", "--k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--target", choices=TOWERS, default="image",
                   help="search images (default) or the embedded captions (image -> text)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="exact", action="store_const", const=True, default=None,
                      help="scan every vector (default while the index is below its exact threshold)")
    mode.add_argument("--hnsw", dest="exact", action="store_const", const=False,
                      help="walk the HNSW graph even for a small index")
    s.add_argument("--rerank", type=int, metavar="R",
                   help="re-score the top R (>= k) hits with the bundle's ITM re-ranker (ALBEF) and order by it")
    s.add_argument("--bundle", type=Path, help="bundle to encode the query (default: the one recorded at build)")
    s.add_argument("--variant")
    s.add_argument("--threads", type=int)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_search)

    e = subparsers.add_parser("eval", help="Recall@1/5/10 on the Karpathy test split of Flickr30k or COCO")
    e.add_argument("bundle", type=Path)
    e.add_argument("--dataset", choices=("flickr30k", "coco"), required=True)
    e.add_argument("--root", type=Path, required=True, help="dataset folder (images + dataset_<name>.json)")
    e.add_argument("--split", default="test")
    e.add_argument("--karpathy-json", type=Path, help="path of dataset_<name>.json if not under --root")
    e.add_argument("--captions-per-image", type=int, help="keep only the first N captions per image")
    e.add_argument("--limit", type=int, help="first N images only (smoke runs)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--variant")
    e.add_argument("--threads", type=int)
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
