"""Reading multilingual text encoders from their published on-disk formats.

Three formats are accepted, each turned into one :class:`TextEncoderParts`
(a transformers encoder, a pooling rule, a stack of linear projections):

``sentence-transformers``
    ``modules.json`` listing ``Transformer`` + ``Pooling`` [+ ``Dense`` ...]
    [+ ``Normalize``] (e.g. ``clip-ViT-B-32-multilingual-v1``,
    ``all-MiniLM-L6-v2``). Every module's own config is read: the pooling mode,
    each Dense layer's size, bias and activation; nothing is assumed.
``m-clip``
    Multilingual-CLIP (``M-CLIP/XLM-Roberta-Large-Vit-B-32`` ...):
    ``config.json`` with ``model_type: M-CLIP``, ``modelBase``,
    ``transformerDimensions`` and ``numDims`` plus one state dict holding
    ``transformer.*`` and ``LinearTransformation.*``. The base transformer is
    built from its *config* (never ``from_pretrained(modelBase)``, which would
    download the base weights only to overwrite them).
``m-clip-legacy``
    The older ``M-BERT-*`` checkpoints: a plain transformers BERT/DistilBERT
    directory plus a separately distributed linear head (``* Linear
    Weights.pkl``: ``[W (in, out), b (out,)]``). The head is read as plain
    arrays only (see :func:`load_legacy_head`).

Pooling for both M-CLIP formats is the attention-masked mean, as in the
reference classes of the ``multilingual-clip`` package.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from crossmodal.errors import ArtifactError

from .sources import read_json

log = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
# Sentence-transformers' legacy boolean keys -> mode names.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activations we can trace; the config stores the class's full name.
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": torch.nn.Identity,
    "torch.nn.modules.activation.Tanh": torch.nn.Tanh,
    "torch.nn.modules.activation.ReLU": torch.nn.ReLU,
    "torch.nn.modules.activation.GELU": torch.nn.GELU,
    "torch.nn.modules.activation.Sigmoid": torch.nn.Sigmoid,
}
# Architecture of the bases the published M-CLIP checkpoints name in `modelBase`
# (their config.json does not carry it). Values are the hub configs of those bases.
KNOWN_BASES: dict[str, dict[str, Any]] = {
    "xlm-roberta-large": dict(
        model_type="xlm-roberta", vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
    ),
    "labse": dict(
        model_type="bert", vocab_size=501153, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
        pad_token_id=0, hidden_act="gelu",
    ),
}


@dataclass
class DenseLayer:
    """One projection after pooling: ``activation(linear(x))``."""

    linear: torch.nn.Linear
    activation: torch.nn.Module
    activation_name: str

    def describe(self) -> dict[str, Any]:
        return {"in": self.linear.in_features, "out": self.linear.out_features,
                "bias": self.linear.bias is not None, "activation": self.activation_name}


@dataclass
class TextEncoderParts:
    """Everything the text tower is built from, whatever the source format."""

    fmt: str
    transformer: torch.nn.Module
    tokenizer_dir: Path
    pooling: str
    dense: list[DenseLayer]
    dim: int
    max_seq_length: int | None = None
    do_lower_case: bool = False
    source_normalizes: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(getattr(self.transformer.config, "model_type", "unknown"))

    def describe(self) -> dict[str, Any]:
        """Facts recorded in the manifest's ``extra``."""
        return {
            "source_format": self.fmt, "base_model_type": self.model_type, "pooling": self.pooling,
            "projection": [d.describe() for d in self.dense], "source_normalizes": self.source_normalizes,
            "do_lower_case": self.do_lower_case, **self.details,
        }


def detect_format(path: Path) -> str:
    """``sentence-transformers``, ``m-clip`` or ``m-clip-legacy`` for a local checkpoint directory."""
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ArtifactError(f"{path} holds neither modules.json (sentence-transformers) nor config.json "
                            "(Multilingual-CLIP / transformers); pass a checkpoint directory")
    cfg = read_json(cfg_path)
    if cfg.get("model_type") == "M-CLIP" or "modelBase" in cfg:
        return "m-clip"
    if cfg.get("model_type") in ("bert", "distilbert", "xlm-roberta"):
        return "m-clip-legacy"
    raise ArtifactError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not a multilingual text encoder this "
                        "exporter knows (sentence-transformers dir, M-CLIP, or legacy M-BERT + linear head)")


def load_transformer(model_dir: Path) -> torch.nn.Module:
    """A transformers encoder from a local directory, with eager attention (traces to plain MatMul/Softmax)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot load the transformer in {model_dir}: {exc}") from exc


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """The one weights file of ``model_dir`` (safetensors preferred; .bin via torch.load(weights_only=True))."""
    st = sorted(model_dir.glob("*.safetensors"))
    if st:
        from safetensors.torch import load_file

        out: dict[str, torch.Tensor] = {}
        for f in st:
            out.update(load_file(str(f)))
        return out
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise ArtifactError(f"{model_dir} has no model.safetensors or pytorch_model.bin")
    out = {}
    for f in bins:
        try:
            obj = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything but tensors and plain containers
            raise ArtifactError(f"{f} cannot be read as plain tensors ({exc}); re-save it as safetensors") from exc
        if not isinstance(obj, Mapping):
            raise ArtifactError(f"{f} does not hold a state dict (got {type(obj).__name__})")
        out.update(obj)
    return out


def _pooling_mode(cfg: Mapping[str, Any], where: Path) -> str:
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        modes = [name for key, name in _LEGACY_POOLING_KEYS.items() if cfg.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ArtifactError(f"{where}: pooling {modes} is not supported (one of {', '.join(POOLING_MODES)} is)")
    return str(modes[0])


def _read_dense(mod_dir: Path) -> DenseLayer:
    cfg = read_json(mod_dir / "config.json")
    where = mod_dir / "config.json"
    if cfg.get("use_residual"):
        raise ArtifactError(f"{where}: Dense with use_residual is not supported")
    if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding" or \
            cfg.get("module_output_name", "sentence_embedding") not in (None, "sentence_embedding"):
        raise ArtifactError(f"{where}: Dense must read and write sentence_embedding")
    act_name = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if act_name not in _ACTIVATIONS:
        raise ArtifactError(f"{where}: activation {act_name!r} is not supported ({', '.join(_ACTIVATIONS)})")
    linear = torch.nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    state = load_state_dict(mod_dir)
    wanted = {k: v for k, v in state.items() if k.startswith("linear.")}
    try:
        linear.load_state_dict({k[len("linear."):]: v for k, v in wanted.items()}, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{mod_dir}: Dense weights do not match its config ({exc})") from exc
    return DenseLayer(linear.eval(), _ACTIVATIONS[act_name]().eval(), act_name.rsplit(".", 1)[-1])


def read_sentence_transformers(path: Path) -> TextEncoderParts:
    """Transformer + Pooling [+ Dense ...] [+ Normalize] from a sentence-transformers directory."""
    modules = read_json(path / "modules.json")
    transformer = None
    tok_dir = path
    pooling: str | None = None
    dense: list[DenseLayer] = []
    normalizes = False
    max_seq: int | None = None
    lower = False
    for mod in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        mod_dir = path / str(mod.get("path", ""))
        if kind == "Transformer":
            if transformer is not None or pooling is not None:
                raise ArtifactError(f"{path}/modules.json: the Transformer module must come first, once")
            transformer = load_transformer(mod_dir)
            tok_dir = mod_dir
            st_cfg_path = mod_dir / "sentence_bert_config.json"
            st_cfg = read_json(st_cfg_path) if st_cfg_path.is_file() else {}
            if st_cfg.get("max_seq_length") is not None:
                max_seq = int(st_cfg["max_seq_length"])
            lower = bool(st_cfg.get("do_lower_case", False))
        elif kind == "Pooling":
            if transformer is None:
                raise ArtifactError(f"{path}/modules.json: Pooling before the Transformer module")
            pooling = _pooling_mode(read_json(mod_dir / "config.json"), mod_dir / "config.json")
        elif kind == "Dense":
            if pooling is None:
                raise ArtifactError(f"{path}/modules.json: Dense before Pooling is not supported")
            dense.append(_read_dense(mod_dir))
        elif kind == "Normalize":
            normalizes = True
        else:
            raise ArtifactError(f"{path}/modules.json: module type {mod.get('type')!r} is not supported "
                                "(Transformer, Pooling, Dense, Normalize are)")
    if transformer is None or pooling is None:
        raise ArtifactError(f"{path}/modules.json needs a Transformer and a Pooling module")
    hidden = int(transformer.config.hidden_size)
    dim = hidden
    for i, d in enumerate(dense):
        if d.linear.in_features != dim:
            raise ArtifactError(f"{path}: Dense #{i} expects {d.linear.in_features} features but receives {dim}")
        dim = d.linear.out_features
    return TextEncoderParts("sentence-transformers", transformer, tok_dir, pooling, dense, dim,
                            max_seq_length=max_seq, do_lower_case=lower, source_normalizes=normalizes)


def base_config(model_base: str, override: Path | None = None) -> Any:
    """The transformers config of an M-CLIP ``modelBase``, without downloading anything.

    Looked up in order: an explicit config file, ``modelBase`` as a local
    directory, the local Hugging Face cache, the table of known bases.
    """
    from transformers import AutoConfig, CONFIG_MAPPING

    if override is not None:
        return AutoConfig.from_pretrained(str(override))
    local = Path(model_base).expanduser()
    if (local / "config.json").is_file():
        return AutoConfig.from_pretrained(str(local))
    try:
        return AutoConfig.from_pretrained(model_base, local_files_only=True)
    except Exception:  # not cached: fall through to the table
        pass
    key = model_base.rstrip("/").rsplit("/", 1)[-1].lower()
    if key in KNOWN_BASES:
        fields = dict(KNOWN_BASES[key])
        return CONFIG_MAPPING[fields.pop("model_type")](**fields)
    raise ArtifactError(
        f"M-CLIP modelBase {model_base!r}: its architecture config is not available offline. Pass the base "
        f"model's config.json with --base-config (known without it: {', '.join(KNOWN_BASES)})"
    )


def read_mclip(path: Path, *, base_config_path: Path | None = None) -> TextEncoderParts:
    """A Multilingual-CLIP checkpoint: base transformer from its config + the saved state dict."""
    from transformers import AutoModel

    cfg = read_json(path / "config.json")
    where = path / "config.json"
    try:
        model_base = str(cfg["modelBase"])
        t_dim = int(cfg["transformerDimensions"])
        n_dims = int(cfg["numDims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: an M-CLIP config needs modelBase, transformerDimensions, numDims ({exc})") from exc
    bcfg = base_config(model_base, base_config_path)
    transformer = AutoModel.from_config(bcfg, attn_implementation="eager").eval()
    if int(bcfg.hidden_size) != t_dim:
        raise ArtifactError(f"{where}: transformerDimensions {t_dim} but base {model_base!r} has hidden size {bcfg.hidden_size}")
    state = load_state_dict(path)
    t_state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    head = {k[len("LinearTransformation."):]: v for k, v in state.items() if k.startswith("LinearTransformation.")}
    other = sorted(k for k in state if not k.startswith(("transformer.", "LinearTransformation.")))
    if other:
        raise ArtifactError(f"{path}: unexpected weights {other[:5]} (expected transformer.* and LinearTransformation.*)")
    _load_exact(transformer, t_state, f"{path} (transformer.*)")
    linear = torch.nn.Linear(t_dim, n_dims)
    _load_exact(linear, head, f"{path} (LinearTransformation.*)")
    dense = [DenseLayer(linear.eval(), torch.nn.Identity(), "Identity")]
    return TextEncoderParts("m-clip", transformer, path, "mean", dense, n_dims,
                            details={"model_base": model_base})


def _load_exact(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """load_state_dict that tolerates only buffers transformers no longer saves (position_ids)."""
    result = module.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ArtifactError(f"{where}: weights do not match the architecture (missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]})")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers, and nothing else (no code can run)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not a plain array type")


def load_legacy_head(path: Path) -> torch.nn.Linear:
    """The legacy M-CLIP linear head, read as plain arrays only.

    The released ``* Linear Weights.pkl`` files are Python pickles of
    ``[W (in, out), b (out,)]`` numpy arrays; a file written by ``torch.save``
    (``[W, b]`` or ``{'weight', 'bias'}``) is read with
    ``torch.load(weights_only=True)``. ``torch.load`` cannot read a plain
    pickle, so those go through an unpickler that only rebuilds numpy arrays:
    a file that needs any other global is refused, never executed.
    """
    import numpy as np
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"legacy head {path} does not exist; pass the '* Linear Weights.pkl' file with --head")
    if zipfile.is_zipfile(path):
        try:
            obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactError(f"{path} holds more than plain tensors ({exc}); refusing to unpickle it") from exc
    else:
        try:
            obj = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{path} is not a pickle of plain arrays ({exc}); it would need arbitrary "
                                "unpickling, which crossmodal refuses. Re-save the head as [weight, bias] arrays.") from exc
    if isinstance(obj, Mapping) and {"weight", "bias"} <= set(obj):
        weight = torch.as_tensor(np.asarray(obj["weight"]), dtype=torch.float32)  # (out, in), torch layout
        bias = torch.as_tensor(np.asarray(obj["bias"]), dtype=torch.float32)
    elif isinstance(obj, (list, tuple)) and len(obj) == 2:
        # Keras layout, as the reference class reads it: W is (in, out).
        weight = torch.as_tensor(np.asarray(obj[0]), dtype=torch.float32).t().contiguous()
        bias = torch.as_tensor(np.asarray(obj[1]), dtype=torch.float32)
    else:
        raise ArtifactError(f"{path}: expected [weight (in, out), bias (out,)], got {type(obj).__name__}")
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ArtifactError(f"{path}: head shapes {tuple(weight.shape)} / {tuple(bias.shape)} do not form a linear layer")
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear.eval()


def read_legacy(path: Path, head: Path | None) -> TextEncoderParts:
    """Legacy M-BERT: a transformers directory plus the separately distributed linear head."""
    if head is None:
        pkls = sorted(path.glob("*.pkl"))
        if len(pkls) != 1:
            raise ArtifactError(f"{path} is a plain transformers model; a legacy M-CLIP model also needs its "
                                "linear head: pass the '* Linear Weights.pkl' file with --head")
        head = pkls[0]
    transformer = load_transformer(path)
    linear = load_legacy_head(head)
    hidden = int(transformer.config.hidden_size)
    if linear.in_features != hidden:
        raise ArtifactError(f"{head}: head expects {linear.in_features} features but {path} has hidden size {hidden}")
    dense = [DenseLayer(linear, torch.nn.Identity(), "Identity")]
    return TextEncoderParts("m-clip-legacy", transformer, path, "mean", dense, linear.out_features,
                            details={"head_file": Path(head).name})


def read_parts(path: Path, *, head: Path | None = None, base_config_path: Path | None = None) -> TextEncoderParts:
    """Dispatch on the directory's format."""
    fmt = detect_format(path)
    if fmt == "sentence-transformers":
        return read_sentence_transformers(path)
    if fmt == "m-clip":
        return read_mclip(path, base_config_path=base_config_path)
    return read_legacy(path, head)


__all__ = ["TextEncoderParts", "DenseLayer", "detect_format", "read_parts", "read_sentence_transformers",
           "read_mclip", "read_legacy", "load_legacy_head", "base_config", "KNOWN_BASES", "POOLING_MODES"]
