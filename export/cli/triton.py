"""Write a Triton Inference Server model repository (one model per tower) from a bundle.

    crossmodal export triton models/clip-vit-b-32 --out triton-repo --variant gpu-fp16

Scheduling options left out take the variant's defaults (GPU: batches up to 64,
preferring 8/16/32, one instance; CPU: batches up to 16, preferring 4/8, two instances).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossmodal.cli.options import non_negative, positive
from crossmodal.variants import TRITON


def _batch_sizes(text: str) -> tuple[int, ...]:
    """argparse ``type=``: ``"8,16,32"`` -> (8, 16, 32), each a positive integer."""
    sizes = tuple(positive(x.strip()) for x in text.split(",") if x.strip())
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle directory written by `crossmodal export`")
    p.add_argument("--out", required=True, type=Path, help="model repository directory to (re)write")
    p.add_argument("--variant", default="gpu-fp16", choices=TRITON,
                   help="bundle variant the models serve (default: %(default)s)")
    p.add_argument("--max-batch", type=positive, metavar="N", help="max_batch_size (default 64 on GPU, 16 on CPU)")
    p.add_argument("--preferred", type=_batch_sizes, metavar="N,N,...",
                   help="comma list of preferred batch sizes, each <= --max-batch "
                        "(default 8,16,32 on GPU, 4,8 on CPU, those <= --max-batch)")
    p.add_argument("--queue-delay-us", type=non_negative, metavar="US",
                   help="max_queue_delay_microseconds (default 2000 on GPU, 1000 on CPU)")
    p.add_argument("--instances", type=positive, metavar="N", help="instances per model (default 1 on GPU, 2 on CPU)")


def run(args: argparse.Namespace) -> Path:
    from ..triton import TritonSettings, default_settings, export_triton

    base = default_settings(args.variant)
    max_batch = base.max_batch_size if args.max_batch is None else args.max_batch
    preferred = args.preferred or tuple(b for b in base.preferred_batch_sizes if b <= max_batch)
    settings = TritonSettings(
        max_batch_size=max_batch, preferred_batch_sizes=preferred or (max_batch,),
        max_queue_delay_us=base.max_queue_delay_us if args.queue_delay_us is None else args.queue_delay_us,
        instances=base.instances if args.instances is None else args.instances,
    )
    return export_triton(args.bundle, args.out, args.variant, settings)
