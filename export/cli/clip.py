"""Export a CLIP checkpoint's image and text towers (transformers CLIPModel or sentence-transformers clip-ViT-*).

    crossmodal export clip --model openai/clip-vit-base-patch32 --out models/clip-vit-b-32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .bundle_options import add_bundle_arguments, bundle_options

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id or local dir: transformers CLIP or sentence-transformers clip-ViT-* "
                        "(default: %(default)s)")
    add_bundle_arguments(p, space_help="embedding-space id (default: the model id, or its folder name)",
                         calib_help="folder of images for static int8 calibration "
                                    "(default: the example images shipped with crossmodal)")


def run(args: argparse.Namespace) -> Path:
    from ..clip import export
    from ..resources import calibration_images

    return export(args.model, bundle_options(args, calib_default=calibration_images()))
