"""Benchmarks of the crossmodal runtime against PyTorch, measured in the same run.

Run it with ``crossmodal bench`` (``crossmodal bench --help``; needs the
``export`` and ``bench`` extras). Method, in short:

* **Fresh processes, alternating.** Each (scenario, engine) runs in its own
  Python process (``crossmodal.bench.worker``); torch and onnxruntime never
  share one, because their thread pools fight over the cores. Engines run in
  rotating order for ``--processes`` rounds (default 3), so load from other
  work on the machine hits every engine alike. The headline latency is the
  median of the per-process medians; p95 / p99 are pooled over all runs.
* **Warm-up excluded, repeats until stable.** See ``crossmodal.bench.timing``.
* **Two PyTorch baselines.** ``torch-fp32``: transformers' CLIPModel as users
  get it, ``torch.inference_mode``, the same thread count; ``torch-bf16``: the
  same under ``torch.autocast(dtype=torch.bfloat16)``, the strongest PyTorch
  setting on CPUs with AVX-512 BF16.
* **Fidelity next to every speed figure.** Each engine's embeddings of the
  very inputs that were timed are compared with PyTorch fp32 (min / mean
  cosine), so a fast but wrong variant cannot win. Random weights understate
  int8 error about tenfold, so scenario (g) measures int8 fidelity on the
  trained all-MiniLM-L6-v2 through the M-BERT exporter.
* **Full-size architecture, random weights by default.** The CLIP checkpoint
  is built with transformers' own classes (``CLIPConfig()`` = ViT-B/32 sizes)
  and OpenAI's real BPE vocabulary; ``--model DIR`` benchmarks another one,
  labelled by its directory only (and as random weights when the harness made it).
* **Latency as a multiple of this machine's floor** (scenario r,
  ``crossmodal.bench.roofline``): the CPU's own fp32 / int8 GEMM and memory
  bandwidth peaks, measured with onnxruntime, against each graph's counted
  work, so that targets mean the same on any CPU. Every table names the CPU
  and its int8 capabilities (``crossmodal.cpu_isa``).

Scenarios: (a) towers alone over a batch sweep (text at caption length, never
padded to 77), (b) JPEG files end to end, (c) text query end to end with top-10
HNSW search over 10k / 100k / 1M vectors, (d) cold start, (e) peak RSS,
(f) installed size, (g) int8 fidelity on trained weights, (h) index recall,
(r) roofline: peaks and floors.

Outputs in ``--out`` (default ``bench/results``): ``results.json`` (every
latency of every process, environment, settings), ``results.md`` (tables and
the issue-7 targets, met or not), ``latency_vs_batch.png``, ``speedup.png``.
"""
