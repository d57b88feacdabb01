"""Two verified registrations that disagree are no fix, under every refine.fallback, end to end.

A real synthetic map whose top-left 100 m block is copied onto its bottom-right block: a nadir view of either copy
registers (verifies) on both places, 141 m apart. The localizer (through the tracker, as the node runs it) must answer
no fix whatever ``refine.fallback`` says — a flight controller must never get one of two equally good places.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.estimator.refine import Registration, choose
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.index.build import build_index
from mobilegeo_ros.localizer import Localizer, Priors
from mobilegeo_ros.tracker import Tracker

OVERRIDES = {"map": {"tile_sizes_m": [60.0], "overlap": 0.5, "tile_px": 128}, "model": {"input_px": 128},
             "index": {"rotations": 4}, "estimator": {"top_k": 10},
             # ratio 1.0: the view's descriptors are matched against the union of all candidate windows at once, so
             # Lowe's ratio test alone would already reject every keypoint that has a twin (no candidate verifies,
             # also no fix). Without it each keypoint goes to the nearer twin and BOTH places verify: the case the
             # ambiguity rule exists for.
             "refine": {"top_k": 10, "stop_inliers": 0, "ratio": 1.0}}


@pytest.fixture(scope="module")
def twin_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    src = write_synthetic_geotiff(root / "src.tif", width_px=400, height_px=400, gsd_m=0.5, seed=11)
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    rng = np.random.default_rng(0)
    twin = data[:, 0:200, 0:200].astype(np.float64) + rng.normal(0.0, 2.0, (data.shape[0], 200, 200))
    data[:, 200:400, 200:400] = np.clip(twin, 0, 255).astype(data.dtype)  # bottom-right block := top-left + noise
    path = root / "twin.tif"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    cfg = config_mod.from_dict(OVERRIDES)
    build_index(path, root / "index", cfg, progress=False)
    return path, root / "index"


def test_choose_reports_two_far_verified_candidates_as_ambiguous():
    def reg(e, n, inliers):
        return Registration(True, "ok", center_e=e, center_n=n, cov_en=np.eye(2), inliers=inliers)

    cfg = config_mod.Config().refine
    assert choose([reg(0, 0, 100), reg(100, 0, 90)], cfg).status == "ambiguous"
    # the same place twice, or a far candidate with few inliers, is not ambiguous
    assert choose([reg(0, 0, 100), reg(3, 0, 90)], cfg).status == "refined"
    assert choose([reg(0, 0, 100), reg(100, 0, 10)], cfg).status == "refined"


@pytest.mark.parametrize("fallback", ["no_fix", "retrieval"])
def test_twin_places_give_no_fix_under_every_fallback(twin_map, fallback):
    path, index_dir = twin_map
    cfg = config_mod.from_dict({**OVERRIDES, "refine": {**OVERRIDES["refine"], "fallback": fallback}})
    loc = Localizer.from_files(index_dir, cfg)
    ortho = read_orthophoto(path, cfg.map)
    left, _, _, top = ortho.bounds
    cam = CameraModel(320, 240, 70.0)
    # the centre of the top-left block (50 m, 50 m from the corner): its twin is 141 m away
    pose = CameraPose(left + 50.0, top - 50.0, 60.0, 0.0)
    res = Tracker(loc, cfg).process(render_view(ortho, pose, cam), 0.0, Priors(altitude_m=60.0, hfov_deg=70.0))
    assert res.status is FixStatus.NO_FIX, (res.status, res.reason)
    assert "ambiguous" in res.reason
    assert math.isnan(res.lat) and math.isnan(res.sigma_m)
