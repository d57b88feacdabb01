"""ONNX Runtime backend: the torch module exported once to ONNX (cached), then run with onnxruntime.

The export is cached under ``$MOBILEGEO_CACHE_DIR/onnx`` (default ``$XDG_CACHE_HOME/mobilegeo_ros/onnx`` or
``~/.cache/mobilegeo_ros/onnx``), keyed by the sha256 of the weights file bytes, the input size, the GeM exponent and
:data:`EXPORT_VERSION`. Next to each ``.onnx`` file a ``.json`` holds the model identity, so a cache hit starts
without importing torch or loading the weights into it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.model.weights import resolve_default_weights
from mobilegeo_ros.util.files import atomic_path, atomic_write_bytes, cache_dir, file_sha256

log = logging.getLogger(__name__)

# Bump when the exported graph changes (module code, opset, input/output names) so stale caches are not reused.
EXPORT_VERSION = 2
OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def export_onnx(model_cfg: ModelConfig, out_dir: Path | None = None) -> tuple[Path, dict]:
    """Export (or find in the cache) the ONNX graph of ``model_cfg``'s torch model.

    Returns ``(onnx_path, identity)``. The graph takes ``images`` (B×3×input_px×input_px float32, dynamic B) and
    returns ``embeddings`` (B×D float32, unit rows).
    """
    weights = resolve_default_weights(model_cfg.weights)
    if not weights.is_file():
        raise ModelError(f"weights file {str(weights)!r} does not exist")
    key_src = json.dumps({"model": model_cfg.name, "weights_file_sha256": file_sha256(weights),
                          "input_px": model_cfg.input_px, "gem_p": model_cfg.gem_p, "export": EXPORT_VERSION,
                          "opset": OPSET}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    folder = Path(out_dir) if out_dir is not None else cache_dir("onnx")
    onnx_path = folder / f"{model_cfg.name}-{key}.onnx"
    meta_path = onnx_path.with_suffix(".json")
    if onnx_path.is_file() and meta_path.is_file():
        try:
            return onnx_path, json.loads(meta_path.read_text())["identity"]
        except (ValueError, KeyError, OSError):
            log.warning("ONNX cache entry %s is unreadable; exporting again", meta_path)

    from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM

    cpu_cfg = ModelConfig(**{**vars(model_cfg), "device": "cpu", "precision": "fp32"})
    torch_model = MobileNetV2GeM(cpu_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    identity = torch_model.identity()
    # The identity sidecar goes in first: a visible .onnx always has its .json.
    atomic_write_bytes(meta_path, json.dumps({"identity": identity, "key": json.loads(key_src)},
                                              indent=2).encode())
    write_onnx(torch_model.module, onnx_path, model_cfg.input_px)
    log.info("exported %s to %s", model_cfg.name, onnx_path)
    return onnx_path, identity


def write_onnx(module, path: Path, input_px: int, opset: int = OPSET) -> Path:
    """Export a torch module (N×3×S×S float32 -> N×D float32) to ``path`` atomically (temp file, check, rename).

    The graph has input :data:`INPUT_NAME` and output :data:`OUTPUT_NAME`, both with a dynamic batch axis
    ``batch``; ``opset`` is the ONNX opset. The file is checked with ``onnx.checker`` before it becomes visible.
    """
    import onnx
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        module = module.float().cpu().eval()
        dummy = torch.zeros(1, 3, input_px, input_px, dtype=torch.float32)
        # The TorchScript exporter (dynamo=False) on purpose: one static graph, no onnxscript dependency, and
        # it handles this plain CNN exactly; silence its deprecation notice.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*")
            torch.onnx.export(module, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        # The exporter leaves the embedding width symbolic (it comes out of the L2-normalising Div); state it, so
        # consumers (TensorRT profiles, checks) see a static B×D output.
        with torch.no_grad():
            dim = int(module(dummy).shape[1])
        graph = onnx.load(str(tmp))
        out_dims = graph.graph.output[0].type.tensor_type.shape.dim
        out_dims[1].Clear()
        out_dims[1].dim_value = dim
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    return path


def sidecar_path(model_file: Path) -> Path:
    """``FILE.onnx`` / ``FILE.engine`` -> ``FILE.onnx.json`` / ``FILE.engine.json`` (identity and export info)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: Path) -> dict:
    """The sidecar dict of an exported model file (see :func:`sidecar_path`); ModelError naming the file when it is
    missing or has no identity (an export from elsewhere cannot be matched against an index without it)."""
    model_file = Path(model_file)
    meta = sidecar_path(model_file)
    if not model_file.is_file():
        raise ModelError(f"model.weights: exported model {str(model_file)!r} does not exist")
    if not meta.is_file():
        raise ModelError(f"model.weights: {str(model_file)!r} has no identity file {meta.name!r} next to it; export "
                         "it with `mobilegeo export` (the identity ties it to the indexes built with its weights)")
    try:
        data = json.loads(meta.read_text())
        identity = data["identity"]
        int(identity["dim"])
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ModelError(f"identity file {str(meta)!r} is unreadable or has no model identity: {e}") from None
    return data


class OnnxRuntimeModel(EmbeddingModel):
    """ONNX Runtime backend of ``mobilenetv2_gem``; same identity (hence same indexes) as the torch backend."""

    def __init__(self, model_cfg: ModelConfig | None = None, onnx_dir: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("model.backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime") \
                from None
        cfg = model_cfg if model_cfg is not None else ModelConfig()
        self.name = cfg.name
        self.input_px = int(cfg.input_px)
        self.batch_size = int(cfg.batch_size)
        if cfg.precision != "fp32":
            raise ModelError(f"model.precision: {cfg.precision!r} is not supported by the onnxruntime backend (fp32 "
                             "only; fp16/int8 need backend tensorrt, or torch on CUDA for fp16)")
        if cfg.weights.endswith(".onnx"):
            # A file written by `mobilegeo export --format onnx`: run it as is, identity from its sidecar.
            self.onnx_path = Path(cfg.weights)
            self._identity = read_sidecar(self.onnx_path)["identity"]
        else:
            self.onnx_path, self._identity = export_onnx(cfg, onnx_dir)
        self.dim = int(self._identity["dim"])
        opts = ort.SessionOptions()
        if cfg.num_threads > 0:
            opts.intra_op_num_threads = cfg.num_threads
            opts.inter_op_num_threads = 1
        if cfg.device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif cfg.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(f"model.device: {cfg.device!r} requested but this onnxruntime build has no "
                                 "CUDAExecutionProvider (install onnxruntime-gpu)")
            dev_id = int(cfg.device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
        else:
            raise ModelError(f"model.device: {cfg.device!r} is not supported by the onnxruntime backend "
                             "(use cpu or cuda[:N])")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise ModelError(f"ONNX model {str(self.onnx_path)!r} could not be loaded: {e}") from None

    def identity(self) -> dict:
        return json.loads(json.dumps(self._identity))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]


__all__ = ["EXPORT_VERSION", "INPUT_NAME", "OPSET", "OUTPUT_NAME", "OnnxRuntimeModel", "export_onnx",
           "read_sidecar", "sidecar_path", "write_onnx"]
