"""Build TensorRT engines from a bundle's gpu-fp16 graphs on the GPU machine that will run them, and check them.

    crossmodal export tensorrt build BUNDLE [--tower image|text] [--fp16] [--int8 --calib FOLDER]
                                     [--min 1 --opt 8 --max 64] [--timing-cache FILE] [--workspace-gb 4]
    crossmodal export tensorrt check BUNDLE      # which engines match this machine

`crossmodal trt ...` is an alias kept for now.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crossmodal.errors import ArtifactError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tensorrt_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build engines from the bundle's gpu-fp16 ONNX graph")
    b.add_argument("bundle", type=Path, help="bundle directory with a gpu-fp16 variant")
    b.add_argument("--tower", choices=["image", "text"], help="one tower (default: every image/text tower)")
    b.add_argument("--fp16", action="store_true", help="allow fp16 kernels (the default when --int8 is not given)")
    b.add_argument("--int8", action="store_true", help="int8 with entropy calibration (needs --calib)")
    b.add_argument("--calib", type=Path, help="image folder (image tower) or caption file, one per line (text tower)")
    b.add_argument("--min", help="smallest shape: BATCH or BATCHxSEQUENCE (default 1 / 1x1)")
    b.add_argument("--opt", help="shape TensorRT tunes for (default 8 / 8x32)")
    b.add_argument("--max", help="largest shape (default 64 / 64xMAX_LENGTH)")
    b.add_argument("--timing-cache", type=Path, help="timing cache file to reuse and update "
                   "(default: <bundle>/<tower>/gpu-trt-fp16/timing.smXY.trtA.B.cache)")
    b.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit in GiB (default: %(default)s)")
    b.set_defaults(action=_build)
    c = sub.add_parser("check", help="list engines in a bundle and whether they run on this machine")
    c.add_argument("bundle", type=Path, help="bundle directory")
    c.set_defaults(action=_check)


def run(args: argparse.Namespace) -> int:
    return int(args.action(args))


def _build(args: argparse.Namespace) -> int:
    from crossmodal.manifest import read_bundle

    from ..trt import build_tower, parse_shape_arg

    shapes = {k: (parse_shape_arg(getattr(args, k)) if getattr(args, k) else None) for k in ("min", "opt", "max")}
    towers = [args.tower] if args.tower else [t for t in ("image", "text") if t in read_bundle(args.bundle).towers]
    for tower in towers:
        engine = build_tower(args.bundle, tower, fp16=args.fp16 or not args.int8, int8=args.int8, calib=args.calib,
                             shapes=shapes, timing_cache=args.timing_cache, workspace_gb=args.workspace_gb)
        print(f"wrote {engine}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from crossmodal.gpu import ENGINE_SUFFIX, TRT_VARIANT, check_engine, current_device, read_engine_info
    from crossmodal.manifest import read_bundle

    device = current_device()
    print(f"this machine: {device.name} compute capability {device.compute_capability}, TensorRT {device.tensorrt_version}")
    bad = 0
    for tower, folder in read_bundle(args.bundle).towers.items():
        for engine in sorted((Path(args.bundle) / folder / TRT_VARIANT.name).glob(f"*{ENGINE_SUFFIX}")):
            try:
                check_engine(read_engine_info(engine), device, engine)
                print(f"OK   {tower}: {engine.name}")
            except ArtifactError as exc:
                bad += 1
                print(f"NO   {tower}: {exc}")
    return 1 if bad else 0
