"""Export a multilingual text encoder (M-BERT family), optionally paired with the CLIP image tower it was trained against.

    crossmodal export mbert --model sentence-transformers/clip-ViT-B-32-multilingual-v1 \\
        --image-bundle models/clip-vit-b-32 --out models/mclip-b32

Without --image-bundle / --image-model the bundle is text-only, in the model's own space.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .bundle_options import add_bundle_arguments, bundle_options

DEFAULT_MODEL = "sentence-transformers/clip-ViT-B-32-multilingual-v1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id or local dir: sentence-transformers model, M-CLIP checkpoint, or legacy M-BERT dir "
                        "(default: %(default)s)")
    image = p.add_mutually_exclusive_group()
    image.add_argument("--image-bundle", type=Path, help="exported CLIP bundle whose image tower is copied in")
    image.add_argument("--image-model", help="CLIP hub id or dir whose image tower is exported alongside")
    p.add_argument("--force-pairing", action="store_true",
                   help="pair with a CLIP other than the one the model card names (dims must still agree)")
    p.add_argument("--card", help="model card to check the pairing against, by card_name (default: the card whose "
                                  "hub id matches --model)")
    p.add_argument("--head", type=Path, help="legacy M-BERT: the '* Linear Weights.pkl' head file")
    p.add_argument("--base-config", type=Path, help="M-CLIP: config.json of the base transformer (modelBase)")
    add_bundle_arguments(p, space_help="text-only bundles: embedding-space id (default: the model id); a paired "
                                       "bundle takes the CLIP's space",
                         calib_help="--image-model: folder of images for static int8 calibration of the image tower "
                                    "(default: the example images shipped with crossmodal)")


def run(args: argparse.Namespace) -> Path:
    from ..mbert import export
    from ..resources import calibration_images

    calib_default = calibration_images() if args.image_model else None
    return export(args.model, bundle_options(args, calib_default=calib_default), image_bundle=args.image_bundle,
                  image_model=args.image_model, head=args.head, base_config=args.base_config, card=args.card,
                  force_pairing=args.force_pairing)
