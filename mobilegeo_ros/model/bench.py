"""Backend benchmark: per model × backend × batch size, FLOPs, parameters, images/s and latency p50/p99.

Models: the student (``mobilenetv2_gem``, the ImageNet MobileNetV2 + GeM until trained weights exist, or
``model.weights``) and the teacher baseline (:mod:`.baseline_resnet50`, ResNet-50-thin, ONNX only). Backends: torch (CPU;
CUDA fp32 and fp16 when a GPU is visible), onnxruntime (CPU; CUDA when onnxruntime-gpu is installed), tensorrt (when
installed). A backend that cannot run here is a row with its reason, not an error.

Timing is end to end through :meth:`EmbeddingModel.embed` (preprocessing of 224×224 uint8 crops included, as in
production), on crops of a synthetic map; one warm-up call, then calls until ``min_seconds`` have passed. Latency is
per call (one batch); images/s = batch / mean call latency.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import EmbeddingModel, ModelError
from mobilegeo_ros.util.files import atomic_write_text


@dataclass
class Variant:
    """One model × backend × device × precision combination to time."""

    model: str
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    make: Callable[[], EmbeddingModel] | None = None
    flops: int | None = None
    params: int | None = None
    notes: list[str] = field(default_factory=list)


def _student_variants(base: ModelConfig, threads: int, max_batch: int) -> list[Variant]:
    import torch

    def cfg(**kw) -> ModelConfig:
        return ModelConfig(**{**vars(base), "num_threads": threads, "batch_size": max_batch, **kw})

    from mobilegeo_ros.model import load_model
    combos = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32")]
    if torch.cuda.is_available():
        combos += [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("onnxruntime", "cuda", "fp32"),
                   ("tensorrt", "cuda", "fp16")]
    else:
        combos += [("tensorrt", "cuda", "fp16")]  # reported as unavailable with the reason
    out = []
    for backend, device, precision in combos:
        c = cfg(backend=backend, device=device, precision=precision)
        out.append(Variant("student " + base.name, backend, device, precision,
                           make=lambda c=c: load_model(c)))
    return out


def _teacher_variants(threads: int, max_batch: int) -> list[Variant]:
    import torch

    from mobilegeo_ros.model.baseline_resnet50 import OpenNsfwTeacher

    out = [Variant("teacher open_nsfw_resnet50_thin", "onnxruntime", "cpu", "fp32",
                   make=lambda: OpenNsfwTeacher(threads, max_batch, "cpu"))]
    if torch.cuda.is_available():
        out.append(Variant("teacher open_nsfw_resnet50_thin", "onnxruntime", "cuda", "fp32",
                           make=lambda: OpenNsfwTeacher(threads, max_batch, "cuda")))
    return out


def _model_size(model: EmbeddingModel) -> tuple[int | None, int | None]:
    """(FLOPs per image, parameters) of a loaded model, whatever its backend."""
    from mobilegeo_ros.model.flops import onnx_flops, onnx_params
    from mobilegeo_ros.model.baseline_resnet50 import OpenNsfwTeacher

    if isinstance(model, OpenNsfwTeacher):
        return onnx_flops(model.onnx_path, (1, model.input_px, model.input_px, 3)), onnx_params(model.onnx_path)
    if getattr(model, "module", None) is not None:
        return _torch_size(model)
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is not None:  # ONNX export of the student: FLOPs from the graph, params after BN folding
        return onnx_flops(onnx_path, (1, 3, model.input_px, model.input_px)), onnx_params(onnx_path)
    return None, None


def _torch_size(model) -> tuple[int, int]:
    from mobilegeo_ros.model.flops import torch_flops, torch_params
    from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeMNet

    # Count on a CPU fp32 copy so the numbers do not depend on the device or precision being timed.
    net = MobileNetV2GeMNet()
    net.load_state_dict({k: v.float().cpu() for k, v in model.module.state_dict().items()})
    return torch_flops(net.eval(), model.input_px), torch_params(net)


def time_embed(model: EmbeddingModel, images: list[np.ndarray], batch: int, min_seconds: float,
               max_calls: int = 100_000) -> dict:
    """Call ``model.embed`` on successive ``batch``-sized slices of ``images`` for at least ``min_seconds`` (and
    at least 5 calls) after one warm-up; returns images/s and latency statistics per call (milliseconds)."""
    model.embed(images[:batch])
    lat = []
    t_end = time.perf_counter() + min_seconds
    start = 0
    while (time.perf_counter() < t_end or len(lat) < 5) and len(lat) < max_calls:
        if start + batch > len(images):
            start = 0
        t = time.perf_counter()
        model.embed(images[start:start + batch])
        lat.append(time.perf_counter() - t)
        start += batch
    lat_ms = 1e3 * np.asarray(lat)
    return {"images_per_s": batch / float(np.mean(lat)), "latency_ms_p50": float(np.percentile(lat_ms, 50)),
            "latency_ms_p99": float(np.percentile(lat_ms, 99)), "calls": len(lat)}


def bench_images(n: int = 64, px: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` px×px uint8 RGB crops of the synthetic test scene (deterministic)."""
    from mobilegeo_ros.geo.synthetic import synthetic_rgb

    scene = (synthetic_rgb(1024, 1024, 0.5, seed=seed) * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    return [np.ascontiguousarray(scene[r:r + px, c:c + px]) for r, c in rng.integers(0, 1024 - px, (n, 2))]


def run_backend_bench(batches: tuple[int, ...] = (1, 32), threads: int = 2, min_seconds: float = 3.0,
                      models: tuple[str, ...] = ("student", "teacher"), base: ModelConfig | None = None,
                      log: Callable[[str], None] | None = print) -> dict:
    """Time every available variant; returns ``{"environment": {...}, "rows": [...]}`` (JSON-able).

    Each row: model, backend, device, precision, batch, flops_per_image, params, images_per_s, latency_ms_p50,
    latency_ms_p99, calls, or ``unavailable`` with the reason.
    """
    import onnxruntime
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    base = base or ModelConfig()
    max_batch = max(batches)
    variants: list[Variant] = []
    if "student" in models:
        variants += _student_variants(base, threads, max_batch)
    if "teacher" in models:
        variants += _teacher_variants(threads, max_batch)
    images = bench_images(max(64, 2 * max_batch))
    env = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "input_px": base.input_px, "min_seconds": min_seconds,
           "timing": "EmbeddingModel.embed on 224x224 uint8 crops, preprocessing included",
           # Other processes on the same cores distort CPU timings (OpenMP threads spin-wait): record the load.
           "loadavg_1min_at_start": os.getloadavg()[0]}
    rows = []
    sizes: dict[str, tuple[int | None, int | None]] = {}
    for v in variants:
        head = {"model": v.model, "backend": v.backend, "device": v.device, "precision": v.precision}
        try:
            model = v.make()
        except ModelError as e:
            rows.append({**head, "unavailable": str(e)})
            if log:
                log(f"{v.model} {v.backend}/{v.device}/{v.precision}: unavailable: {e}")
            continue
        if v.model not in sizes:
            sizes[v.model] = _model_size(model)
        flops, params = sizes[v.model]
        for b in batches:
            r = {**head, "batch": b, "flops_per_image": flops, "params": params,
                 **time_embed(model, images, b, min_seconds)}
            rows.append(r)
            if log:
                log(format_row(r))
        del model
    return {"environment": env, "rows": rows}


HEADER = (f"{'model':<34s} {'backend':<12s} {'dev':<5s} {'prec':<5s} {'batch':>5s} {'GFLOPs':>7s} {'params':>7s} "
          f"{'img/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")


def format_row(r: dict) -> str:
    if "unavailable" in r:
        return (f"{r['model']:<34s} {r['backend']:<12s} {r['device']:<5s} {r['precision']:<5s} "
                f"unavailable: {r['unavailable'][:90]}")
    gflops = f"{r['flops_per_image'] / 1e9:.2f}" if r.get("flops_per_image") else "-"
    params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
    return (f"{r['model']:<34s} {r['backend']:<12s} {r['device']:<5s} {r['precision']:<5s} {r['batch']:>5d} "
            f"{gflops:>7s} {params:>7s} {r['images_per_s']:>8.1f} {r['latency_ms_p50']:>8.2f} "
            f"{r['latency_ms_p99']:>8.2f}")


def format_table(result: dict) -> str:
    return "\n".join([HEADER] + [format_row(r) for r in result["rows"]])


def write_json(result: dict, path: Path) -> Path:
    """Write ``result`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


__all__ = ["bench_images", "format_row", "format_table", "run_backend_bench", "time_embed", "write_json"]
