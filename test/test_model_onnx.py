"""ONNX Runtime backend: exported graph agrees with torch, same identity, cached export."""

from __future__ import annotations

import numpy as np
import pytest

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.geo.synthetic import synthetic_rgb
from mobilegeo_ros.model import load_model
from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel
from mobilegeo_ros.util.files import cache_dir

pytest.importorskip("onnxruntime")


def test_onnxruntime_matches_torch_and_shares_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEGEO_CACHE_DIR", str(tmp_path / "cache"))
    scene = (synthetic_rgb(500, 500, 0.5, seed=3) * 255).astype(np.uint8)
    images = [scene[i * 60:i * 60 + 200, i * 50:i * 50 + 240] for i in range(5)]
    torch_model = load_model(ModelConfig(backend="torch"))
    onnx_model = load_model(ModelConfig(backend="onnxruntime", batch_size=2))
    assert isinstance(onnx_model, OnnxRuntimeModel)
    assert onnx_model.onnx_path.parent == cache_dir("onnx") == tmp_path / "cache" / "onnx"
    a, b = torch_model.embed(images), onnx_model.embed(images)
    assert b.shape == (5, 1280) and b.dtype == np.float32
    assert (a * b).sum(axis=1).min() >= 0.9999
    assert onnx_model.identity() == torch_model.identity()
    assert onnx_model.fingerprint() == torch_model.fingerprint()

    # Second construction is a cache hit: the same file, not re-exported.
    mtime = onnx_model.onnx_path.stat().st_mtime_ns
    again = OnnxRuntimeModel(ModelConfig(backend="onnxruntime"))
    assert again.onnx_path == onnx_model.onnx_path and again.onnx_path.stat().st_mtime_ns == mtime
    assert not [p for p in again.onnx_path.parent.iterdir() if p.name.startswith(".")]
    # A different input size is a different export and a different identity.
    small = OnnxRuntimeModel(ModelConfig(backend="onnxruntime", input_px=128))
    assert small.onnx_path != onnx_model.onnx_path and small.fingerprint() != onnx_model.fingerprint()
