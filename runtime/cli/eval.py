"""``crossmodal eval BUNDLE --dataset flickr30k|coco --root DIR``: Recall@1/5/10 both ways."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from .options import add_json, add_no_progress, add_threads, add_variant, load_encoder, positive, print_json
from .search_options import add_fusion, check_fusion


def _fusion(args: argparse.Namespace) -> Any:
    check_fusion(args)
    if args.fuse is None:
        if args.fuse_captions is not None:
            raise InputError("--fuse-captions FILE gives the captions to fuse: add --fuse captions")
        return None
    from ..evaluate import CaptionFusion
    from ..ingest import read_captions

    if args.fuse_captions is None:
        return CaptionFusion(mode=args.fuse_mode, weight=args.fuse_weight)
    by_name = {name.rsplit("/", 1)[-1]: caps for name, caps in read_captions(args.fuse_captions).items()}
    return CaptionFusion(mode=args.fuse_mode, weight=args.fuse_weight, captions=by_name,
                         source=str(args.fuse_captions))


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate, load_karpathy

    fusion = _fusion(args)
    data = load_karpathy(args.root, args.dataset, args.split, json_path=args.karpathy_json,
                         captions_per_image=args.captions_per_image, limit=args.limit)
    enc = load_encoder(args.bundle, args.variant, None, args.threads)
    scores = evaluate(enc, data, image_batch_size=args.batch_size, progress=not args.no_progress and not args.json,
                      fusion=fusion)
    if args.json:
        out = scores.to_dict()
        out["bundle"] = getattr(enc.bundle, "name", None)
        out["variant"] = getattr(enc, "variant", None)
        print_json(out)
    else:
        print(scores.format_table())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="Recall@1/5/10 on the Karpathy test split of Flickr30k or COCO",
                       description="Embed a Karpathy split with both towers of a bundle and print Recall@1/5/10 "
                                   "text -> image and image -> text.")
    p.add_argument("bundle", type=Path, help="bundle directory with an image and a text tower")
    p.add_argument("--dataset", choices=("flickr30k", "coco"), required=True, help="which dataset's Karpathy split")
    p.add_argument("--root", type=Path, required=True, help="dataset folder (images + dataset_<name>.json)")
    p.add_argument("--split", default="test", help="Karpathy split to score (default test)")
    p.add_argument("--karpathy-json", type=Path, metavar="FILE", help="path of dataset_<name>.json if not under --root")
    p.add_argument("--captions-per-image", type=positive, metavar="N", help="keep only the first N captions per image")
    p.add_argument("--limit", type=positive, metavar="N", help="first N images only (smoke runs)")
    p.add_argument("--batch-size", type=positive, default=32, metavar="N", help="images per model call (default 32)")
    add_fusion(p, "also rank text -> image")
    p.add_argument("--fuse-captions", type=Path, metavar="FILE",
                   help="captions to fuse (.jsonl/.csv as for `index build --captions`, matched by file name), "
                        "e.g. a captioner's output (default: the split's reference captions, leave-one-out)")
    add_variant(p, default=None, help="bundle variant to embed with (default cpu-fp32)")
    add_threads(p)
    add_no_progress(p)
    add_json(p, "the scores")
    p.set_defaults(func=run)
