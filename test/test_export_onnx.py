"""`mobilegeo export --format onnx`: a checked ONNX file with a dynamic batch axis and an identity sidecar that
agrees with PyTorch (cosine >= 0.9999, same top-1 on rendered views) and serves an index built with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from mobilegeo_ros import cli
from mobilegeo_ros.config import ModelConfig, from_dict
from mobilegeo_ros.geo.imageops import center_square
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, photometric, random_poses, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.index import TileIndex
from mobilegeo_ros.index.build import build_index
from mobilegeo_ros.localizer import Localizer, Priors
from mobilegeo_ros.model import ModelError, load_model
from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel, sidecar_path

pytest.importorskip("onnxruntime")
PX = 128  # small network input keeps the file at a few seconds


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    map_path = write_synthetic_geotiff(root / "map.tif", 500, 500, 1.0, seed=11)
    cfg = from_dict({"map": {"tile_sizes_m": [100.0], "overlap": 0.5, "tile_px": PX},
                     "model": {"input_px": PX},
                     "index": {"kind": "flat", "heading": "gallery_rotations", "rotations": 4},
                     "render": {"image_width_px": 320, "image_height_px": 240, "altitude_m": [70.0, 90.0],
                                "max_tilt_deg": 5.0}})
    torch_model = load_model(cfg.model)
    index_dir = build_index(map_path, root / "index", cfg, torch_model, progress=False)
    onnx_path = root / "student.onnx"
    assert cli.main(["export", "--format", "onnx", "--out", str(onnx_path), "--input-px", str(PX), "--quiet"]) == 0
    ortho = read_orthophoto(map_path, cfg.map)
    rng = np.random.default_rng(4)
    camera = CameraModel(320, 240, 70.0)
    views = [center_square(photometric(render_view(ortho, pose, camera), rng, cfg.render))
             for pose in random_poses(ortho, 24, rng, cfg.render, camera)]
    return {"root": root, "map": map_path, "cfg": cfg, "torch": torch_model, "index_dir": index_dir,
            "onnx": onnx_path, "views": views}


def test_exported_file_is_checked_onnx_with_dynamic_batch_and_identity(setup):
    path = setup["onnx"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, PX, PX]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 1280
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["identity"] == setup["torch"].identity() and meta["opset"] == 17 and meta["format"] == "onnx"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_onnx_matches_torch_cosine_and_top1(setup):
    onnx_model = load_model(ModelConfig(backend="onnxruntime", weights=str(setup["onnx"]), input_px=PX,
                                        batch_size=7))
    assert isinstance(onnx_model, OnnxRuntimeModel) and onnx_model.onnx_path == setup["onnx"]
    a, b = setup["torch"].embed(setup["views"]), onnx_model.embed(setup["views"])  # batches of 7: dynamic batch
    assert b.shape == a.shape == (24, 1280)
    assert (a * b).sum(axis=1).min() >= 0.9999
    index = TileIndex.load(setup["index_dir"], expected_identity=onnx_model.identity())
    _, rows_t = index.search(a, 1)
    _, rows_o = index.search(b, 1)
    np.testing.assert_array_equal(rows_t[:, 0], rows_o[:, 0])
    # batch size 1 gives the same result as batch 7
    single = np.concatenate([onnx_model.embed([v]) for v in setup["views"][:3]])
    np.testing.assert_allclose(single, b[:3], atol=1e-5)


def test_index_built_with_torch_serves_the_onnx_model(setup):
    cfg = setup["cfg"]
    cfg_onnx = from_dict({**json.loads(json.dumps(cfg, default=vars)),
                          "model": {**vars(cfg.model), "backend": "onnxruntime", "weights": str(setup["onnx"])}})
    loc = Localizer.from_files(setup["index_dir"], cfg_onnx)
    assert isinstance(loc.model, OnnxRuntimeModel)
    # a clean nadir view 80 m above a known point: the registration verifies it, so it is a refined fix there
    ortho = read_orthophoto(setup["map"], cfg.map)
    left, bottom, right, top = ortho.bounds
    e, n = left + 0.4 * (right - left), bottom + 0.55 * (top - bottom)
    view = render_view(ortho, CameraPose(e, n, 80.0, 0.0), CameraModel(320, 240, 70.0))
    fix = loc.localize([view], Priors(hfov_deg=70.0))  # the camera's field of view, as camera_info gives it
    assert fix.status != "no_fix" and fix.refined, fix.reason
    # measured 0.02 m (HEAD 07e5db1); retrieval alone is tile-level (100 m tiles)
    assert np.hypot(fix.easting - e, fix.northing - n) < 1.0
    # the CLI's --backend on an index built with torch (its stored config, backend swapped)
    img = setup["root"] / "view.png"
    import cv2
    cv2.imwrite(str(img), setup["views"][0][:, :, ::-1])
    assert cli.main(["localize", "--index", str(setup["index_dir"]), "--backend", "onnxruntime", "--json",
                     str(img)]) == 0


def test_onnx_without_identity_sidecar_is_refused(setup, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(setup["onnx"].read_bytes())
    with pytest.raises(ModelError, match="lone.onnx.json"):
        load_model(ModelConfig(backend="onnxruntime", weights=str(lone), input_px=PX))


def test_export_refuses_bad_output_names(setup, tmp_path, capsys):
    assert cli.main(["export", "--format", "onnx", "--out", str(tmp_path / "x.bin"), "--quiet"]) == 2
    assert "needs a .onnx file name" in capsys.readouterr().err
    assert cli.main(["export", "--format", "onnx", "--model", str(tmp_path / "missing.pt"),
                     "--out", str(tmp_path / "x.onnx")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
