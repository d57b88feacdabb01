"""Embedding models: images -> L2-normalised global descriptors (see docs/architecture.md).

``load_model(model_cfg)`` picks the backend; every backend shares the preprocessing in :mod:`.preprocess` and
reports the same backend-independent :meth:`EmbeddingModel.identity` for the same weights.
"""

from __future__ import annotations

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError, fingerprint

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def load_model(model_cfg: ModelConfig | None = None) -> EmbeddingModel:
    """Build the embedding model described by ``model_cfg`` (default: ImageNet MobileNetV2-GeM on torch/CPU).

    Raises :class:`ModelError` for an unknown model or backend, missing/corrupt weights, or an unavailable device.
    """
    cfg = model_cfg if model_cfg is not None else ModelConfig()
    if cfg.name != "mobilenetv2_gem":
        raise ModelError(f"model.name: unknown model {cfg.name!r}; available: mobilenetv2_gem")
    if cfg.backend == "torch":
        from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
        return MobileNetV2GeM(cfg)
    if cfg.backend == "onnxruntime":
        from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel
        return OnnxRuntimeModel(cfg)
    if cfg.backend == "tensorrt":
        raise ModelError("model.backend: 'tensorrt' is not available yet (it arrives with the inference-backends "
                         "work); use 'torch' or 'onnxruntime'")
    raise ModelError(f"model.backend: unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "EmbeddingModel", "ModelError", "fingerprint", "load_model"]
