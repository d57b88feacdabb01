"""Embedding models: images -> L2-normalised global descriptors (see docs/architecture.md).

``load_model(model_cfg)`` picks the backend; every backend shares the preprocessing in :mod:`.preprocess` and
reports the same backend-independent :meth:`EmbeddingModel.identity` for the same weights.
"""

from __future__ import annotations

import importlib.util

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError, fingerprint

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def resolve_backend(model_cfg: ModelConfig) -> str:
    """The backend ``model_cfg.backend`` stands for: ``auto`` is onnxruntime for fp32 on the CPU when it is
    installed (the fastest CPU backend: ~6× eager torch on 2 CPU cores in the issue-15 measurement; ``mobilegeo
    bench`` prints both), else torch (CUDA, fp16, or no onnxruntime); any other value is itself."""
    if model_cfg.backend != "auto":
        return model_cfg.backend
    cpu_fp32 = model_cfg.device == "cpu" and model_cfg.precision == "fp32"
    return "onnxruntime" if cpu_fp32 and importlib.util.find_spec("onnxruntime") is not None else "torch"


def load_model(model_cfg: ModelConfig | None = None) -> EmbeddingModel:
    """Build the embedding model described by ``model_cfg`` (default: the shipped student on the CPU, ONNX Runtime).

    ``model_cfg.backend``: auto (:func:`resolve_backend`), torch (CPU/CUDA, fp16 on CUDA), onnxruntime (CPU; CUDA
    provider when installed) or tensorrt (CUDA; fp16/int8 engines). Raises :class:`ModelError` for an unknown model,
    backend or precision, missing/corrupt weights, an unavailable device, or a backend whose package is not installed
    (the message names the package and how to install it).
    """
    cfg = model_cfg if model_cfg is not None else ModelConfig()
    if cfg.precision not in PRECISIONS:
        raise ModelError(f"model.precision: unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.name != "mobilenetv2_gem":
        raise ModelError(f"model.name: unknown model {cfg.name!r}; available: mobilenetv2_gem")
    backend = resolve_backend(cfg)
    if backend == "torch":
        from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
        return MobileNetV2GeM(cfg)
    if backend == "onnxruntime":
        from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel
        return OnnxRuntimeModel(cfg)
    if backend == "tensorrt":
        from mobilegeo_ros.model.tensorrt_backend import TensorRTModel
        return TensorRTModel(cfg)
    raise ModelError(f"model.backend: unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "PRECISIONS", "EmbeddingModel", "ModelError", "fingerprint", "load_model", "resolve_backend"]
