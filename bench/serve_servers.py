"""The servers the service benchmark measures, each in its own process, and their memory.

* ``crossmodal serve`` (``python -m crossmodal.serve``) on 127.0.0.1, port 0: the
  server prints ``crossmodal serve: listening on http://127.0.0.1:PORT`` once bound,
  then ``/health/ready`` turns 200 after the warm-up and canary;
* infinity (``infinity_emb v2``, PyPI ``infinity-emb``) from its own venv, because
  it pins numpy < 2, sentence-transformers < 4 and transformers 4.x; installed with
  the project's constraints file so torch stays at the project's pinned version.

:class:`RssSampler` polls the resident memory of a process tree (psutil) while a
load runs, so "peak server RSS" is the server's, not the load generator's.
Everything binds to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

LISTENING = re.compile(r"crossmodal serve: listening on (http://127\.0\.0\.1:\d+)")
INFINITY_VERSION = "0.0.78"
INFINITY_SPEC = f"infinity-emb[server,torch,optimum]=={INFINITY_VERSION}"


class ServerError(RuntimeError):
    """A server exited early or did not become ready in time; the message holds its log's tail."""


@dataclass
class Server:
    """A running server process: ``url``, the ``model`` name its embedding route expects, its log."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    model: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


def server_env(threads: int) -> dict[str, str]:
    """The same thread budget for every engine; no telemetry, no hub access."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
    return env


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return 0


def _wait(server: Server, ready_path: str, deadline: float) -> None:
    while _get(server.url + ready_path) != 200:
        if not server.alive():
            raise ServerError(f"{server.name} exited with code {server.proc.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            server.stop(timeout=5)
            raise ServerError(f"{server.name} was not ready within the time limit:\n{server.log_tail()}")
        time.sleep(0.1)


def start_crossmodal(name: str, bundle: Path, args: Sequence[str], *, log_dir: Path, threads: int,
                     timeout: float = 300.0) -> Server:
    """``python -m crossmodal.serve BUNDLE --host 127.0.0.1 --port 0 --threads T *args``, ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "crossmodal.serve", str(bundle), "--host", "127.0.0.1", "--port", "0",
           "--threads", str(threads), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(threads))
    server = Server(name, "", proc, log_path)
    deadline = time.monotonic() + timeout
    while not server.url:
        m = LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if m:
            server.url = m.group(1)
        elif not server.alive() or time.monotonic() > deadline:
            server.stop(timeout=5)
            raise ServerError(f"{' '.join(cmd)} did not start:\n{server.log_tail()}")
        else:
            time.sleep(0.05)
    _wait(server, "/health/ready", deadline)
    server.model = _model_id(server.url)
    return server


def _model_id(url: str) -> str | None:
    import json

    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            data = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    rows = data.get("data") or []
    return rows[0].get("id") if rows else None


def free_port() -> int:
    """A port the kernel reports free (for servers that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_infinity(venv: Path, model_dir: Path, *, engine: str, log_dir: Path, threads: int,
                   batch_size: int = 32, timeout: float = 600.0) -> Server:
    """infinity serving ``model_dir`` with ``engine`` (torch | optimum), ready (model warmed up)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    venv, model_dir = venv.resolve(), model_dir.resolve()  # it runs in log_dir: no relative paths
    log_path = log_dir / f"infinity-{engine}.log"
    port = free_port()
    cmd = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
           "--engine", engine, "--device", "cpu", "--batch-size", str(batch_size), "--host", "127.0.0.1",
           "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(threads),
                                cwd=str(log_dir))
    server = Server(f"infinity-{engine}", f"http://127.0.0.1:{port}", proc, log_path, model="minilm")
    _wait(server, "/health", time.monotonic() + timeout)
    return server


def ensure_infinity_venv(venv: Path, constraints: Path, log: Callable[[str], None] = print) -> str | None:
    """Create ``venv`` with infinity if missing; returns None when usable, else why not (one line)."""
    exe = venv / "bin" / "infinity_emb"
    if exe.is_file():
        return None
    if not constraints.is_file():
        return f"no constraints file at {constraints} (needed to keep torch at the project's pin)"
    log(f"  creating {venv} with {INFINITY_SPEC} (once; several minutes) ...")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", "-c", str(constraints), INFINITY_SPEC]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return f"`{' '.join(cmd)}` failed: {tail}"
    return None if exe.is_file() else f"{exe} missing after installing {INFINITY_SPEC}"


class RssSampler:
    """Peak resident memory (MiB) of a process and its children, polled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        import psutil

        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2**20
        except psutil.Error:
            return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_mb = max(self.peak_mb, self.rss_mb())


__all__ = ["Server", "ServerError", "RssSampler", "start_crossmodal", "start_infinity", "ensure_infinity_venv",
           "server_env", "free_port", "INFINITY_SPEC"]
