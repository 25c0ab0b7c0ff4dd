"""``crossmodal index build`` / ``add`` / ``import``: embed a folder of images into a search index.

Build and add resume: every finished batch is durable, so a rerun after an interruption
embeds only what is missing. ``index build --ray`` embeds on a Ray cluster into parquet
shards (a rerun skips the shards already written) and imports them; ``index import``
adds shard files to an index (see :mod:`crossmodal.distributed`, the ``ray`` extra).
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


def _open_or_create(args: argparse.Namespace, bundle: Any, variant: str, root: Path | None) -> Any:
    """The index at ``--out``, resumed (``root`` must lie inside its root) or created for ``bundle``."""
    from ..index import META_FILE, Index

    if (args.out / META_FILE).exists():
        idx = Index.open(args.out)
        if root is not None and not inside(root, idx.root):
            idx.close()
            raise _outside(root, idx, args.out)
        print(f"resuming {args.out} ({len(idx)} vectors already indexed)", file=sys.stderr)
        return idx
    return Index.create(args.out, bundle=bundle, metric=args.metric, dtype=args.dtype, root=root,
                        info={"bundle_path": os.path.abspath(args.bundle), "variant": variant})


def _no_images(images: Path) -> InputError:
    from ..ingest import IMAGE_EXTENSIONS

    return InputError(f"--images {images}: no image files found (extensions "
                      f"{', '.join(sorted(IMAGE_EXTENSIONS))}); nothing to index.")


def run_build(args: argparse.Namespace) -> int:
    """Create the index at ``--out``, or resume it when it exists."""
    from ..ingest import read_captions, walk_images

    if args.ray:
        return run_build_ray(args)
    ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--shards-dir", args.shards_dir),
                                         ("--actors", args.actors)) if value is not None]
    if ray_only:
        raise InputError(f"{ray_only[0]} needs --ray.")
    if args.images.is_file():
        raise InputError(f"--images {args.images} is a file; a parquet list of images is read by `index build "
                         "--ray`, without --ray give a folder.")
    files, _ = walk_images(args.images)
    if not files:
        raise _no_images(args.images)
    captions = read_captions(args.captions) if args.captions else None
    enc = load_encoder(args.bundle, args.variant, None if captions else "image", args.threads)
    idx = _open_or_create(args, enc.bundle, enc.variant, args.images)
    try:
        return _ingest(idx, enc, args, captions)
    finally:
        idx.close()


def run_build_ray(args: argparse.Namespace) -> int:
    """Embed on Ray into shard files (resumable), then import them into the index at ``--out``.

    Captions (``--captions`` for a folder, the parquet list's caption column) are embedded
    into the text tower as ``index build --captions`` embeds them, after the images (a
    caption's key needs its image's content digest), on the same Ray cluster.
    """
    from ..distributed.embed import check_bundle
    from ..distributed.importer import import_shards
    from ..distributed.sources import folder_items, is_parquet_list, parquet_items
    from ..distributed.writer import RaySession, caption_items, embed_to_shards
    from ..index.format import relative_item_path
    from ..ingest import read_captions
    from ..variants import DEFAULT_VARIANT

    variant = args.variant or DEFAULT_VARIANT
    if is_parquet_list(args.images):
        if args.captions:
            raise InputError(f"--captions is read with a folder; --images {args.images} is a parquet list: put "
                             "the captions in its caption column.")
        (items, captions), skipped, root = parquet_items(args.images), [], None
    else:
        items, skipped, captions = folder_items(args.images, read_captions(args.captions) if args.captions else None)
        root = args.images
    if not items:
        raise _no_images(args.images)
    info = check_bundle(args.bundle, variant, "image")
    embed_text = bool(captions) and "text" in info.towers  # as `index build`: stored only without a text tower
    if embed_text:
        check_bundle(args.bundle, variant, "text")
    shards_dir = args.shards_dir or args.out.with_name(args.out.name + ".shards")
    idx = _open_or_create(args, info, variant, root)
    progress = not args.no_progress
    embedding = dict(variant=variant, shard_size=args.shard_size, batch_size=args.batch_size,
                     concurrency=args.actors, num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor,
                     threads=args.threads, progress=progress)
    session = RaySession(args.ray_address)
    caption_run = None
    try:
        if root is None and idx.root is not None:
            for it in items:  # a listed file outside the index root: refused before anything is embedded
                relative_item_path(it.path, idx.root)
        try:
            run = embed_to_shards(items, args.bundle, shards_dir, session=session, **embedding)
            if embed_text:
                caption_run = embed_to_shards(caption_items(run.shards, captions), args.bundle, shards_dir,
                                              modality="text", session=session, **embedding)
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished shard is kept in {shards_dir}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        finally:
            session.close()
        report = import_shards(idx, run.shards + (caption_run.shards if caption_run else []), progress=progress)
    finally:
        idx.close()
    report.errors = [*skipped, *report.errors]
    if args.json:
        print_json({**report.to_dict(), "embedding": run.to_dict(),
                    **({"captions": caption_run.to_dict()} if caption_run else {})})
    else:
        print(run.summary())
        if caption_run:
            print(caption_run.summary())
        print(report.summary())
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Add shard files to the index at INDEX, creating it from the first shard's bundle when it does not exist."""
    from ..distributed.importer import import_shards
    from ..distributed.shards import read_shard_meta, shard_files
    from ..index import META_FILE, Index

    files = shard_files(args.shards)
    if (args.index / META_FILE).exists():
        idx = Index.open(args.index, repair=args.repair)
        for msg in idx.repairs:
            print(f"repaired: {msg}", file=sys.stderr)
    else:
        meta = read_shard_meta(files[0])
        idx = Index.create(args.index, bundle=meta.bundle, dim=meta.dim, space=meta.space, metric=args.metric,
                           dtype=args.dtype, info={"bundle_path": meta.bundle_path, "variant": meta.variant})
    try:
        try:
            report = import_shards(idx, files, batch_size=args.batch_size, progress=not args.no_progress)
        except KeyboardInterrupt:
            idx.save()  # commits the rows imported so far (a second interrupt leaves the last save's state)
            print(f"\ninterrupted: the rows imported so far are saved in {idx.path}; rerun the same command to "
                  "add the rest", file=sys.stderr)
            return 130
    finally:
        idx.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
    return 0


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
    ix = sub.add_parser("index", help="build or extend a search index from a folder of images",
                        description="Build or extend a search index (usearch + SQLite) from a folder of images.")
    ixs = ix.add_subparsers(dest="index_command", required=True, metavar="{build,add,import}")

    b = ixs.add_parser("build", help="embed a folder into a new index (reruns resume it)",
                       description="Embed every image of a folder into a new index; rerunning resumes it.")
    b.add_argument("bundle", type=Path, help="bundle directory written by `crossmodal export`")
    b.add_argument("--out", type=Path, required=True, metavar="INDEX", help="index directory to create (or resume)")
    _ingest_options(b, "bundle variant to embed with (default cpu-fp32)")
    _storage_options(b)
    _ray_options(b)
    b.set_defaults(func=run_build)

    a = ixs.add_parser("add", help="embed new or changed files of a folder inside the index root",
                       description="Embed the new or changed files of a folder inside the index root.")
    a.add_argument("index", type=Path, help="index directory written by `crossmodal index build`")
    _ingest_options(a, "bundle variant to embed with (default: the one the index was built with)")
    a.add_argument("--bundle", type=Path, help="bundle to embed with (default: the one recorded at build)")
    a.add_argument("--repair", action="store_true", help="drop inconsistent entries instead of refusing to open")
    a.set_defaults(func=run_add)

    m = ixs.add_parser("import", help="add parquet shard files (from `index build --ray`) to an index",
                       description="Add the rows of shard files written by `crossmodal index build --ray` (or "
                                   "crossmodal.distributed) to an index, creating it when it does not exist. "
                                   "Shards of another space or dim are refused; rows that failed to embed are "
                                   "reported; keys already present are skipped.")
    m.add_argument("index", type=Path, help="index directory (created from the first shard's bundle if missing)")
    m.add_argument("shards", type=Path, nargs="+", metavar="SHARDS", help="shard files or directories of them")
    m.add_argument("--batch-size", type=positive, default=16384, metavar="N",
                   help="rows per index add (default 16384)")
    _storage_options(m)
    m.add_argument("--repair", action="store_true", help="drop inconsistent entries instead of refusing to open")
    add_no_progress(m)
    add_json(m, "the import report")
    m.set_defaults(func=run_import)


def _storage_options(p: argparse.ArgumentParser) -> None:
    from ..index import DTYPES, METRICS

    p.add_argument("--metric", choices=METRICS, default="cos", help="similarity metric of a new index (default cos)")
    p.add_argument("--dtype", choices=DTYPES, default="f32",
                   help="vector storage of a new index (default f32; f16/i8 trade recall for memory)")


def _ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (the `ray` extra: pip install 'crossmodal[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="embed on a Ray cluster into parquet shards, then import them; --images may then be a "
                        "parquet file listing images (path[, caption] columns)")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join, from a node of it (auto, or HEAD_IP:6379; default: start a local one)")
    g.add_argument("--shards-dir", type=Path, metavar="DIR",
                   help="where shard files go (default: INDEX.shards beside the index); reruns skip the shards "
                        "already there")
    g.add_argument("--shard-size", type=positive, default=1024, metavar="N", help="images per shard (default 1024)")
    g.add_argument("--actors", type=positive, metavar="N",
                   help="embedding actors, each loading the bundle once (default: as many as the cluster's "
                        "CPUs, or GPUs, hold)")
    g.add_argument("--cpus-per-actor", type=positive, default=1, metavar="N",
                   help="CPUs each actor holds, and its onnxruntime threads unless --threads (default 1)")
    g.add_argument("--gpus-per-actor", type=float, default=0, metavar="X",
                   help="GPUs each actor holds (with --variant gpu-fp16 on a GPU cluster; default 0)")
