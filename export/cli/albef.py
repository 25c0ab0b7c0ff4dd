"""Export an original ALBEF checkpoint: image and text towers plus the ITM re-ranker.

    crossmodal export albef --model ALBEF_4M.pth --config albef_4m --out models/albef-4m
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossmodal.cli.options import positive

from .bundle_options import add_bundle_arguments, bundle_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path,
                   help="original ALBEF checkpoint (.pth holding {'model': state_dict})")
    p.add_argument("--config", required=True,
                   help="model card albef_4m | albef_14m | retrieval_coco | retrieval_flickr, or a JSON/yaml "
                        "config in the original vocabulary")
    p.add_argument("--image-res", type=positive, metavar="PIXELS", help="export resolution (default: the config's; pos_embed is interpolated)")
    p.add_argument("--vocab",
                   help="bert-base-uncased vocab.txt, a directory holding it, or a hub id (default: bert-base-uncased)")
    p.add_argument("--no-rerank", action="store_true", help="skip the ITM re-ranker graph")
    add_bundle_arguments(p, space_help="embedding-space id (default: albef:<checkpoint stem>:<sha256 prefix>)",
                         calib_help="folder of images for static int8 calibration (default: random pixels)")


def run(args: argparse.Namespace) -> Path:
    from ..albef import export

    return export(args.model, args.config, bundle_options(args), image_res=args.image_res, vocab=args.vocab,
                  rerank=not args.no_rerank)
