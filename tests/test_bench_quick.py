"""CI smoke test of the benchmark harness: `crossmodal bench --quick` runs and writes valid outputs.

Not a timed test: the figures of a tiny random model on a CI runner mean
nothing, so only the shape of the outputs is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "crossmodal.cli", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    return proc, out


def test_quick_bench_exits_cleanly(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out / 'results.md'}" in proc.stdout


def test_quick_bench_json_has_every_scenario_with_fidelity(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["quick"] is True
    assert {r["scenario"] for r in result["rows"]} == set("abcdef")
    assert result["environment"]["threads"] == 2
    assert result["environment"]["packages"]["onnxruntime"]
    timed = [r for r in result["rows"] if r["scenario"] in "abc"]
    for r in timed:
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] * 0.999, r
        # Every crossmodal speed figure carries its fidelity against PyTorch fp32.
        if r["engine"].startswith("crossmodal"):
            assert 0.99 <= r["fidelity"]["min_cos"] <= 1.0 + 1e-9, r
            assert r["x_torch_fp32"] > 0
    cold = {r["engine"]: r for r in result["rows"] if r["scenario"] == "e"}
    # Worker RSS must be the worker's own (VmHWM), not inherited from the parent.
    assert cold["crossmodal-cpu-int8"]["peak_rss_mb"] < cold["torch-fp32"]["peak_rss_mb"]
    size = {r["engine"]: r["size_mb"] for r in result["rows"] if r["scenario"] == "f"}
    assert 0 < size["crossmodal[cpu]"] < size["torch+transformers"]
    assert all(t["met"] is None for t in result["targets"])  # targets do not apply to tiny models


def test_quick_bench_writes_markdown_and_png(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    md = (out / "results.md").read_text()
    for heading in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## (f)", "fidelity min / mean cos"):
        assert heading in md
    for name in ("latency_vs_batch.png", "speedup.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
