"""TensorRT backend: an engine built from the exported ONNX graph (fp32, fp16, or int8 calibrated on the map) and run
with the TensorRT 10 Python runtime on explicit CUDA buffers.

UNVERIFIED HERE: TensorRT cannot be installed on the machines this project is developed on, so :func:`build_engine`
and :class:`TensorRTModel` are written against the documented TensorRT 10 Python API (``tensorrt.Builder``,
``OnnxParser``, ``IBuilderConfig``, ``IInt8EntropyCalibrator2``, ``Runtime``, ``IExecutionContext``) and have never
run. Everything they consume is tested: the ONNX graph (:func:`check_onnx_for_tensorrt`), the calibration batches
(:func:`calibration_batches`) and the missing-package error (:func:`import_tensorrt`). See docs/deployment.md.

Device memory is managed with torch CUDA tensors (``tensor.data_ptr()`` is the device address TensorRT binds), so no
extra CUDA binding package is needed; the stream is torch's current CUDA stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegeo_ros.config import Config, ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.model.onnx_backend import INPUT_NAME, OUTPUT_NAME, export_onnx, read_sidecar, sidecar_path
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.util.files import atomic_write_bytes, cache_dir

log = logging.getLogger(__name__)

TENSORRT_INSTALL = ("on a Jetson (JetPack 6) it comes with JetPack: sudo apt install python3-libnvinfer; on x86_64 "
                    "with CUDA 12: pip install tensorrt")
# The TensorRT 10 ONNX parser handles opsets 9..20 (onnx-tensorrt operator support matrix).
MIN_OPSET, MAX_OPSET = 9, 20
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def import_tensorrt():
    """``import tensorrt`` or :class:`ModelError` naming the missing package and how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelError("TensorRT (model.backend 'tensorrt', export --format tensorrt) needs NVIDIA's 'tensorrt' "
                         f"Python package, which is not installed ({TENSORRT_INSTALL}); use backend 'onnxruntime' or "
                         "'torch' instead") from None
    return trt


# --------------------------------------------------------------------------------------------------------------------
# What the builder consumes: the ONNX graph and the calibration batches (both testable without TensorRT)


@dataclass(frozen=True)
class OnnxSignature:
    """The I/O of an embedding ONNX graph as TensorRT will see it."""

    input_name: str
    output_name: str
    input_px: int
    dim: int
    opset: int


def check_onnx_for_tensorrt(onnx_path: Path, input_px: int | None = None) -> OnnxSignature:
    """Check that ``onnx_path`` is an embedding graph TensorRT can build an engine with a batch profile for.

    Requirements: valid ONNX (``onnx.checker``), default-domain opset in [:data:`MIN_OPSET`, :data:`MAX_OPSET`],
    exactly one input ``B×3×S×S`` float32 with a symbolic (dynamic) batch axis and static S (= ``input_px`` when
    given), exactly one output ``B×D`` float32 with the same dynamic batch axis and static D. Raises
    :class:`ModelError` naming the file and the problem.
    """
    import onnx

    onnx_path = Path(onnx_path)
    what = f"ONNX model {str(onnx_path)!r}"
    if not onnx_path.is_file():
        raise ModelError(f"{what} does not exist")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # protobuf DecodeError and friends: not an ONNX file at all
        raise ModelError(f"{what} is not a valid ONNX model: {e}") from None
    # The opset first: a graph of an unsupported opset also fails the checker, less clearly.
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"{what}: opset {opset} is outside what the TensorRT 10 ONNX parser supports "
                         f"({MIN_OPSET}..{MAX_OPSET}); export with --opset 17")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError and friends
        raise ModelError(f"{what} is not a valid ONNX model: {e}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelError(f"{what}: expected one input and one output, found {len(inputs)} and "
                         f"{len(model.graph.output)}")

    def dims(value_info) -> list:
        return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                for d in value_info.type.tensor_type.shape.dim]

    inp, out = inputs[0], model.graph.output[0]
    for vi in (inp, out):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"{what}: tensor {vi.name!r} must be float32, has ONNX type "
                             f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
    di, do = dims(inp), dims(out)
    if len(di) != 4 or not isinstance(di[0], str) or di[1] != 3 or not isinstance(di[2], int) or di[2] != di[3]:
        raise ModelError(f"{what}: input {inp.name!r} must be B×3×S×S with a dynamic batch axis B, has {di} "
                         "(export with a dynamic batch axis)")
    if input_px is not None and di[2] != input_px:
        raise ModelError(f"{what}: input is {di[2]}×{di[3]} px, model.input_px is {input_px}")
    if len(do) != 2 or do[0] != di[0] or not isinstance(do[1], int) or do[1] < 1:
        raise ModelError(f"{what}: output {out.name!r} must be B×D with the input's batch axis, has {do}")
    return OnnxSignature(inp.name, out.name, int(di[2]), int(do[1]), int(opset))


def calibration_batches(map_path: Path, cfg: Config, n_images: int = 256, batch_size: int = 16,
                        seed: int = 0) -> list[np.ndarray]:
    """INT8 calibration data from the map the engine will serve: what the network sees in production.

    Half the images are gallery tiles (random tiles of :func:`~mobilegeo_ros.geo.tiles.tile_grid` at random gallery
    rotations, ``cfg.map.tile_px``), half are synthetic drone views (:func:`~mobilegeo_ros.geo.render.render_view`
    + photometric changes, poses from ``cfg.render``) cut to their central square as the localizer does. Each is
    preprocessed with the shared :func:`~mobilegeo_ros.model.preprocess.preprocess` at ``cfg.model.input_px``.

    Returns ``n_images // batch_size`` arrays, each ``batch_size×3×S×S`` float32 C-contiguous (the calibrator needs a
    fixed batch size, so a partial last batch is dropped). Deterministic for a seed. Raises ValueError when
    ``n_images < batch_size``; GeoError for a bad map.
    """
    from mobilegeo_ros.geo.raster import read_orthophoto
    from mobilegeo_ros.geo.render import CameraModel, photometric, random_poses, render_view
    from mobilegeo_ros.geo.imageops import center_square
    from mobilegeo_ros.geo.tiles import cut_tile, gallery_rotations, tile_grid

    if batch_size < 1 or n_images < batch_size:
        raise ValueError(f"calibration: need n_images >= batch_size >= 1, got {n_images} and {batch_size}")
    n_images -= n_images % batch_size
    rng = np.random.default_rng(seed)
    ortho = read_orthophoto(Path(map_path), cfg.map)
    specs = tile_grid(ortho, cfg.map.tile_sizes_m, cfg.map.overlap)
    rotations = gallery_rotations(cfg.index)
    n_tiles = n_images // 2
    images = [cut_tile(ortho, specs[int(i)], cfg.map.tile_px, float(rng.choice(rotations)))
              for i in rng.choice(len(specs), n_tiles, replace=n_tiles > len(specs))]  # distinct when possible
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    for pose in random_poses(ortho, n_images - n_tiles, rng, cfg.render, camera):
        images.append(center_square(photometric(render_view(ortho, pose, camera), rng, cfg.render)))
    order = rng.permutation(len(images))  # mix tiles and views inside every batch
    x = preprocess([images[i] for i in order], cfg.model.input_px)
    return [np.ascontiguousarray(x[s:s + batch_size]) for s in range(0, n_images, batch_size)]


# --------------------------------------------------------------------------------------------------------------------
# Engine builder (TensorRT 10 Python API; unverified here)


def _make_calibrator(trt, batches: list[np.ndarray], cache_file: Path | None):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from one reused device buffer (torch CUDA tensor)."""
    import torch

    class MapCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._next = 0
            self._device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(self._batches[0].shape[0])

        def get_batch(self, names):  # -> list of device pointers, one per input, or None when done
            if self._next >= len(self._batches):
                return None
            self._device.copy_(torch.from_numpy(self._batches[self._next]))
            torch.cuda.synchronize()
            self._next += 1
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self):
            if cache_file is not None and cache_file.is_file():
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_file is not None:
                atomic_write_bytes(cache_file, bytes(cache))

    return MapCalibrator()


def build_engine(onnx_path: Path, engine_path: Path, precision: str = "fp16", *, max_batch: int = 32,
                 opt_batch: int = 1, workspace_mib: int = 1024, calibration: list[np.ndarray] | None = None,
                 calibration_cache: Path | None = None, identity: dict | None = None) -> Path:
    """Build a serialized TensorRT engine from the embedding ONNX graph and write it atomically to ``engine_path``
    (plus ``engine_path.json``: identity, precision, TensorRT version, GPU; an engine is tied to both).

    ``precision``: fp32, fp16 (``BuilderFlag.FP16``) or int8 (``BuilderFlag.INT8`` + FP16 fallback, calibrated by an
    ``IInt8EntropyCalibrator2`` on ``calibration``, batches from :func:`calibration_batches`; the calibration table
    is cached in ``calibration_cache`` when given). One optimisation profile: batch 1..``max_batch``, tuned for
    ``opt_batch``. ``workspace_mib`` caps the builder's workspace memory pool. Raises :class:`ModelError`.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 1 <= opt_batch <= max_batch:
        raise ModelError(f"batch profile: need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    if precision == "int8" and not calibration:
        raise ModelError("precision int8 needs calibration batches rendered from the map (--calib-map MAP.tif)")
    sig = check_onnx_for_tensorrt(onnx_path)
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise ModelError("building a TensorRT engine needs a CUDA GPU visible to torch; none found")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {str(onnx_path)!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    chw = (3, sig.input_px, sig.input_px)
    profile.set_shape(sig.input_name, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast fp16; the engine may be slower than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_calibrator(trt, calibration, calibration_cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {str(onnx_path)!r} (see the log above)")
    meta = {"identity": identity, "format": "tensorrt", "precision": precision, "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(0), "max_batch": max_batch, "opt_batch": opt_batch,
            "input_name": sig.input_name, "output_name": sig.output_name, "input_px": sig.input_px,
            "dim": sig.dim, "onnx_opset": sig.opset}
    engine_path = Path(engine_path)
    atomic_write_bytes(sidecar_path(engine_path), json.dumps(meta, indent=2).encode())
    atomic_write_bytes(engine_path, bytes(serialized))
    return engine_path


# --------------------------------------------------------------------------------------------------------------------
# Runtime (TensorRT 10 Python API; unverified here)


class TensorRTModel(EmbeddingModel):
    """TensorRT backend of ``mobilenetv2_gem``; same identity (hence same indexes) as the torch backend.

    Engine: ``model.weights`` naming an engine file written by ``mobilegeo export --format tensorrt`` (``.engine``,
    ``.plan`` or ``.trt`` with its ``.json`` identity sidecar; the only way to get an int8 engine, which needs the
    map for calibration), else an fp32/fp16 engine built on first use from the cached ONNX export and cached under
    ``$MOBILEGEO_CACHE_DIR/tensorrt`` (keyed by the ONNX file, precision, TensorRT version and GPU name).
    """

    def __init__(self, model_cfg: ModelConfig | None = None) -> None:
        cfg = model_cfg if model_cfg is not None else ModelConfig()
        trt = import_tensorrt()
        import torch

        if not cfg.device.startswith("cuda"):
            raise ModelError(f"model.device: backend tensorrt runs on a CUDA GPU, set model.device to cuda (is "
                             f"{cfg.device!r})")
        if not torch.cuda.is_available():
            raise ModelError("model.backend 'tensorrt' needs a CUDA GPU visible to torch; none found")
        if cfg.precision not in PRECISIONS:
            raise ModelError(f"model.precision: {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
        self.device = torch.device(cfg.device)
        torch.cuda.set_device(self.device)
        self.name = cfg.name
        self.input_px = int(cfg.input_px)
        if cfg.weights.endswith(ENGINE_SUFFIXES):
            self.engine_path = Path(cfg.weights)
            meta = read_sidecar(self.engine_path)
        else:
            if cfg.precision == "int8":
                raise ModelError("model.precision int8: build a calibrated engine first (mobilegeo export --format "
                                 "tensorrt --precision int8 --calib-map MAP.tif --out model.engine) and set "
                                 "model.weights to it")
            onnx_path, identity = export_onnx(ModelConfig(**{**vars(cfg), "device": "cpu", "precision": "fp32"}))
            key = hashlib.sha256(json.dumps([onnx_path.name, cfg.precision, trt.__version__,
                                             torch.cuda.get_device_name(self.device)]).encode()).hexdigest()[:24]
            self.engine_path = cache_dir("tensorrt") / f"{cfg.name}-{key}.engine"
            if not (self.engine_path.is_file() and sidecar_path(self.engine_path).is_file()):
                log.info("building a %s TensorRT engine from %s (minutes on a Jetson)", cfg.precision, onnx_path)
                build_engine(onnx_path, self.engine_path, cfg.precision, max_batch=int(cfg.batch_size),
                             opt_batch=1, identity=identity)
            meta = read_sidecar(self.engine_path)
        self._identity = meta["identity"]
        self.dim = int(self._identity["dim"])
        self.batch_size = min(int(cfg.batch_size), int(meta.get("max_batch", cfg.batch_size)))
        if int(meta.get("input_px", self.input_px)) != self.input_px:
            raise ModelError(f"engine {str(self.engine_path)!r} takes {meta['input_px']} px, model.input_px is "
                             f"{self.input_px}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ModelError(f"engine {str(self.engine_path)!r} could not be deserialized (built with another "
                             f"TensorRT version or GPU? it records TensorRT {meta.get('tensorrt')} on "
                             f"{meta.get('gpu')}); rebuild it on this machine")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        modes = {n: self._engine.get_tensor_mode(n) for n in names}
        inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        if inputs != [meta.get("input_name", INPUT_NAME)] or outputs != [meta.get("output_name", OUTPUT_NAME)]:
            raise ModelError(f"engine {str(self.engine_path)!r}: I/O tensors {inputs} -> {outputs} are not the "
                             "exported embedding graph's")
        self._in, self._out = inputs[0], outputs[0]
        self._torch = torch

    def identity(self) -> dict:
        return json.loads(json.dumps(self._identity))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        out = torch.empty((x.shape[0], self.dim), dtype=torch.float32, device=self.device)
        self._context.set_input_shape(self._in, tuple(x.shape))
        self._context.set_tensor_address(self._in, int(x.data_ptr()))
        self._context.set_tensor_address(self._out, int(out.data_ptr()))
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"TensorRT execution failed for a batch of {x.shape[0]} ({self.engine_path})")
        stream.synchronize()
        return out.cpu().numpy()


__all__ = ["ENGINE_SUFFIXES", "MAX_OPSET", "MIN_OPSET", "OnnxSignature", "PRECISIONS", "TENSORRT_INSTALL",
           "TensorRTModel", "build_engine", "calibration_batches", "check_onnx_for_tensorrt", "import_tensorrt"]
