"""One benchmark process: runs one job with one engine and prints its result as JSON.

``python -m crossmodal.bench.worker`` reads a job (JSON) on stdin and writes
``RESULT <json>`` as its last line of stdout. The runner starts a fresh
process per job, so torch and onnxruntime never share a process (their thread
pools would fight over the cores) and every process starts cold.

Engines:

* ``torch-fp32``: transformers ``CLIPModel`` as users get it (default
  attention implementation), ``torch.inference_mode``;
* ``torch-bf16``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  the strongest PyTorch setting on CPUs with AVX-512 BF16;
* ``crossmodal-<variant>``: the lean runtime (``crossmodal.load``), no torch imported;
* ``torch-fp32`` with a ``torch_module`` path in the job: that saved module instead of CLIPModel
  (the text towers of other families, ``crossmodal.bench.text_graphs``);
* ``onnxruntime-graph:NAME``: the ONNX file ``job["graphs"][NAME]`` in a session opened as the runtime
  opens its cpu variants (a candidate graph the export did not keep).

Jobs (``kind``): ``towers`` (scenario a), ``image_e2e`` (b), ``text_query`` (c),
``cold`` (d and e), ``peaks`` (the roofline's peaks, ``crossmodal.bench.roofline``). Embeddings computed on the timed inputs are saved to
``outputs`` so the parent can measure fidelity against ``torch-fp32``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

T_IMPORT = time.time()

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from .timing import Budget, measure  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    VmHWM, not ``getrusage().ru_maxrss``: Linux carries ru_maxrss over from the
    parent across fork + exec, so a worker started by a parent holding torch
    would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # other systems: no inheritance issue


def _normalise(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- engines


class TorchClip:
    """transformers CLIPModel in fp32 or under bf16 autocast."""

    def __init__(self, hf_dir: str, threads: int, bf16: bool):
        import torch
        from transformers import CLIPModel

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = CLIPModel.from_pretrained(hf_dir).eval()
        self.bf16 = bf16

    def _ctx(self) -> Any:
        import contextlib

        return self.torch.autocast("cpu", dtype=self.torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @staticmethod
    def _pooled(out: Any) -> Any:
        return out if hasattr(out, "float") else out.pooler_output  # transformers 4 returns a tensor, 5 an output object

    def image(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        with self.torch.inference_mode(), self._ctx():
            f = self._pooled(self.model.get_image_features(pixel_values=self.torch.from_numpy(pixels)))
            return self.torch.nn.functional.normalize(f.float(), dim=-1).numpy()

    def text(self, feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
        t = {k: self.torch.from_numpy(v) for k, v in feeds.items() if k in ("input_ids", "attention_mask")}
        with self.torch.inference_mode(), self._ctx():
            f = self._pooled(self.model.get_text_features(**t))
            return self.torch.nn.functional.normalize(f.float(), dim=-1).numpy()


class TorchModule:
    """A tower module saved whole (``torch.save``) by the text-graphs scenario: the very module the export
    traced, fp32, ``torch.inference_mode``; inputs in the graph's input order, output 0 (the embedding)."""

    def __init__(self, path: str, threads: int, input_names: list[str]):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.module = torch.load(path, weights_only=False).eval()
        self.names = list(input_names)

    def text(self, feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
        with self.torch.inference_mode():
            out = self.module(*(self.torch.from_numpy(feeds[n]) for n in self.names))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()


class OnnxGraph:
    """One ONNX graph file in a session opened as the runtime opens a cpu variant's (``make_session``):
    a candidate graph the export did not keep, measured next to the ones it did."""

    def __init__(self, path: str, threads: int):
        from crossmodal.session import make_session

        self.session = make_session(Path(path), "cpu-fp32", threads=threads)
        self.names = {i.name for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name  # the embedding, the one output the runtime fetches

    def text(self, feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
        out = self.session.run([self.output], {k: v for k, v in feeds.items() if k in self.names})[0]
        return np.asarray(out, np.float32)


class CrossmodalClip:
    """The lean runtime: ``crossmodal.load`` of one bundle variant."""

    def __init__(self, bundle: str, variant: str, threads: int, modality: str | None = None):
        import crossmodal

        self.enc = crossmodal.load(bundle, variant=variant, modality=modality, threads=threads)

    def image(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        assert self.enc.image is not None
        return self.enc.image.run_pixels(pixels)

    def text(self, feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.float32]:
        assert self.enc.text is not None
        return self.enc.text.run(feeds)


GRAPH_ENGINE = "onnxruntime-graph:"  # + a key of job["graphs"] (name -> ONNX file)


def make_engine(job: dict[str, Any], modality: str | None = None) -> Any:
    engine = job["engine"]
    if engine.startswith(GRAPH_ENGINE):
        return OnnxGraph(job["graphs"][engine[len(GRAPH_ENGINE):]], job["threads"])
    if engine == "torch-fp32" and job.get("torch_module"):
        return TorchModule(job["torch_module"], job["threads"], job["input_names"])
    if engine in ("torch-fp32", "torch-bf16"):
        return TorchClip(job["hf_dir"], job["threads"], bf16=engine == "torch-bf16")
    if engine.startswith("crossmodal-"):
        return CrossmodalClip(job["bundle"], engine[len("crossmodal-"):], job["threads"], modality)
    raise ValueError(f"unknown engine {engine!r}")


# ----------------------------------------------------------------------------- jobs


def _timed(fn: Callable[[], object], budget: Budget) -> list[float]:
    return [round(t, 4) for t in measure(fn, budget)]


def job_towers(job: dict[str, Any]) -> dict[str, Any]:
    """Scenario (a): each tower alone on prepared inputs, over a batch sweep."""
    eng = make_engine(job)
    inputs = np.load(job["inputs"])
    budget = Budget.from_dict(job["budget"])
    cases: dict[str, Any] = {}
    outputs: dict[str, NDArray[np.float32]] = {}
    for b in job.get("image_batches", []):
        px = inputs[f"image_b{b}"]
        outputs[f"image_b{b}"] = eng.image(px)
        cases[f"image_b{b}"] = {"tower": "image", "batch": b, "ms": _timed(lambda: eng.image(px), budget)}
    for b in job.get("text_batches", []):
        prefix = f"text_b{b}__"
        feeds = {k[len(prefix):]: inputs[k] for k in inputs.files if k.startswith(prefix)}
        outputs[f"text_b{b}"] = eng.text(feeds)
        cases[f"text_b{b}"] = {"tower": "text", "batch": b, "tokens": int(feeds["input_ids"].shape[1]),
                               "ms": _timed(lambda: eng.text(feeds), budget)}
    if job.get("outputs"):
        np.savez(job["outputs"], **outputs)
    return {"cases": cases}


def job_image_e2e(job: dict[str, Any]) -> dict[str, Any]:
    """Scenario (b): JPEG files on disk -> embeddings, decode and preprocess included."""
    paths = list(job["photos"])
    bs = int(job["batch"])
    budget = Budget.from_dict(job["budget"])
    if job["engine"].startswith("torch"):
        from PIL import Image
        from transformers import CLIPImageProcessor

        eng = make_engine(job)
        proc = CLIPImageProcessor.from_pretrained(job["hf_dir"])

        def run() -> NDArray[np.float32]:
            out = []
            for i in range(0, len(paths), bs):
                imgs = [Image.open(p).convert("RGB") for p in paths[i:i + bs]]
                px = proc(images=imgs, return_tensors="np")["pixel_values"].astype(np.float32)
                out.append(eng.image(px))
            return np.concatenate(out)
    elif job["engine"].endswith(FAST_DECODE):
        # Opt-in reduced-DCT JPEG decoding (crossmodal.image.preprocess(fast_decode=True)),
        # with the tower's own pipelining: two decode threads, next batch decoded
        # while the current one runs. Its fidelity figure is the measurement the
        # issue asks for before the option may become a default.
        from concurrent.futures import ThreadPoolExecutor

        from crossmodal.image import preprocess

        eng = make_engine({**job, "engine": job["engine"][: -len(FAST_DECODE)]}, modality="image")
        tower = eng.enc.image
        cfg = tower.preprocess_config

        def prep(chunk: list[str]) -> NDArray[np.float32]:
            half = (len(chunk) + 1) // 2
            parts = list(decoders.map(lambda c: preprocess(c, cfg, fast_decode=True), [chunk[:half], chunk[half:]]))
            return np.concatenate([p for p in parts if len(p)])

        decoders = ThreadPoolExecutor(2)
        prefetch = ThreadPoolExecutor(1)

        def run() -> NDArray[np.float32]:
            chunks = [paths[i:i + bs] for i in range(0, len(paths), bs)]
            out, pending = [], prefetch.submit(prep, chunks[0])
            for k in range(len(chunks)):
                px = pending.result()
                if k + 1 < len(chunks):
                    pending = prefetch.submit(prep, chunks[k + 1])
                out.append(tower.run_pixels(px))
            return np.concatenate(out)
    else:
        eng = make_engine(job, modality="image")

        def run() -> NDArray[np.float32]:
            return eng.enc.encode_image(paths, batch_size=bs)

    emb = run()
    ms = _timed(run, budget)
    if job.get("outputs"):
        np.savez(job["outputs"], e2e=emb)
    return {"cases": {f"e2e_b{bs}": {"images": len(paths), "batch": bs, "ms": ms}}}


FAST_DECODE = "+fast-decode"


def job_text_query(job: dict[str, Any]) -> dict[str, Any]:
    """Scenario (c): one query string -> tokenise -> encode -> top-10 HNSW search."""
    queries = list(job["queries"])
    budget = Budget.from_dict(job["budget"])
    if job["engine"].startswith("torch"):
        from transformers import CLIPTokenizer

        eng = make_engine(job)
        tok = CLIPTokenizer.from_pretrained(job["hf_dir"])

        def embed(q: str) -> NDArray[np.float32]:
            t = tok([q], padding=True, return_tensors="np")
            return eng.text({"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)})
    else:
        eng = make_engine(job, modality="text")

        def embed(q: str) -> NDArray[np.float32]:
            return eng.enc.encode_text([q])

    # Imported only after the engine: usearch 2.26 loaded before onnxruntime 1.32
    # makes `import onnxruntime` segfault (crossmodal.native_imports); a torch
    # worker never imports onnxruntime at all.
    from usearch.index import Index

    cases: dict[str, Any] = {}
    outputs: dict[str, NDArray[Any]] = {"queries": np.concatenate([embed(q) for q in queries])}
    for spec in job["indexes"]:
        idx = Index.restore(spec["path"], view=True)
        idx.expansion_search = int(spec["expansion_search"])
        counter = iter(range(10**9))

        def run(idx: Any = idx) -> object:  # bound now: the loop deletes idx to unmap each index file
            q = queries[next(counter) % len(queries)]
            return idx.search(embed(q)[0], 10)

        ms = _timed(run, budget)
        outputs[f"keys_n{spec['n']}"] = np.stack([np.asarray(idx.search(v, 10).keys) for v in outputs["queries"]])
        cases[f"query_n{spec['n']}"] = {"n": spec["n"], "batch": 1, "ms": ms}
        del idx
    if job.get("outputs"):
        np.savez(job["outputs"], **outputs)
    return {"cases": cases}


def job_cold(job: dict[str, Any]) -> dict[str, Any]:
    """Scenarios (d) and (e): import + load both towers + first text and image embedding; then peak RSS."""
    photo, text = job["photo"], job["text"]
    if job["engine"].startswith("torch"):
        import torch
        from PIL import Image
        from transformers import CLIPModel, CLIPProcessor

        torch.set_num_threads(job["threads"])
        model = CLIPModel.from_pretrained(job["hf_dir"]).eval()
        proc = CLIPProcessor.from_pretrained(job["hf_dir"])

        def embed(texts: list[str], photos: list[str]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            inp = proc(text=texts, images=[Image.open(p).convert("RGB") for p in photos], return_tensors="pt", padding=True)
            with torch.inference_mode():
                t = model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"])
                i = model.get_image_features(pixel_values=inp["pixel_values"])
            t, i = (x if hasattr(x, "float") else x.pooler_output for x in (t, i))
            return _normalise(t.float().numpy()), _normalise(i.float().numpy())
    else:
        import crossmodal

        enc = crossmodal.load(job["bundle"], variant=job["engine"][len("crossmodal-"):], threads=job["threads"])

        def embed(texts: list[str], photos: list[str]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            return enc.encode_text(texts), enc.encode_image(photos)

    t_emb, i_emb = embed([text], [photo])
    first = time.time()
    rss_first = peak_rss_mb()
    # Steady state: a batch of each, so peak RSS includes the activations of real work.
    embed(list(job["batch_texts"]), list(job["batch_photos"]))
    if job.get("outputs"):
        np.savez(job["outputs"], text=t_emb, image=i_emb)
    return {"cases": {"cold": {"first_embedding_s": first - float(job["t_spawn"]),
                               "import_started_s": T_IMPORT - float(job["t_spawn"]),
                               "peak_rss_mb_first": rss_first, "peak_rss_mb": peak_rss_mb()}}}


def job_peaks(job: dict[str, Any]) -> dict[str, Any]:
    """The roofline's peaks (fp32 GEMM, int8 GEMM, bandwidth) with onnxruntime, on the job's threads."""
    from .roofline import measure_peaks

    peaks = measure_peaks(int(job["threads"]), Budget.from_dict(job["budget"]), gemm_size=int(job["gemm_size"]),
                          bandwidth_mib=int(job["bandwidth_mib"]))
    return {"cases": {}, "peaks": peaks.to_dict()}


JOBS = {"towers": job_towers, "image_e2e": job_image_e2e, "text_query": job_text_query, "cold": job_cold,
        "peaks": job_peaks}


def main() -> int:
    job = json.loads(sys.stdin.read())
    result = JOBS[job["kind"]](job)
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_imported"] = "torch" in sys.modules
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
