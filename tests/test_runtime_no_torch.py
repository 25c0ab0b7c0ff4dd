"""The runtime works in a process where torch, transformers and optimum cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import crossmodal

BLOCKED = ("torch", "transformers", "optimum", "sentence_transformers", "tensorflow", "jax", "timm", "open_clip")

# Run first in each test process: the packages named in the last argument cannot be imported.
BLOCKER = r"""
import importlib.abc, json, sys
BLOCKED = set(sys.argv[-1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test process")
        return None

sys.meta_path.insert(0, Block())
"""

SCRIPT = BLOCKER + r"""
import crossmodal
after_import = sorted(m for m in ("onnxruntime", "usearch", "PIL", "tokenizers", "numpy") if m in sys.modules)
enc = crossmodal.load(sys.argv[1], variant=sys.argv[2])
import numpy as np
rng = np.random.default_rng(0)
img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
out = {
    "after_import": after_import,
    "text": enc.encode_text(["two dogs in the snow", "zwei Hunde im Schnee"]).tolist(),
    "image": enc.encode_image([img]).tolist(),
    "heavy_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}
print(json.dumps(out))
"""


def _run(bundle: Path, variant: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle), variant, ",".join(BLOCKED)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_encoding_works_without_torch(tiny_clip_bundle: Path) -> None:
    for variant in ("cpu-fp32", "cpu-int8"):
        out = _run(tiny_clip_bundle, variant)
        assert out["heavy_loaded"] == []
        # `import crossmodal` alone pulls in none of the runtime's own heavy dependencies either.
        assert out["after_import"] == []
        enc = crossmodal.load(tiny_clip_bundle, variant=variant)
        img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
        expected_text = enc.encode_text(["two dogs in the snow", "zwei Hunde im Schnee"])
        np.testing.assert_allclose(np.array(out["text"]), expected_text, atol=1e-6)
        np.testing.assert_allclose(np.array(out["image"]), enc.encode_image([img]), atol=1e-6)


def test_runtime_sources_never_import_heavy_frameworks() -> None:
    runtime = Path(crossmodal.__file__).parent
    # Installed from a wheel, the export side and the benchmarks sit inside the package
    # folder (crossmodal/export, crossmodal/bench); they are not the runtime.
    not_runtime = {runtime / "export", runtime / "bench"}
    offenders = []
    for path in runtime.rglob("*.py"):
        if not_runtime.intersection(path.parents):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in BLOCKED:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


# The packages of every extra but `cpu` (serve, ray, bench, triton, dev clients): an install of
# `pip install 'crossmodal[cpu]'` has none of them.
NOT_IN_CPU_EXTRA = ("starlette", "uvicorn", "httptools", "uvloop", "orjson", "prometheus_client", "multipart",
                    "python_multipart", "ray", "pyarrow", "matplotlib", "psutil", "aiohttp", "tritonclient", "httpx",
                    "openai", "selenium")

CORE_SCRIPT = BLOCKER + r"""
import io, tempfile
from contextlib import redirect_stdout
import numpy as np
import crossmodal
from crossmodal.cli import main
from crossmodal.index import Index
from crossmodal.ingest import ingest_folder, read_captions

bundle, images = sys.argv[1], sys.argv[2]
enc = crossmodal.load(bundle, variant="cpu-fp32")
path = tempfile.mkdtemp() + "/core.idx"
with Index.create(path, bundle=enc.bundle, root=images) as idx:
    ingest_folder(idx, enc, images, captions=read_captions(images + "/captions.jsonl"), progress=False)
search = crossmodal.Retriever(enc, Index.open(path, read_only=True))
out = {
    "plain": [h.path for h in search.search_text("a red circle", k=3)],
    "fused": [h.path for h in search.search_text("a red circle", k=3, fuse="captions")],
    "hybrid": [h.path for h in search.search_text("checkerboard", k=3, hybrid=True)],
}
buf = io.StringIO()
with redirect_stdout(buf):
    code = main(["search", path, "a red circle", "-k", "3", "--json", "--bundle", bundle, "--variant", "cpu-fp32"])
out["cli"] = [h["path"] for h in json.loads(buf.getvalue())["results"]] if code == 0 else code
out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps(out))
"""


def test_the_core_runs_with_the_cpu_extra_only(tiny_clip_bundle: Path) -> None:
    """Load, encode, index, fused / hybrid search and `crossmodal search` with every package
    of the other extras unimportable: what `pip install 'crossmodal[cpu]'` gives."""
    images = str(Path(__file__).resolve().parent.parent / "examples" / "images")
    proc = subprocess.run([sys.executable, "-c", CORE_SCRIPT, str(tiny_clip_bundle), images,
                           ",".join(BLOCKED + NOT_IN_CPU_EXTRA)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert len(out["plain"]) == len(out["fused"]) == len(out["hybrid"]) == 3
    assert out["fused"][0].endswith("red_circle.png") and out["hybrid"][0].endswith("checkerboard.png")
    assert out["cli"] == out["plain"]
