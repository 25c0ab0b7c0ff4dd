"""Write a Triton Inference Server model repository from a bundle (one Triton model per tower).

``crossmodal export triton BUNDLE --out REPO --variant gpu-fp16`` lays out::

    REPO/<bundle>_image/config.pbtxt
    REPO/<bundle>_image/1/model.onnx            (model.plan for TensorRT engines)
    REPO/<bundle>_image/crossmodal_manifest.json
    REPO/<bundle>_text/...
    REPO/README.md

Names, dims and data types come from the tower manifest, never from guesses:
the first axis of every tensor must be the dynamic batch axis (Triton's
``max_batch_size`` mode drops it from ``dims``), other dynamic axes become -1.
Preprocessing and tokenisation stay with the client
(``crossmodal.triton_client``), which reads the same bundle.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crossmodal.errors import ArtifactError, InputError
from crossmodal.gpu import BUILD_COMMAND, rebuild_command
from crossmodal.inputs import non_negative_int, positive_int
from crossmodal.manifest import MANIFEST_FILE, TensorSpec, TowerManifest, available_variants, read_bundle, read_manifest
from crossmodal.triton_client import model_name
from crossmodal.variants import TENSORRT, TRITON, get_variant

TRITON_VARIANTS = TRITON  # the variant table's rows Triton can serve
TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}
SERVED_TOWERS = ("image", "text")
# Triton's default file names per platform.
_PLATFORM_FILE = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}


@dataclass(frozen=True)
class TritonSettings:
    """Scheduling knobs written into every config.pbtxt.

    The defaults favour throughput on a GPU: requests wait up to 2 ms to be
    merged into batches of 8-32. For ``cpu-*`` variants smaller batches and
    more instances suit better (see :func:`default_settings`).
    """

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    instances: int = 1

    def __post_init__(self) -> None:
        positive_int("max_batch_size", self.max_batch_size)
        for b in self.preferred_batch_sizes:
            positive_int("a preferred batch size", b)
        bad = [b for b in self.preferred_batch_sizes if b > self.max_batch_size]
        if bad:
            raise InputError(f"preferred batch sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})")
        non_negative_int("max_queue_delay_us", self.max_queue_delay_us)
        positive_int("instances", self.instances)


def default_settings(variant: str) -> TritonSettings:
    """GPU: one instance, big batches. CPU: two instances, small batches (latency grows linearly with batch)."""
    if not get_variant(variant).is_gpu:
        return TritonSettings(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay_us=1000, instances=2)
    return TritonSettings()


def _dims(spec: TensorSpec, where: str) -> list[int]:
    if not spec.shape or not isinstance(spec.shape[0], str):
        raise ArtifactError(
            f"{where}: tensor {spec.name!r} has shape {list(spec.shape)}; Triton batching needs a dynamic first "
            "(batch) axis. Re-export the bundle with a current crossmodal."
        )
    return [-1 if isinstance(d, str) else int(d) for d in spec.shape[1:]]


def _dtype(spec: TensorSpec, where: str) -> str:
    try:
        return TRITON_DTYPES[spec.dtype]
    except KeyError:
        raise ArtifactError(f"{where}: tensor {spec.name!r} has dtype {spec.dtype!r}, which has no Triton type here") from None


def _tensor_block(kind: str, specs: Sequence[TensorSpec], where: str) -> str:
    items = []
    for s in specs:
        dims = ", ".join(str(d) for d in _dims(s, where))
        items.append(f'  {{\n    name: "{s.name}"\n    data_type: {_dtype(s, where)}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_config(
    name: str,
    manifest: TowerManifest,
    *,
    platform: str,
    kind: str,
    settings: TritonSettings,
    cc_model_filenames: dict[str, str] | None = None,
    where: str = "manifest",
) -> str:
    """The text of one config.pbtxt (Triton's protobuf text format)."""
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {settings.max_batch_size}",
        _tensor_block("input", manifest.inputs, where).rstrip(),
        _tensor_block("output", manifest.outputs, where).rstrip(),
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in settings.preferred_batch_sizes)} ]",
        f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}",
        "}",
        "instance_group [",
        f"  {{\n    count: {settings.instances}\n    kind: {kind}\n  }}",
        "]",
    ]
    if cc_model_filenames:
        # Triton picks the engine built for the GPU it runs on (engines are not portable).
        for cc, fname in sorted(cc_model_filenames.items()):
            lines.append(f'cc_model_filenames {{\n  key: "{cc}"\n  value: "{fname}"\n}}')
    return "\n".join(lines) + "\n"


def _trt_engines(tower_dir: Path) -> dict[str, tuple[Path, dict]]:
    """Engines in a gpu-trt-fp16 folder: compute capability -> (engine file, engine manifest)."""
    from crossmodal.gpu import read_engine_info

    found: dict[str, tuple[Path, dict]] = {}
    for engine in sorted(tower_dir.glob("*.engine")):
        info = read_engine_info(engine)
        if info.precision != "fp16":
            continue  # int8 engines are served by hand: their accuracy is not covered by the manifest
        found[info.compute_capability] = (engine, info.to_dict())
    if not found:
        raise ArtifactError(f"{tower_dir} holds no fp16 TensorRT engine; build one with `{BUILD_COMMAND}`")
    return found


def write_model(
    repo: Path, bundle_dir: Path, bundle_name: str, tower: str, folder: str, variant: str, settings: TritonSettings,
) -> Path:
    """Write one Triton model (config, version folder, manifest copy) for one tower; returns its folder."""
    tower_dir = bundle_dir / folder / variant
    manifest = read_manifest(tower_dir)
    name = model_name(bundle_name, tower)
    where = str(tower_dir / MANIFEST_FILE)
    model_dir = repo / name
    version = model_dir / "1"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version.mkdir(parents=True)
    cc_files: dict[str, str] | None = None
    row = get_variant(variant)
    if row.engine == TENSORRT:
        platform, kind = "tensorrt_plan", "KIND_GPU"
        engines = _trt_engines(tower_dir)
        cc_files = {}
        for cc, (engine, info) in engines.items():
            shutil.copyfile(engine, version / engine.name)
            cc_files[cc] = engine.name
            max_batch = int(info["profile"]["max"][manifest.inputs[0].name][0])
            if settings.max_batch_size > max_batch:
                raise ArtifactError(
                    f"{engine}: its optimisation profile allows batches up to {max_batch}, below "
                    f"--max-batch {settings.max_batch_size}; pass --max-batch {max_batch} or rebuild the engine "
                    "with a larger --max"
                )
    else:
        platform = "onnxruntime_onnx"
        kind = "KIND_GPU" if row.is_gpu else "KIND_CPU"
        shutil.copyfile(tower_dir / manifest.model_file, version / _PLATFORM_FILE[platform])
        if manifest.data_file is not None:
            # The graph names its weights file by its own name: it goes beside the graph unchanged.
            if manifest.model_file != _PLATFORM_FILE[platform]:
                raise ArtifactError(f"{where}: a graph with external data must be named "
                                    f"{_PLATFORM_FILE[platform]} to be renamed into Triton's layout; re-export the bundle")
            shutil.copyfile(tower_dir / manifest.data_file, version / manifest.data_file)
    text = model_config(name, manifest, platform=platform, kind=kind, settings=settings,
                        cc_model_filenames=cc_files, where=where)
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    shutil.copyfile(tower_dir / MANIFEST_FILE, model_dir / "crossmodal_manifest.json")
    return model_dir


def readme_snippet(repo: Path, bundle_dir: Path, models: Sequence[str], variant: str) -> str:
    """README.md written at the repository root: how to serve it and query it."""
    row = get_variant(variant)
    gpu = "--gpus all " if row.is_gpu else ""
    trt_note = (
        "\nThe TensorRT engines run only under the TensorRT version they were built with: use the Triton\n"
        "container release whose TensorRT matches the `trt` tag in the engine file names.\n"
        if row.engine == TENSORRT else ""
    )
    return (
        f"# Triton model repository for `{bundle_dir.name}` ({variant})\n\n"
        f"Models: {', '.join(f'`{m}`' for m in models)}. Written by `crossmodal export triton`.\n\n"
        "Serve it (pick a Triton release, `YY.MM`, whose ONNX Runtime / TensorRT suits your driver):\n\n"
        "```\n"
        f"docker run {gpu}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\\n"
        f"  -v {repo.resolve()}:/models nvcr.io/nvidia/tritonserver:YY.MM-py3 \\\n"
        "  tritonserver --model-repository=/models\n"
        "```\n"
        f"{trt_note}\n"
        "Query it; tokenisation and image preprocessing run locally from the bundle\n"
        "(`pip install 'crossmodal[triton]'`):\n\n"
        "```python\n"
        "from crossmodal.triton_client import TritonEncoder\n"
        f"enc = TritonEncoder(\"{bundle_dir.resolve()}\", url=\"localhost:8000\")\n"
        "enc.encode_text([\"two dogs in the snow\"])   # (1, dim) float32, L2-normalised\n"
        "enc.encode_image([\"dogs.jpg\"])\n"
        "```\n\n"
        "Dynamic batching merges only requests whose tensors have equal shapes; the client pads\n"
        "token sequences to a multiple of 16 so that text requests of similar length batch together\n"
        "(not for cpu-int8, whose dynamic activation quantisation would see the pad tokens).\n"
    )


def export_triton(
    bundle: Path, out: Path, variant: str = "gpu-fp16", settings: TritonSettings | None = None,
) -> Path:
    """Write the Triton model repository for ``bundle`` into ``out``; returns ``out``."""
    if variant not in TRITON_VARIANTS:
        raise ArtifactError(f"--variant {variant!r} cannot be served by Triton here; choose from {', '.join(TRITON_VARIANTS)}")
    bundle = Path(bundle)
    info = read_bundle(bundle)
    settings = settings or default_settings(variant)
    towers = [(t, f) for t, f in info.towers.items() if t in SERVED_TOWERS]
    if not towers:
        raise ArtifactError(f"bundle {bundle} has no image or text tower to serve")
    for tower, folder in towers:
        if variant not in available_variants(bundle, folder):
            hint = (f"`{rebuild_command(bundle, tower)}`" if get_variant(variant).engine == TENSORRT
                    else f"`crossmodal export {info.family} ... --targets {variant}`")
            raise ArtifactError(f"bundle {bundle} has no {variant} variant of its {tower} tower; create it with {hint}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [write_model(out, bundle, info.name, t, f, variant, settings).name for t, f in towers]
    (out / "README.md").write_text(readme_snippet(out, bundle, models, variant), encoding="utf-8")
    (out / "crossmodal_repository.json").write_text(
        json.dumps({"bundle": info.name, "space": info.space, "variant": variant,
                    "models": {t: model_name(info.name, t) for t, _ in towers}}, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = ["TritonSettings", "default_settings", "export_triton", "model_config", "model_name", "write_model"]
