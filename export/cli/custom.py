"""Export a custom dual encoder: your own torch image and text modules, your preprocessing, your tokenizer.

    crossmodal export custom --image my_models:image_tower --text my_models:text_tower \\
        --preprocess preprocess.json --tokenizer ./tokenizer --out models/my-dual-encoder

Each factory (MODULE:FACTORY, or path/to/file.py:FACTORY; the current directory
is importable) is called with no arguments and returns a torch.nn.Module:
the image module maps pixel_values (n, 3, S, S) float32 to (n, dim), the text
module maps input_ids, attention_mask (n, L) int64 (plus token_type_ids when
the settings file asks for them) to (n, dim). The exported graphs L2-normalise
the outputs. The settings file gives the image preprocessing and the text
settings (see the README section "Custom dual encoders: writing a factory").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .bundle_options import add_bundle_arguments, bundle_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, metavar="MODULE:FACTORY",
                   help="factory of the image module: pixel_values (n, 3, S, S) -> (n, dim)")
    p.add_argument("--text", required=True, metavar="MODULE:FACTORY",
                   help="factory of the text module: input_ids, attention_mask (n, L) -> (n, dim)")
    p.add_argument("--preprocess", required=True, type=Path, metavar="FILE",
                   help="JSON settings file: image preprocessing (size, resize, crop, mean/std, interpolation) "
                        "and text settings (max_length, cleaning, lower_case, pad_id, token_type_ids)")
    p.add_argument("--tokenizer", required=True, metavar="DIR_OR_ID",
                   help="tokenizer directory or hub id, loaded with transformers' AutoTokenizer (fast); "
                        "its tokenizer.json goes into the bundle")
    add_bundle_arguments(p, space_help="embedding-space id (default: custom:<sha256 of the weights, 16 hex>)",
                         calib_help="folder of images for static int8 calibration "
                                    "(default: the example images shipped with crossmodal)")


def run(args: argparse.Namespace) -> Path:
    from ..custom import export
    from ..resources import calibration_images

    # As `python -m` does: factories in the folder the command runs from are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return export(args.image, args.text, args.preprocess, args.tokenizer,
                  bundle_options(args, calib_default=calibration_images()))
