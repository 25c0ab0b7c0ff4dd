"""Start ``crossmodal serve`` in a subprocess on 127.0.0.1 and wait until it is ready.

Shared by the service tests (tests/test_serve_*.py) and the browser test. The server
binds port 0 (the kernel picks a free port, so two tests never race for one) and
prints ``crossmodal serve: listening on http://127.0.0.1:PORT`` once its socket is
bound; this helper reads that line from the server's log file, then polls
``GET /health/ready`` until it answers 200 (towers loaded, warmed up, canary passed).

>>> with running_server(bundle, "--index", str(tmp_path / "idx"), log_dir=tmp_path) as srv:  # doctest: +SKIP
...     httpx.post(f"{srv.url}/v1/embeddings", json={"input": "a dog"}).json()

For tests that need no real server, :func:`asgi_client` runs the app's lifespan in-process
and yields an ``httpx.AsyncClient`` over ``httpx.ASGITransport``.

Everything is bounded in time: a server that exits early or never gets ready raises
:class:`ServerStartError` holding its log, and ``stop`` kills what does not exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

LISTENING = re.compile(r"crossmodal serve: listening on (http://[\d.]+:(\d+))")


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log."""


@dataclass
class ServeProcess:
    """A running server: its base ``url``, ``port``, the ``proc`` and the file its output goes to."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (e.g. SIGTERM) without waiting."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; returns its exit code (kills it after ``timeout``)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: no chance to drain or save."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def start_server(bundle: str | os.PathLike[str], *args: str, log_dir: str | os.PathLike[str],
                 env: Mapping[str, str] | None = None, timeout: float = 120.0,
                 ready: bool = True) -> ServeProcess:
    """Start ``python -m crossmodal.serve BUNDLE --port 0 *args`` and wait for it.

    ``args``: more CLI options (``--index``, ``--max-queue``, ...). ``env``: extra environment
    variables (e.g. the API key named by ``--api-key-env``). ``ready``: also wait for
    ``/health/ready`` to answer 200 (else only for the socket). The log goes to a new file
    in ``log_dir``.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("serve-*.log")))
    log_path = log_dir / f"serve-{n}.log"
    full_env = dict(os.environ)
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "crossmodal.serve", str(bundle), "--host", "127.0.0.1", "--port", "0", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout
    url = port = None
    while url is None:
        m = LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if m:
            url, port = m.group(1), int(m.group(2))
            break
        _check_alive(proc, log_path, deadline)
        time.sleep(0.05)
    server = ServeProcess(url=url, port=port, proc=proc, log_path=log_path)
    if ready:
        while not _ready(url):
            _check_alive(proc, log_path, deadline)
            time.sleep(0.05)
    return server


@contextmanager
def running_server(bundle: str | os.PathLike[str], *args: str, log_dir: str | os.PathLike[str],
                   env: Mapping[str, str] | None = None, timeout: float = 120.0) -> Iterator[ServeProcess]:
    """:func:`start_server` as a context manager; the server gets SIGTERM (then SIGKILL) on exit."""
    server = start_server(bundle, *args, log_dir=log_dir, env=env, timeout=timeout)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            try:
                server.stop(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@contextlib.asynccontextmanager
async def asgi_client(app: Any, *, ready: bool = True, timeout: float = 60.0) -> AsyncIterator[Any]:
    """Run ``app``'s lifespan in this event loop and yield an ``httpx.AsyncClient`` for it.

    ``ready``: wait (at most ``timeout`` s) until ``/health/ready`` answers 200; a start-up
    failure raises :class:`ServerStartError` with the readiness details.
    """
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=timeout) as client:
            if ready:
                deadline = time.monotonic() + timeout
                while True:
                    r = await client.get("/health/ready")
                    if r.status_code == 200:
                        break
                    if r.json().get("status") == "failed" or time.monotonic() > deadline:
                        raise ServerStartError(f"the app did not get ready: {r.json()}")
                    await asyncio.sleep(0.02)
            yield client


def png_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    """A PNG of smooth gradients plus noise (:func:`helpers.images.random_rgb`), distinct per seed."""
    from PIL import Image

    from helpers.images import random_rgb

    buf = io.BytesIO()
    Image.fromarray(random_rgb(size[0], size[1], seed)).save(buf, format="PNG")
    return buf.getvalue()


def spin_setting(session: Any) -> str:
    """An onnxruntime session's ``session.intra_op.allow_spinning`` ("0", "1" or "default": never set)."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # onnxruntime raises for an entry never set: its default, spinning
        return "default"


def b64(data: bytes) -> str:
    """Standard base64 text of ``data``, as JSON requests carry images."""
    return base64.b64encode(data).decode()


def cosines(a: Any, b: Any) -> Any:
    """Row-wise cosine similarity of two (n, d) arrays (a single row broadcasts)."""
    import numpy as np

    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_alive(proc: subprocess.Popen[bytes], log_path: Path, deadline: float) -> None:
    log = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.poll() is not None:
        raise ServerStartError(f"crossmodal serve exited with code {proc.returncode}:\n{log}")
    if time.monotonic() > deadline:
        proc.kill()
        proc.wait(timeout=10)
        raise ServerStartError(f"crossmodal serve was not ready in time:\n{log}")


__all__ = ["ServeProcess", "ServerStartError", "start_server", "running_server", "asgi_client", "png_bytes", "b64", "cosines",
           "LISTENING"]
