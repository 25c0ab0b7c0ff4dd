"""``crossmodal serve BUNDLE [--index INDEX]... [--read-only] ...``: run the service on uvicorn.

Binds 127.0.0.1 unless ``--host`` says otherwise, and prints
``crossmodal serve: listening on http://HOST:PORT`` once the socket is bound (``--port 0``
picks a free port). The bundle and the index are loaded before the socket is bound, so
a wrong path fails at once with exit code 2; the warm-up and the canary run after
(``/health/ready`` answers 503 until they pass). SIGTERM or Ctrl-C: stop accepting,
answer what is queued, save the index, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any, Sequence

from ..errors import CrossmodalError
from ..variants import VARIANTS
from .config import ServeConfig


def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog="crossmodal serve", description=(
        "Serve a bundle over HTTP: OpenAI-compatible /v1/embeddings, /v1/search, /v1/rank, /v1/items, "
        "/v1/models, /health/live, /health/ready, /metrics. Requests from many clients are batched per tower."))
    p.add_argument("bundle", help="bundle directory written by `crossmodal export`")
    p.add_argument("--index", action="append", metavar="INDEX",
                   help="index directory to search and add to (created empty when missing); repeat it to search "
                        "several shards of one collection as one index (opened read-only, never created)")
    p.add_argument("--read-only", action="store_true",
                   help="open the index as a reader: no writer lock, so replicas can share one index; "
                        "POST/DELETE /v1/items answer 403")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="variant to run (default: cpu-fp32)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 to accept connections from other machines)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port; default 8000)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"items per model call (default {d.max_batch})")
    p.add_argument("--max-tokens-per-batch", type=int, default=d.max_tokens_per_batch,
                   help=f"text tokens per model call, counted after padding (default {d.max_tokens_per_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="wait up to this long for a fuller batch (default 0: run as soon as a tower is free)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"items waiting per tower before requests get 429 (default {d.max_queue})")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs,
                   help=f"inputs per request; more get 413 (default {d.max_inputs})")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2 ** 20,
                   help=f"request body limit in MiB; larger get 413 (default {d.max_body_bytes // 2 ** 20})")
    p.add_argument("--deadline", type=float, default=d.deadline_s,
                   help=f"seconds a request may take before it gets 504 (default {d.deadline_s:g})")
    p.add_argument("--cache-size", type=int, default=d.cache_size,
                   help=f"text-query embeddings kept in the LRU cache (0 disables; default {d.cache_size})")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads per tower (default: one per physical core)")
    p.add_argument("--spin-wait", action="store_true",
                   help="let idle onnxruntime threads spin-wait for work (default off: they sleep and leave the "
                        "cores to the event loop and decoders; on only for cores that do nothing else)")
    p.add_argument("--decode-workers", type=int, default=d.decode_workers,
                   help="threads decoding images (default 0: one per CPU)")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="require 'Authorization: Bearer <key>' (all routes but /health/*), the key read from the "
                        "environment variable NAME (never from the command line, which other users can see)")
    p.add_argument("--uploads-dir", help="where images added by POST /v1/items are stored "
                   "(default: INDEX_ROOT/crossmodal-uploads, or INDEX/uploads when the index has no root)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (default info: one line per request)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        import uvicorn

        config = _config(args)
        if args.read_only and not args.index:
            raise ValueError("--read-only opens the index as a reader: give --index INDEX too")
        from .app import create_app
        from .service import load_model, open_indexes

        model = load_model(args.bundle, args.variant, args.threads, spin=config.spin_wait)
        encoder = getattr(model, "encoder", model)
        index = open_indexes(args.index, encoder, read_only=args.read_only) if args.index else None
        app = create_app(model, index, variant=args.variant, threads=args.threads, config=config,
                         uploads_dir=args.uploads_dir)
        sock = _bind(args.host, args.port)
    except (CrossmodalError, OSError, ValueError) as exc:
        print(f"crossmodal serve: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"crossmodal serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=args.log_level, access_log=False, lifespan="on",
        # In-flight requests get their deadline to finish after SIGTERM, then the lifespan saves the index.
        timeout_graceful_shutdown=int(config.deadline_s) + 5))
    # uvicorn re-raises the signal it shut down for; answered here, the drained exit is 0.
    signal.signal(signal.SIGTERM, _exit_zero)
    server.run(sockets=[sock])
    return 0


def _exit_zero(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _config(args: argparse.Namespace) -> ServeConfig:
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    return ServeConfig(max_batch=args.max_batch, max_tokens_per_batch=args.max_tokens_per_batch,
                       max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=min(args.max_inputs,
                                                                                            args.max_queue),
                       max_body_bytes=int(args.max_body_mb * 2 ** 20), deadline_s=args.deadline,
                       cache_size=args.cache_size, api_key=key, decode_workers=args.decode_workers,
                       spin_wait=args.spin_wait)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without
    # it every response waited ~40 ms for the client's delayed ACK (measured: 48 ms -> <1 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


__all__ = ["main", "build_parser"]
