"""The `crossmodal` command line: export, embed, verify, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import crossmodal


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossmodal.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_export_clip_from_the_command_line(tiny_clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-bundle"
    proc = _cli("export", "clip", "--model", str(tiny_clip_dir), "--out", str(out), "--targets", "cpu-fp32", "--no-optimize")
    assert proc.returncode == 0, proc.stderr
    assert (out / "bundle.json").is_file()
    assert sorted(p.name for p in (out / "text" / "cpu-fp32").iterdir()) == [
        "manifest.json", "model.onnx", "reference.npz", "tokenizer.json"]


def test_embed_prints_json_matching_the_api(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    proc = _cli("embed", str(tiny_clip_bundle), "--text", "two dogs in the snow", "a cat")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dim"] == 16 and [e["input"] for e in out["embeddings"]] == ["two dogs in the snow", "a cat"]
    expected = crossmodal.load(tiny_clip_bundle, modality="text").encode_text(["two dogs in the snow", "a cat"])
    np.testing.assert_allclose(np.array([e["vector"] for e in out["embeddings"]]), expected, atol=1e-6)

    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    proc = _cli("embed", str(tiny_clip_bundle), "--image", str(img), "--variant", "cpu-int8")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["embeddings"][0]["vector"]) == 16


def test_errors_are_one_line_messages_with_exit_code_2(tiny_clip_bundle: Path, tmp_path: Path) -> None:
    proc = _cli("embed", str(tmp_path / "nope"), "--text", "x")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    proc = _cli("embed", str(tiny_clip_bundle), "--image", str(bad))
    assert proc.returncode == 2 and "bad.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_command(tiny_clip_bundle: Path) -> None:
    proc = _cli("verify", str(tiny_clip_bundle))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 ok, 0 failed" in proc.stdout


def test_export_without_network_stops_at_once_with_instructions(tmp_path: Path) -> None:
    proc = _cli("export", "clip", "--model", "openai/clip-vit-base-patch32", "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2
    assert "--model /path/to/DIR" in proc.stderr and "Traceback" not in proc.stderr
