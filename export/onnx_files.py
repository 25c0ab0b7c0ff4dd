"""Loading, saving, copying and removing ONNX graph files, with their weights outside when they outgrow protobuf.

A protobuf message cannot be serialized past 2 GB, and a ModelProto is one
message: the fp32 text tower of M-CLIP XLM-R Large (~560M parameters, 2.2 GB)
could be neither saved nor shape-inferred in memory. Every export step
therefore loads and saves graphs here. A graph whose tensors add up to more
than :data:`EXTERNAL_MIN_BYTES` is saved in onnx's external data format:
``<name>`` holds the graph and ``<name>.data`` every tensor of at least
:data:`TENSOR_MIN_BYTES`, one after the other; smaller graphs stay one file,
as before. The data file is always the graph's file name + ``.data`` (the
convention onnxruntime's own savers follow too), so a graph's files are found,
copied and removed without parsing the graph; :func:`gather` collects any
other layout (the TorchScript exporter writes one file per tensor) into it.

Rewrites that need a graph's shapes but few of its weights' values (the
fusions, shape inference) run on it with the weights left in the data file
(:func:`weights_on_disk`), and :func:`save_from` streams them into the
result: for M-CLIP XLM-R Large the fusion step peaked at 1.35 GB instead of
16 GB. Data files are never hard-linked (onnx refuses to read one with more
than one link) and never written in place (every save removes the old one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

# protobuf's hard limit on one serialized message.
PROTOBUF_LIMIT = (1 << 31) - 1
# Graphs with more tensor bytes than this go external. The margin covers what is not a
# tensor (nodes, names, value_info) and the shapes inference adds to a graph.
# Read at call time, so tests can lower it.
EXTERNAL_MIN_BYTES = PROTOBUF_LIMIT - (256 << 20)
# Tensors below this stay inside the graph: shape constants and scalars that tools read
# without the data file (onnx's own default threshold).
TENSOR_MIN_BYTES = 1024
DATA_SUFFIX = ".data"
_CHUNK = 16 << 20


def data_path(path: Path) -> Path:
    """Where the external data of the graph at ``path`` lives (whether or not it exists)."""
    path = Path(path)
    return path.with_name(path.name + DATA_SUFFIX)


def is_external(path: Path) -> bool:
    """True when the graph at ``path`` keeps its weights in :func:`data_path`."""
    return data_path(path).is_file()


def stored_bytes(path: Path) -> int:
    """Bytes on disk of the graph at ``path`` and its data file."""
    data = data_path(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def tensor_bytes(model: Any) -> int:
    """Serialized size of the graph's tensors (initializers and Constant values), without serializing it.

    Each tensor is measured on its own: a whole ModelProto past 2 GB cannot report its size.
    """
    total = sum(t.ByteSize() for t in model.graph.initializer)
    return total + sum(n.ByteSize() for n in model.graph.node if n.op_type == "Constant")


def needs_external(model: Any, min_bytes: int | None = None) -> bool:
    """Whether ``model`` is saved with external data (``min_bytes`` defaults to :data:`EXTERNAL_MIN_BYTES`)."""
    return tensor_bytes(model) > (EXTERNAL_MIN_BYTES if min_bytes is None else min_bytes)


def load(path: Path, *, weights: bool = True) -> Any:
    """The graph at ``path`` (its external data read from beside it unless ``weights`` is False)."""
    import onnx

    return onnx.load(str(path), load_external_data=weights)


def save(model: Any, path: Path, *, min_bytes: int | None = None) -> Path:
    """Save ``model`` (weights loaded) to ``path``: one file, or graph + ``path.data`` when it is large.

    With external data onnx moves the weights out of ``model`` into the file:
    load the graph again to use its weights after saving.
    """
    import onnx

    path = Path(path)
    remove(path)  # onnx appends to an existing data file
    if needs_external(model, min_bytes):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path(path).name, size_threshold=TENSOR_MIN_BYTES, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))
    return path


def save_ort(wrapper: Any, path: Path, *, min_bytes: int | None = None, base_dir: Path | None = None) -> Path:
    """Save an onnxruntime model wrapper (``OnnxModel`` / ``ONNXModel``) the way :func:`save` decides.

    The wrappers' own savers sort the graph and add the contrib-op domain; with
    external data they write ``path.data`` too, but append to a stale one.
    ``base_dir``: the model still reads weights from files there
    (:func:`weights_on_disk`); they are copied into ``path.data`` (:func:`save_from`).
    """
    path = Path(path)
    if base_dir is not None:
        from onnx import helper

        wrapper.topological_sort()
        model = wrapper.model
        ms = "com.microsoft"
        if any(n.domain == ms for n in model.graph.node) and not any(o.domain == ms for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(ms, 1))
        save_from(model, path, base_dir)
        return path
    external = needs_external(wrapper.model, min_bytes)
    remove(path)
    wrapper.save_model_to_file(str(path), use_external_data_format=external)
    return path


def remove(path: Path) -> None:
    """Delete the graph at ``path`` and its data file, if there."""
    Path(path).unlink(missing_ok=True)
    data_path(path).unlink(missing_ok=True)


def external_tensors(model: Any) -> Iterator[Any]:
    """Every tensor of ``model`` whose data is stored outside the graph."""
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors

    return (t for t in _get_all_tensors(model) if t.data_location == TensorProto.EXTERNAL)


def copy(src: Path, dst: Path) -> Path | None:
    """Copy the graph at ``src`` to ``dst``, and its ``src.data`` to ``dst.data``; returns that (None: one file).

    Never a hard link, though it would save gigabytes: onnx refuses to read a
    data file with more than one link (its guard against link attacks).
    """
    src, dst = Path(src), Path(dst)
    if is_external(src):
        return gather(src, dst)
    remove(dst)
    shutil.copyfile(src, dst)
    return None


def gather(src: Path, dst: Path) -> Path | None:
    """Copy the graph at ``src`` to ``dst`` with all its external tensors in ``dst.data``; returns that path.

    Tensors are streamed from wherever ``src``'s graph says they are (one data
    file, or one file per tensor as the TorchScript exporter writes them), in
    ``_CHUNK`` pieces, so memory holds the graph without its weights only. A
    graph with no external tensor is copied as is (returns None).
    """
    src, dst = Path(src), Path(dst)
    model = load(src, weights=False)
    if not any(True for _ in external_tensors(model)):
        remove(dst)
        shutil.copyfile(src, dst)
        return None
    return save_from(model, dst, src.parent)


def save_from(model: Any, dst: Path, base_dir: Path) -> Path:
    """Save ``model``, whose external tensors are files under ``base_dir``, self-contained at ``dst`` + ``dst.data``.

    External tensors are streamed from their files into ``dst.data``, and so are
    inline tensors of at least :data:`TENSOR_MIN_BYTES` (those a rewrite added);
    returns the data file's path.
    """
    import onnx
    from onnx import TensorProto

    dst, base_dir = Path(dst).resolve(), Path(base_dir).resolve()
    out = data_path(dst)

    def location(t: Any) -> str:
        return next((e.value for e in t.external_data if e.key == "location"), "")

    if base_dir == dst.parent and any(location(t) == out.name for t in external_tensors(model)):
        raise ValueError(f"{dst}: the graph reads its weights from the file this would overwrite")
    remove(dst)
    with open(out, "wb") as f:

        def place(t: Any, write: Callable[[], None]) -> None:
            f.write(b"\0" * (-f.tell() % 4096))  # page-aligned, so onnxruntime can map tensors in place
            start = f.tell()
            write()
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", out.name), ("offset", str(start)), ("length", str(f.tell() - start))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value

        # Large initializers a rewrite left inline go out too (not Constant attributes, which stay inline).
        for t in model.graph.initializer:
            if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) >= TENSOR_MIN_BYTES:
                place(t, lambda t=t: f.write(t.raw_data))
                t.ClearField("raw_data")
        for t in list(external_tensors(model)):
            if location(t) != out.name:
                place(t, lambda t=t: _copy_tensor(t, base_dir, f))
    onnx.save_model(model, str(dst))  # no tensor data left inline: nothing for onnx to write beside it
    return out


def _copy_tensor(t: Any, base_dir: Path, f: Any) -> None:
    info = {e.key: e.value for e in t.external_data}
    source = base_dir / info["location"]
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else source.stat().st_size - offset
    with open(source, "rb") as g:
        g.seek(offset)
        left = length
        while left:
            chunk = g.read(min(left, _CHUNK))
            if not chunk:
                raise ValueError(f"{source} ends before tensor {t.name!r} ({length} bytes at {offset})")
            f.write(chunk)
            left -= len(chunk)


@contextlib.contextmanager
def weights_on_disk(path: Path) -> Iterator[Any]:
    """The graph at ``path`` with its external weights left in their file, readable from there inside the block.

    For rewrites that need only a few weights' values (onnxruntime's BERT
    attention fusion concatenates the Q/K/V weights; shape inference reads
    shape constants): memory holds the graph and what the rewrite reads, not
    every weight. onnx resolves a tensor's data file against the folder it is
    given, and the rewrites give none (the working directory), so the block runs
    in the graph's folder. Save the result with :func:`save_from` (``path``'s folder).
    """
    path = Path(path).resolve()
    model = load(path, weights=False)
    before = os.getcwd()
    os.chdir(path.parent)
    try:
        yield model
    finally:
        os.chdir(before)


def move(src: Path, dst: Path) -> Path:
    """Rename the graph at ``src`` (and its data file, with the graph's references to it) to ``dst``."""
    import onnx

    src, dst = Path(src), Path(dst)
    remove(dst)
    if not is_external(src):
        os.replace(src, dst)
        return dst
    model = load(src, weights=False)
    own = data_path(src).name
    entries = [e for t in external_tensors(model) for e in t.external_data if e.key == "location"]
    if any(e.value != own for e in entries) or src.parent.resolve() != dst.parent.resolve():
        save_from(model, dst, src.parent)  # other files, or another folder: copy, then drop the source
        remove(src)
        return dst
    os.replace(data_path(src), data_path(dst))
    for e in entries:
        e.value = data_path(dst).name
    onnx.save_model(model, str(dst))
    src.unlink()
    return dst


__all__ = ["DATA_SUFFIX", "EXTERNAL_MIN_BYTES", "PROTOBUF_LIMIT", "TENSOR_MIN_BYTES", "copy", "data_path",
           "external_tensors", "gather", "is_external", "load", "move", "needs_external", "remove", "save", "save_from",
           "save_ort", "stored_bytes", "tensor_bytes", "weights_on_disk"]
