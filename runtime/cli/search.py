"""``crossmodal search INDEX... "query" -k 5`` or ``--image PATH``: ranked hits as text or JSON.

Several INDEX paths are the shards of one collection, searched as one
(:func:`crossmodal.index.sharded.open_many`).

The query goes through :class:`crossmodal.retriever.Retriever`, the object the
Python API and the service use, so the command answers what the library answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import positive_int
from ..variants import DEFAULT_VARIANT
from .index import recorded_bundle
from .options import add_json, add_threads, add_top_k, add_variant, load_encoder, print_json
from .search_options import add_filters, add_fusion, check_fusion, filter_from_args


def _target(idx: Any, given: str | None) -> str:
    # An index of captions only (no images) is searched text -> text without --target.
    if given is not None:
        return given
    return "text" if idx.count("image") == 0 and idx.count("text") > 0 else "image"


def run(args: argparse.Namespace) -> int:
    from ..retriever import Retriever

    _split_positionals(args)
    if (args.query is None) == (args.image is None):
        raise InputError('give a query text or --image PATH (exactly one), e.g. crossmodal search INDEX "a dog" -k 5')
    k = positive_int("-k/--top-k", args.top_k)
    if args.rerank is not None and (args.image is not None or args.rerank < k):
        raise InputError(f"--rerank R re-scores the top R hits of a text query: give a query text and R >= -k ({k}).")
    check_fusion(args)
    if args.image is not None and (args.fuse is not None or args.hybrid):
        raise InputError("--fuse captions and --hybrid rank the hits of a text query: give a query text, not --image")
    where = filter_from_args(args)
    fusion = {"fuse": args.fuse, "fuse_mode": args.fuse_mode, "fuse_weight": args.fuse_weight, "hybrid": args.hybrid}
    idx = _open(args.indexes)
    try:
        bundle = recorded_bundle(idx, args.bundle)
        target = _target(idx, args.target)
        variant = args.variant or idx.info.get("variant")
        reranker = None
        if args.rerank is not None:
            from ..rerank import Reranker

            # The re-ranker's own text tower encodes the query too: one load, no second copy.
            reranker = Reranker.load(bundle, variant=variant or DEFAULT_VARIANT, threads=args.threads)
            enc = reranker.encoder
        else:
            enc = load_encoder(bundle, variant, "text" if args.query is not None else "image", args.threads)
        retriever = Retriever(enc, idx, reranker)
        if args.query is not None:
            hits = retriever.search_text(args.query, k, tower=target, exact=args.exact, rerank=args.rerank,
                                         where=where, **fusion)
        else:
            hits = retriever.search_image(str(args.image), k, tower=target, exact=args.exact, where=where)
        searched = "exact" if (args.exact if args.exact is not None else idx.uses_exact(target)) else "hnsw"
        root = idx.root
    finally:
        idx.close()
    rows = [{"rank": i + 1, "score": round(h.score, 6), "key": h.key, "path": h.path, "caption": h.caption}
            for i, h in enumerate(hits)]
    if args.rerank is not None:
        for r, h in zip(rows, hits):  # None: the file could not be read, the hit kept its embedding rank
            r["itm_score"] = None if h.itm_score is None else round(h.itm_score, 6)
    if args.json:
        shards = {"shards": [str(p) for p in args.indexes]} if len(args.indexes) > 1 else {}
        print_json({"index": str(args.index), **shards, "query": args.query,
                    "image": None if args.image is None else str(args.image), "target": target, "k": k,
                    "rerank": args.rerank, "search": searched, **_ranking(args, where), "results": rows})
        return 0
    for r in rows:
        itm = "" if args.rerank is None else ("   (unread)" if r["itm_score"] is None else f"  {r['itm_score']:+.4f}")
        print(f"{r['rank']:>3}{itm}  {r['score']:.4f}  {r['path'] or '-'}" + (f"  {r['caption']}" if r["caption"] else ""))
    if not rows:
        print(_no_hits(where, root))
    return 0


def _no_hits(where: Any, root: str | None) -> str:
    """Why a search printed nothing: an empty index, or a filter that keeps no item."""
    if where is None:
        return "(the index is empty)"
    if where.path_prefix is not None and root is not None:
        return (f"(no item matches the filter; --path-prefix is absolute or relative to the indexed folder "
                f"{root}, e.g. --path-prefix 2024/)")
    return "(no item matches the filter)"


def _ranking(args: argparse.Namespace, where: Any) -> dict[str, Any]:
    """How the hits were ranked and filtered, for --json (score is the fused score when fused)."""
    from ..fusion import DEFAULT_FUSE_WEIGHT

    fuse = None
    if args.fuse is not None:
        fuse = {"what": args.fuse, "mode": args.fuse_mode}
        if args.fuse_mode == "weighted":
            fuse["weight"] = DEFAULT_FUSE_WEIGHT if args.fuse_weight is None else args.fuse_weight
    flt = None if where is None else {k: v for k, v in vars(where).items() if v is not None}
    return {"fuse": fuse, "hybrid": args.hybrid, "filter": flt}


def _split_positionals(args: argparse.Namespace) -> None:
    """``INDEX... [QUERY]``: argparse hands every positional to INDEX (it cannot tell a query from
    a path); the last one is the query text unless ``--image`` is given and it is a directory."""
    from ..index import META_FILE

    given = [*args.index, *([args.query] if args.query is not None else [])]
    is_query = len(given) > 1 and (args.image is None or not Path(given[-1]).is_dir())
    args.query = given.pop() if is_query else None
    if args.query is not None and args.image is None and (Path(args.query) / META_FILE).is_file():
        raise InputError(f"{args.query} is an index, but the last positional is the query text: "
                         'crossmodal search INDEX... "a dog" (or --image PATH)')
    args.indexes = [Path(p) for p in given]
    args.index = args.indexes[0]


def _open(paths: list[Path]) -> Any:
    """One index, or several shards of one collection searched as one (read-only either way)."""
    from ..index import Index
    from ..index.sharded import open_many

    return Index.open(paths[0], read_only=True) if len(paths) == 1 else open_many(paths)


def register(sub: Any) -> None:
    from ..index import TOWERS

    p = sub.add_parser("search", help="query an index with a text or an image",
                       description="Query an index with a text or an image; prints rank, score, path and caption.")
    p.add_argument("index", nargs="+", metavar="INDEX",
                   help="index directory written by `crossmodal index build`; several: shards of one collection, "
                        "searched as one (e.g. shards/*.idx)")
    p.add_argument("query", nargs="?", help="query text, the last positional (or give --image)")
    p.add_argument("--image", type=Path, metavar="PATH", help="query image instead of a text")
    add_top_k(p, default=5, what="results")
    p.add_argument("--target", choices=TOWERS, default=None,
                   help="search the images (default) or the embedded captions; an index of captions only is "
                        "searched as text by default")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="exact", action="store_const", const=True, default=None,
                      help="scan every vector (default while the index is below its exact threshold)")
    mode.add_argument("--hnsw", dest="exact", action="store_const", const=False,
                      help="walk the HNSW graph even for a small index")
    p.add_argument("--rerank", type=int, metavar="R",
                   help="re-score the top R (>= k) hits with the bundle's ITM re-ranker (ALBEF) and order by it")
    add_fusion(p, "rank images")
    p.add_argument("--hybrid", action="store_true",
                   help="merge keyword hits (captions and file names, SQLite FTS5) with the vector hits by "
                        "reciprocal-rank fusion")
    add_filters(p)
    p.add_argument("--bundle", type=Path, help="bundle to encode the query (default: the one recorded at build)")
    add_variant(p, default=None, help="bundle variant to encode the query (default: the one the index was built with)")
    add_threads(p)
    add_json(p)
    p.set_defaults(func=run)
