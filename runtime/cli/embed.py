"""``crossmodal embed BUNDLE --text ... | --image ...``: embeddings as JSON on stdout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import add_threads, add_variant, load_encoder, print_json


def run(args: argparse.Namespace) -> int:
    if bool(args.text) == bool(args.image):
        raise SystemExit("crossmodal embed: give --text TEXT... or --image PATH... (one of them)")
    enc = load_encoder(args.bundle, args.variant, "text" if args.text else "image", args.threads)
    items = args.text or [str(p) for p in args.image]
    vecs = enc.encode_text(items) if args.text else enc.encode_image(items)
    print_json({"bundle": enc.bundle.name, "variant": enc.variant, "dim": enc.dim,
                "embeddings": [{"input": i, "vector": [round(float(x), 7) for x in v]} for i, v in zip(items, vecs)]})
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("embed", help="print embeddings of texts or images as JSON",
                       description="Embed texts or images with one tower of a bundle and print the vectors as JSON.")
    p.add_argument("bundle", type=Path, help="bundle directory written by `crossmodal export`")
    p.add_argument("--text", nargs="+", metavar="TEXT", help="texts to embed with the text tower")
    p.add_argument("--image", nargs="+", type=Path, metavar="PATH", help="image files to embed with the image tower")
    add_variant(p)
    add_threads(p)
    p.set_defaults(func=run)
