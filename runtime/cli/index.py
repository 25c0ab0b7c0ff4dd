"""``crossmodal index build`` / ``crossmodal index add``: embed a folder of images into a search index.

Both resume: every finished batch is durable, so a rerun after an interruption
embeds only what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from .options import add_json, add_no_progress, add_threads, add_variant, load_encoder, positive, print_json


def inside(folder: Path, root: str | None) -> bool:
    """Whether ``folder`` lies under an index's root (an index without a root takes any folder)."""
    if root is None:
        return True
    a, r = os.path.abspath(folder), os.path.abspath(root)
    return os.path.commonpath([a, r]) == r


def recorded_bundle(idx: Any, given: Path | None) -> Path:
    """``given``, else the bundle path the index recorded at build, else InputError asking for --bundle."""
    if given is not None:
        return given
    recorded = idx.info.get("bundle_path")
    if not recorded:
        raise InputError(f"index {idx.path} does not record its bundle's location; pass --bundle BUNDLE "
                         f"(a bundle of space {idx.space!r}).")
    return Path(recorded)


def _outside(images: Path, idx: Any, where: Path) -> InputError:
    return InputError(f"--images {images} is outside {idx.root}, the folder {where} indexes; "
                      "build a separate index for it.")


def _ingest(idx: Any, enc: Any, args: argparse.Namespace, captions: Any) -> int:
    from ..ingest import ingest_folder

    try:
        report = ingest_folder(idx, enc, args.images, captions=captions, batch_size=args.batch_size,
                               workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished batch is saved in {idx.path}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Create the index at ``--out``, or resume it when it exists."""
    from ..index import META_FILE, Index
    from ..ingest import IMAGE_EXTENSIONS, read_captions, walk_images

    files, _ = walk_images(args.images)
    if not files:
        raise InputError(f"--images {args.images}: no image files found (extensions "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); nothing to index.")
    captions = read_captions(args.captions) if args.captions else None
    enc = load_encoder(args.bundle, args.variant, None if captions else "image", args.threads)
    if (args.out / META_FILE).exists():
        idx = Index.open(args.out)
        if not inside(args.images, idx.root):
            idx.close()
            raise _outside(args.images, idx, args.out)
        print(f"resuming {args.out} ({len(idx)} vectors already indexed)", file=sys.stderr)
    else:
        idx = Index.create(args.out, bundle=enc.bundle, metric=args.metric, dtype=args.dtype, root=args.images,
                           info={"bundle_path": os.path.abspath(args.bundle), "variant": enc.variant})
    try:
        return _ingest(idx, enc, args, captions)
    finally:
        idx.close()


def run_add(args: argparse.Namespace) -> int:
    """Embed the new or changed files of a folder inside the index root."""
    from ..index import Index
    from ..ingest import read_captions

    idx = Index.open(args.index, repair=args.repair)
    try:
        for msg in idx.repairs:
            print(f"repaired: {msg}", file=sys.stderr)
        if not inside(args.images, idx.root):
            raise _outside(args.images, idx, args.index)
        captions = read_captions(args.captions) if args.captions else None
        bundle = recorded_bundle(idx, args.bundle)
        enc = load_encoder(bundle, args.variant or idx.info.get("variant"), None if captions else "image",
                           args.threads)
        return _ingest(idx, enc, args, captions)
    finally:
        idx.close()


def _ingest_options(p: argparse.ArgumentParser, variant_help: str) -> None:
    p.add_argument("--images", type=Path, required=True, metavar="FOLDER", help="folder of images (walked recursively)")
    p.add_argument("--captions", type=Path, metavar="FILE",
                   help="captions .jsonl or .csv (image + caption columns); embedded too when the bundle has a "
                        "text tower, for image -> caption search")
    p.add_argument("--batch-size", type=positive, default=32, metavar="N", help="images per model call (default 32)")
    p.add_argument("--workers", type=positive, default=2, metavar="N", help="decode threads (default 2)")
    add_variant(p, default=None, help=variant_help)
    add_threads(p)
    add_no_progress(p)
    add_json(p, "the ingest report")


def register(sub: Any) -> None:
    from ..index import DTYPES, METRICS

    ix = sub.add_parser("index", help="build or extend a search index from a folder of images",
                        description="Build or extend a search index (usearch + SQLite) from a folder of images.")
    ixs = ix.add_subparsers(dest="index_command", required=True, metavar="{build,add}")

    b = ixs.add_parser("build", help="embed a folder into a new index (reruns resume it)",
                       description="Embed every image of a folder into a new index; rerunning resumes it.")
    b.add_argument("bundle", type=Path, help="bundle directory written by `crossmodal export`")
    b.add_argument("--out", type=Path, required=True, metavar="INDEX", help="index directory to create (or resume)")
    _ingest_options(b, "bundle variant to embed with (default cpu-fp32)")
    b.add_argument("--metric", choices=METRICS, default="cos", help="similarity metric (default cos)")
    b.add_argument("--dtype", choices=DTYPES, default="f32",
                   help="vector storage (default f32; f16/i8 trade recall for memory)")
    b.set_defaults(func=run_build)

    a = ixs.add_parser("add", help="embed new or changed files of a folder inside the index root",
                       description="Embed the new or changed files of a folder inside the index root.")
    a.add_argument("index", type=Path, help="index directory written by `crossmodal index build`")
    _ingest_options(a, "bundle variant to embed with (default: the one the index was built with)")
    a.add_argument("--bundle", type=Path, help="bundle to embed with (default: the one recorded at build)")
    a.add_argument("--repair", action="store_true", help="drop inconsistent entries instead of refusing to open")
    a.set_defaults(func=run_add)
