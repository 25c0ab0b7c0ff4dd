"""The ``crossmodal`` command line.

``export`` and ``bench`` hand over to the torch-side packages (imported only
then); every other command runs on the lean runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import CrossmodalError


def _cmd_embed(args: argparse.Namespace) -> int:
    from .loader import load

    if bool(args.text) == bool(args.image):
        raise SystemExit("crossmodal embed: give --text TEXT... or --image PATH... (one of them)")
    enc = load(args.bundle, variant=args.variant, modality="text" if args.text else "image", threads=args.threads)
    vecs = enc.encode_text(args.text) if args.text else enc.encode_image([str(p) for p in args.image])
    items = args.text or [str(p) for p in args.image]
    out = {"bundle": enc.bundle.name, "variant": enc.variant, "dim": enc.dim,
           "embeddings": [{"input": i, "vector": [round(float(x), 7) for x in v]} for i, v in zip(items, vecs)]}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_bundle

    results = verify_bundle(args.bundle, [args.variant] if args.variant else None)
    for r in results:
        print(f"{'OK  ' if r.ok else 'FAIL'} {r.tower}/{r.variant}: {r.detail}")
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)} ok, {len(bad)} failed")
    return 1 if bad else 0


def _handover(module: str, argv: Sequence[str]) -> int:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"crossmodal: this command needs the export extra ({exc.name or exc} is missing): "
            "pip install 'crossmodal[export]'"
        ) from exc
    return int(mod.main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossmodal", description="Image-text retrieval encoders: export, embed, index, search, benchmark.")
    p.add_argument("--version", action="version", version=f"crossmodal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("export", help="export a checkpoint to a bundle (clip, mbert, albef; needs the export extra)", add_help=False)
    sub.add_parser("bench", help="benchmarks against PyTorch (needs the export and bench extras)", add_help=False)
    sub.add_parser("trt", help="build TensorRT engines on a GPU machine", add_help=False)

    e = sub.add_parser("embed", help="print embeddings as JSON")
    e.add_argument("bundle", type=Path)
    e.add_argument("--text", nargs="+")
    e.add_argument("--image", nargs="+", type=Path)
    e.add_argument("--variant", default="cpu-fp32")
    e.add_argument("--threads", type=int)
    e.set_defaults(func=_cmd_embed)

    v = sub.add_parser("verify", help="re-check sha256 and parity of every graph in a bundle")
    v.add_argument("bundle", type=Path)
    v.add_argument("--variant")
    v.set_defaults(func=_cmd_verify)

    try:
        from .cli_index import register
    except ImportError:  # pragma: no cover - index module not present in this build
        pass
    else:
        register(sub)
    return p


HANDOVER = {"export": "crossmodal.export.cli", "bench": "crossmodal.bench.cli", "trt": "crossmodal.export.trt_cli"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HANDOVER:
        try:
            return _handover(HANDOVER[argv[0]], argv[1:])
        except CrossmodalError as exc:
            print(f"crossmodal {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CrossmodalError as exc:
        print(f"crossmodal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
