"""Embedding models: images -> L2-normalised global descriptors (see docs/architecture.md).

``load_model(model_cfg)`` picks the backend; every backend shares the preprocessing in :mod:`.preprocess` and
reports the same backend-independent :meth:`EmbeddingModel.identity` for the same weights.
"""

from __future__ import annotations

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError, fingerprint

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def load_model(model_cfg: ModelConfig | None = None) -> EmbeddingModel:
    """Build the embedding model described by ``model_cfg`` (default: ImageNet MobileNetV2-GeM on torch/CPU).

    ``model_cfg.backend``: torch (CPU/CUDA, fp16 on CUDA), onnxruntime (CPU; CUDA provider when installed) or
    tensorrt (CUDA; fp16/int8 engines). Raises :class:`ModelError` for an unknown model, backend or precision,
    missing/corrupt weights, an unavailable device, or a backend whose package is not installed (the message names
    the package and how to install it).
    """
    cfg = model_cfg if model_cfg is not None else ModelConfig()
    if cfg.precision not in PRECISIONS:
        raise ModelError(f"model.precision: unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.name != "mobilenetv2_gem":
        raise ModelError(f"model.name: unknown model {cfg.name!r}; available: mobilenetv2_gem")
    if cfg.backend == "torch":
        from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
        return MobileNetV2GeM(cfg)
    if cfg.backend == "onnxruntime":
        from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel
        return OnnxRuntimeModel(cfg)
    if cfg.backend == "tensorrt":
        from mobilegeo_ros.model.tensorrt_backend import TensorRTModel
        return TensorRTModel(cfg)
    raise ModelError(f"model.backend: unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "PRECISIONS", "EmbeddingModel", "ModelError", "fingerprint", "load_model"]
