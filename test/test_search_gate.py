"""Search bounded by a position prior: only the gate's tiles are searched when the prior is right; a wrong prior
widens ring by ring to the whole index until a registration verifies; diagnostics say which search found the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobilegeo_ros.config import from_dict
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
from mobilegeo_ros.localizer import Localizer, Priors
from synthetic_world import synthetic_setup

CAM = CameraModel(320, 240, 70.0)


#: 500 m × 500 m at 0.5 m, 60 m north-up tiles: 225 tiles; a registration window (~100 m around a tile) covers a
#: small part of it, so a wrong prior's gate really does not hold the place.
MAP = {"width_px": 1000, "height_px": 1000, "gsd_m": 0.5, "seed": 9}
CONFIG = {"map": {"tile_sizes_m": [60.0], "overlap": 0.5, "tile_px": 96}, "model": {"input_px": 96},
          "index": {"heading": "none"}}


@pytest.fixture(scope="module")
def world():
    setup = synthetic_setup(map_kw=MAP, overrides=CONFIG)
    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    left, bottom, right, top = ortho.bounds
    pose = CameraPose(left + 0.3 * (right - left), bottom + 0.35 * (top - bottom), 60.0, 0.0, 0.0, 0.0)
    image = render_view(ortho, pose, CAM)
    return setup, ortho, pose, image


def _loc(setup, **estimator) -> Localizer:
    # registration decides (the synthetic town's retrieval clusters are often too flat for the default share)
    estimator = {"min_cluster_weight": 0.0, **estimator}
    return Localizer.from_files(setup.index_dir, from_dict({**setup.overrides, "estimator": estimator}))


def _prior(ortho, e: float, n: float, radius_m: float) -> Priors:
    lat, lon = ortho.map_to_wgs84(e, n)
    return Priors(hfov_deg=CAM.hfov_deg, lat=float(lat), lon=float(lon), radius_m=radius_m)


def _rows_within(loc: Localizer, e: float, n: float, radius_m: float) -> int:
    c = loc.index.columns
    return int((np.hypot(c["center_e"] - e, c["center_n"] - n) - c["size_m"] / 2 <= radius_m).sum())


def test_no_prior_searches_the_whole_index(world):
    setup, _, pose, image = world
    loc = _loc(setup)
    fix = loc.localize([image], Priors(hfov_deg=CAM.hfov_deg))
    assert fix.status == "verified", fix.reason
    assert fix.search.mode == "index" and fix.search.steps == 1 and fix.search.rows == loc.index.ntotal
    assert "search" not in fix.reason  # an ungated search adds nothing to the reason


def test_right_prior_searches_only_the_gate(world):
    setup, ortho, pose, image = world
    loc = _loc(setup)
    fix = loc.localize([image], _prior(ortho, pose.easting + 10.0, pose.northing - 5.0, 15.0))
    assert fix.status == "verified", fix.reason
    assert math.hypot(fix.easting - pose.easting, fix.northing - pose.northing) < 3.0
    gate_rows = _rows_within(loc, pose.easting + 10.0, pose.northing - 5.0, 15.0)
    assert fix.search.mode == "gate" and fix.search.steps == 1
    assert fix.search.rows == fix.search.rows_total == gate_rows < loc.index.ntotal / 2
    # every candidate scored lies inside the gate
    ranked = fix.retrieval.ranked_rows
    c = loc.index.columns
    d = np.hypot(c["center_e"][ranked] - pose.easting - 10.0, c["center_n"][ranked] - pose.northing + 5.0)
    assert (d - c["size_m"][ranked] / 2 <= 15.0).all()
    assert fix.as_dict()["search_mode"] == "gate" and "search gate (15 m" in fix.reason
    # The embeddings entry point (the tracker's) gates the same way.
    emb = loc.embed([image])
    again = loc.localize_embeddings(emb, _prior(ortho, pose.easting + 10.0, pose.northing - 5.0, 15.0), image=image)
    assert again.status == "verified" and again.search.mode == "gate"


def test_wrong_prior_widens_until_the_place_verifies(world):
    setup, ortho, pose, image = world
    left, bottom, right, top = ortho.bounds
    far_e, far_n = right - 20.0, top - 20.0  # the opposite corner, ~430 m from the camera
    loc = _loc(setup, gate_widen_factor=2.0, gate_widen_steps=1)
    assert loc.gate_radii(15.0) == [15.0, 30.0, math.inf]
    fix = loc.localize([image], _prior(ortho, far_e, far_n, 15.0))
    assert fix.status == "verified", fix.reason
    assert math.hypot(fix.easting - pose.easting, fix.northing - pose.northing) < 3.0
    assert fix.search.mode == "index" and fix.search.steps == 3 and math.isinf(fix.search.radius_m)
    # the last step searched only what the gate and its ring had not
    inner = _rows_within(loc, far_e, far_n, 30.0)
    assert fix.search.rows == loc.index.ntotal - inner and fix.search.rows_total == loc.index.ntotal
    assert "search index (the rest of the index" in fix.reason

    # Without registration nothing can verify a match outside the gate: retrieval alone stays inside it.
    retrieval_only = loc.localize([image], _prior(ortho, far_e, far_n, 15.0), refine=False)
    assert retrieval_only.search.mode == "gate" and retrieval_only.search.steps == 1
    assert retrieval_only.search.rows == _rows_within(loc, far_e, far_n, 15.0)

    # A hard gate (no widening) keeps the wrong prior's area: nothing verifies there.
    hard = _loc(setup, gate_widening=False)
    assert hard.gate_radii(15.0) == [15.0]
    stuck = hard.localize([image], _prior(ortho, far_e, far_n, 15.0))
    assert stuck.status == "no_fix" and stuck.search.mode == "gate" and stuck.search.steps == 1

    # A ring wide enough to hold the place finds it before the rest of the index is searched.
    ring = _loc(setup, gate_widen_factor=30.0, gate_widen_steps=1).localize([image], _prior(ortho, far_e, far_n, 15.0))
    assert math.hypot(far_e - pose.easting, far_n - pose.northing) < 450.0
    assert ring.status == "verified" and ring.search.mode == "widened" and ring.search.radius_m == 450.0
    assert ring.search.steps == 2 and ring.search.rows < loc.index.ntotal


def test_prior_far_off_the_map_still_finds_the_place(world):
    setup, ortho, pose, image = world
    loc = _loc(setup)  # defaults: 1 ring 4× wider, then the rest of the index
    fix = loc.localize([image], _prior(ortho, pose.easting + 5000.0, pose.northing, 100.0))
    assert fix.status == "verified", fix.reason
    assert fix.search.mode == "index" and fix.search.rows == loc.index.ntotal  # the gate and ring held no tile
