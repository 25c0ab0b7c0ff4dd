"""Command-line options that every family exporter shares (``crossmodal export FAMILY ...``)."""

from __future__ import annotations

import argparse
from pathlib import Path

INT8_RECIPES = ["auto", "nbits8", "dynamic", "qdq"]


def add_bundle_arguments(p: argparse.ArgumentParser, *, space_help: str, calib_help: str) -> None:
    """``--out --targets --name --space --calib --int8-recipe --no-optimize``; family options go before."""
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--targets", default="cpu-fp32,cpu-int8", help="comma list of cpu-fp32, cpu-int8, gpu-fp16")
    p.add_argument("--name", help="bundle name (default: the --out folder name)")
    p.add_argument("--space", help=space_help)
    p.add_argument("--calib", type=Path, help=calib_help)
    p.add_argument("--int8-recipe", default="auto", choices=INT8_RECIPES)
    p.add_argument("--no-optimize", action="store_true", help="skip onnxruntime transformer fusions")
