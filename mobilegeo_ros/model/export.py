"""Export the embedding model for deployment: ONNX (dynamic batch) and TensorRT engines.

Every exported file gets an identity sidecar ``FILE.json`` (:func:`~.onnx_backend.sidecar_path`) holding the
backend-independent model identity, so an index built with the torch backend is accepted by the exported model of
the same weights (``model.weights: FILE.onnx`` with backend onnxruntime, ``FILE.engine`` with backend tensorrt).
Both files are written atomically: the sidecar first, then the model file (a visible model always has its sidecar).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mobilegeo_ros.config import Config, ModelConfig
from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.onnx_backend import INPUT_NAME, OPSET, OUTPUT_NAME, sidecar_path, write_onnx
from mobilegeo_ros.util.files import atomic_write_bytes

FORMATS = ("onnx", "tensorrt")


def export_onnx_file(model_cfg: ModelConfig, out: Path, opset: int = OPSET) -> Path:
    """Export ``model_cfg``'s weights (``model_cfg.weights``; empty = shipped ImageNet weights) to the ONNX file
    ``out``: input ``images`` B×3×S×S float32 (S = ``model_cfg.input_px``, dynamic B), output ``embeddings``
    B×D float32 with unit rows, ONNX opset ``opset``. Writes ``out`` and ``out.json``; returns ``out``."""
    from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM

    out = Path(out)
    if out.suffix != ".onnx":
        raise ModelError(f"--out {str(out)!r}: an ONNX export needs a .onnx file name")
    if out.is_dir():
        raise ModelError(f"--out {str(out)!r} is a directory")
    torch_model = MobileNetV2GeM(ModelConfig(**{**vars(model_cfg), "device": "cpu", "precision": "fp32"}))
    meta = {"identity": torch_model.identity(), "format": "onnx", "opset": int(opset), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME, "input_px": int(model_cfg.input_px), "dynamic_batch": True,
            "weights": str(torch_model.weights_path)}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(sidecar_path(out), json.dumps(meta, indent=2).encode())
    try:
        write_onnx(torch_model.module, out, model_cfg.input_px, opset)
    except BaseException:
        sidecar_path(out).unlink(missing_ok=True)
        raise
    return out


def export_tensorrt_file(cfg: Config, out: Path, precision: str = "fp16", calib_map: Path | None = None,
                         calib_images: int = 256, max_batch: int = 32, workspace_mib: int = 1024) -> Path:
    """Build a TensorRT engine ``out`` (+ ``out.json``) for ``cfg.model`` via an ONNX export (opset
    :data:`~.onnx_backend.OPSET`, kept next to it as ``out.onnx`` for ``trtexec``). int8 needs ``calib_map`` (the
    orthophoto the engine will serve): calibration images are rendered from it (:func:`calibration_batches`).

    Fails fast with :class:`ModelError` naming the missing package when TensorRT is not installed (before any
    export or rendering work). Unverified here: see docs/deployment.md.
    """
    from mobilegeo_ros.model.tensorrt_backend import (
        ENGINE_SUFFIXES,
        build_engine,
        calibration_batches,
        import_tensorrt,
    )

    out = Path(out)
    if not out.name.endswith(ENGINE_SUFFIXES):
        raise ModelError(f"--out {str(out)!r}: a TensorRT engine file name ends with one of "
                         f"{', '.join(ENGINE_SUFFIXES)}")
    if precision == "int8" and calib_map is None:
        raise ModelError("--precision int8 needs --calib-map MAP.tif (calibration images are rendered from the map)")
    import_tensorrt()
    onnx_path = export_onnx_file(cfg.model, out.with_suffix(".onnx"))
    identity = json.loads(sidecar_path(onnx_path).read_text())["identity"]
    batches = None
    if precision == "int8":
        batches = calibration_batches(Path(calib_map), cfg, n_images=calib_images, batch_size=min(16, max_batch))
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cache = Path(tmp) / "calibration.cache"
        return build_engine(onnx_path, out, precision, max_batch=max_batch, opt_batch=1,
                            workspace_mib=workspace_mib, calibration=batches, calibration_cache=cache,
                            identity=identity)


__all__ = ["FORMATS", "export_onnx_file", "export_tensorrt_file"]
