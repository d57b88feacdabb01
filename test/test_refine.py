"""Geometric refinement (mobilegeo_ros.estimator.refine) and its integration in the Localizer, on synthetic maps.

Tolerances: a view rendered from the same synthetic map (tilt ≤ 10°, photometric noise) must be registered with its
image-centre ground point within 1.5 m and its heading within 2°; through the Localizer (priors: attitude, altitude,
field of view) the drone position within 2 m.
"""

import json
import math
import shutil

import numpy as np
import pytest

from mobilegeo_ros.config import Config, RefineConfig, from_dict
from mobilegeo_ros.estimator.refine import (
    Refiner,
    Registration,
    centre_covariance,
    choose,
    expected_gsd,
    register_window,
)
from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, image_to_ground, photometric, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.localizer import Localizer, Priors
from synthetic_world import synthetic_setup

CAM = CameraModel(480, 360, 70.0)


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    path = write_synthetic_geotiff(tmp_path_factory.mktemp("refine") / "map.tif", width_px=800, height_px=800,
                                   gsd_m=0.5, seed=5)
    return read_orthophoto(path)


def _view(ortho, pose, seed=0):
    return photometric(render_view(ortho, pose, CAM), np.random.default_rng(seed), Config().render)


def _centre(pose):
    e, n = image_to_ground(pose, CAM, CAM.width_px / 2, CAM.height_px / 2)
    return float(e), float(n)


@pytest.mark.parametrize("yaw, pitch, roll", [(0.0, 0.0, 0.0), (137.0, 8.0, -5.0), (-75.0, -6.0, 10.0)])
def test_registration_recovers_centre_and_heading(ortho, yaw, pitch, roll):
    left, bottom, right, top = ortho.bounds
    pose = CameraPose((left + right) / 2 + 10, (bottom + top) / 2 - 15, 90.0, yaw, pitch, roll)
    ce, cn = _centre(pose)
    ref = Refiner(ortho, RefineConfig())
    gsd, known = expected_gsd(CAM.width_px, CAM.height_px, pose.altitude_m, CAM.hfov_deg, None)
    q = ref.prepare(_view(ortho, pose), gsd, known)
    # The candidate tile centre is 30 m off the truth, as a retrieved neighbour tile would be.
    reg = ref.register(q, ce + 25.0, cn - 17.0, ref.window_half_m(q, 60.0), yaw_prior_deg=None)
    assert reg.ok, reg.reason
    assert math.hypot(reg.center_e - ce, reg.center_n - cn) < 1.5
    assert abs((reg.heading_deg - yaw + 180) % 360 - 180) < 2.0
    assert 0.0 < reg.sigma_m < 5.0 and reg.inliers >= RefineConfig().min_inliers
    assert reg.gsd_m == pytest.approx(gsd, rel=0.2)


def test_verification_rejects_wrong_place_and_wrong_heading(ortho):
    left, bottom, right, top = ortho.bounds
    pose = CameraPose(left + 110, bottom + 110, 80.0, 40.0)
    ref = Refiner(ortho, RefineConfig())
    gsd, known = expected_gsd(CAM.width_px, CAM.height_px, pose.altitude_m, CAM.hfov_deg, None)
    q = ref.prepare(_view(ortho, pose), gsd, known)
    # A candidate on the far side of the map: its window does not contain the view.
    wrong = ref.register(q, right - 90, top - 90, 80.0)
    assert not wrong.ok and wrong.reason
    ce, cn = _centre(pose)
    right_place = ref.register(q, ce, cn, 120.0)
    assert right_place.ok, right_place.reason
    # The same registration contradicts a yaw prior 90° away.
    contradicted = ref.register(q, ce, cn, 120.0, yaw_prior_deg=130.0)
    assert not contradicted.ok and "yaw prior" in contradicted.reason


def test_choose_prefers_inliers_and_reports_ambiguity():
    cov = np.eye(2)
    a = Registration(True, "a", center_e=0.0, center_n=0.0, cov_en=cov, inliers=60, candidate=1)
    near = Registration(True, "b", center_e=3.0, center_n=0.0, cov_en=cov, inliers=55, candidate=2)
    far_weak = Registration(True, "c", center_e=300.0, center_n=0.0, cov_en=cov, inliers=20, candidate=3)
    far_strong = Registration(True, "d", center_e=300.0, center_n=0.0, cov_en=cov, inliers=50, candidate=4)
    failed = Registration(False, "5 inliers < min_inliers 15")
    cfg = RefineConfig()
    assert choose([near, a, far_weak], cfg).best is a and choose([near, a, far_weak], cfg).status == "refined"
    amb = choose([a, far_strong], cfg)
    assert amb.status == "ambiguous" and "ambiguous" in amb.reason
    none = choose([failed], cfg)
    assert none.status == "unverified" and "min_inliers" in none.reason


def test_centre_covariance_matches_the_noise():
    rng = np.random.default_rng(0)
    h = np.array([[0.3, 0.01, 100.0], [0.02, -0.3, 200.0], [1e-5, 2e-5, 1.0]])
    src = rng.uniform(0, 400, (200, 2))
    p = np.c_[src, np.ones(200)] @ h.T
    dst = p[:, :2] / p[:, 2:]
    cov_clean, rmse = centre_covariance(h, src, dst, (200.0, 200.0))
    assert rmse < 1e-9 and np.trace(cov_clean) < 1e-12
    noisy = dst + rng.normal(0, 0.5, dst.shape)
    cov, rmse = centre_covariance(h, src, noisy, (200.0, 200.0))
    assert 0.3 < rmse < 0.9
    # 200 points with 0.5 m noise: the centre is known to a few centimetres, not metres or millimetres.
    assert 0.01 < math.sqrt(np.trace(cov) / 2) < 0.2


def test_window_baseline_registers_with_known_prior(ortho):
    left, bottom, right, top = ortho.bounds
    pose = CameraPose((left + right) / 2, (bottom + top) / 2, 90.0, 20.0)
    ce, cn = _centre(pose)
    for features in ("sift", "orb"):
        reg = register_window(_view(ortho, pose), ortho, ce + 20, cn + 20, 300.0, matcher=features)
        assert reg.ok, (features, reg.reason)
        assert math.hypot(reg.center_e - ce, reg.center_n - cn) < 3.0, features


# ---------------------------------------------------------------------------------------------------------------------
# Through the Localizer (the shared small synthetic index of the node tests)


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


def _loc(setup, **refine):
    cfg = from_dict({**setup.overrides, "refine": refine})
    return Localizer.from_files(setup.index_dir, cfg)


def _setup_view(setup, frac=(0.45, 0.55), yaw=30.0, pitch=5.0, roll=-4.0, alt=60.0):
    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    left, bottom, right, top = ortho.bounds
    pose = CameraPose(left + frac[0] * (right - left), bottom + frac[1] * (top - bottom), alt, yaw, pitch, roll)
    return _view(ortho, pose, seed=3), pose


def test_localizer_refines_position_and_heading(setup):
    loc = _loc(setup)
    img, pose = _setup_view(setup)
    with_priors = loc.localize([img], Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg,
                                             altitude_m=pose.altitude_m, hfov_deg=CAM.hfov_deg))
    assert with_priors.status == "verified" and with_priors.refined, with_priors.reason
    assert math.hypot(with_priors.easting - pose.easting, with_priors.northing - pose.northing) < 2.0
    assert abs((with_priors.heading_deg - pose.yaw_deg + 180) % 360 - 180) < 2.0
    assert with_priors.inliers >= 15 and with_priors.sigma_m < with_priors.retrieval.sigma_m
    # Without attitude or altitude priors (field of view only) the registration alone places the drone (camera pose
    # solved from the homography inliers).
    bare = loc.localize([img], Priors(hfov_deg=CAM.hfov_deg))
    assert bare.refined, bare.reason
    assert math.hypot(bare.easting - pose.easting, bare.northing - pose.northing) < 3.0
    assert bare.registration.inlier_view_px.shape == (bare.inliers, 2)
    # The embeddings entry point of the node refines only when given the image.
    emb = loc.embed([img])
    assert loc.localize_embeddings(emb, Priors(hfov_deg=CAM.hfov_deg), image=img).refined
    assert not loc.localize_embeddings(emb).refined


def test_localizer_fallback_and_no_fix_when_nothing_verifies(setup):
    img, pose = _setup_view(setup)
    retrieval_only = _loc(setup, enabled=False).localize([img])
    fallback = _loc(setup, min_inliers=100000, fallback="retrieval").localize([img])
    assert not fallback.refined and "no candidate verified" in fallback.reason
    assert fallback.status == retrieval_only.status
    assert fallback.easting == pytest.approx(retrieval_only.easting)
    assert fallback.sigma_m == pytest.approx(retrieval_only.sigma_m)
    strict = _loc(setup, min_inliers=100000, fallback="no_fix").localize([img])
    assert strict.status == "no_fix" and "no candidate verified" in strict.reason
    assert math.isnan(strict.sigma_m)
    # the default prefers no fix to an unverified one
    assert _loc(setup, min_inliers=100000).localize([img]).status == "no_fix"


def test_sigma_ceiling_turns_broad_retrieval_fixes_into_no_fix(setup):
    img, _ = _setup_view(setup)
    loose = _loc(setup, enabled=False).localize([img])
    assert loose.status == "retrieval" and loose.sigma_m > 1.0
    cfg = from_dict({**setup.overrides, "refine": {"enabled": False},
                     "estimator": {**setup.overrides.get("estimator", {}), "max_sigma_m": loose.sigma_m * 0.5}})
    capped = Localizer.from_files(setup.index_dir, cfg).localize([img])
    assert capped.status == "no_fix" and "max_sigma_m" in capped.reason
    cfg = from_dict({**setup.overrides, "refine": {"enabled": False},
                     "estimator": {**setup.overrides.get("estimator", {}), "max_sigma_m": loose.sigma_m * 2.0}})
    assert Localizer.from_files(setup.index_dir, cfg).localize([img]).status == "retrieval"


def test_moved_map_fails_clearly_and_map_path_points_at_it(setup, tmp_path):
    index_copy = tmp_path / "elsewhere" / "index"
    shutil.copytree(setup.index_dir, index_copy)
    meta_path = index_copy / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["map"]["path"] = str(tmp_path / "moved" / "map.tif")
    meta_path.write_text(json.dumps(meta))
    cfg = from_dict(setup.overrides)
    with pytest.raises(GeoError, match="refine.map_path"):
        Localizer.from_files(index_copy, cfg)
    assert Localizer.from_files(index_copy, from_dict({**setup.overrides, "refine": {"enabled": False}})).map_path \
        is None
    loc = Localizer.from_files(index_copy, from_dict({**setup.overrides, "refine": {"map_path": str(setup.map_path)}}))
    assert loc.map_path == setup.map_path
    with pytest.raises(GeoError, match="does not exist"):
        Localizer.from_files(index_copy, from_dict({**setup.overrides,
                                                    "refine": {"map_path": str(tmp_path / "nope.tif")}}))
    # Next to the index, with the same content, it is found without configuration.
    shutil.copy(setup.map_path, tmp_path / "elsewhere" / meta["map"]["name"])
    assert Localizer.from_files(index_copy, cfg).map_path == tmp_path / "elsewhere" / meta["map"]["name"]


def test_localizer_with_xfeat_turns_the_view_north_up_and_caches_map_features(setup, tmp_path):
    index_copy = tmp_path / "index"  # its own map-feature cache folder
    shutil.copytree(setup.index_dir, index_copy, ignore=shutil.ignore_patterns("map_features"))
    # (min_inliers explicit: this small test configuration gives fewer inliers than the measured default assumes)
    cfg = from_dict({**setup.overrides, "refine": {"matcher": "xfeat", "max_features": 1000, "block_features": 400,
                                                   "min_inliers": 15,
                                                   "map_path": str(setup.map_path)}})
    loc = Localizer.from_files(index_copy, cfg)
    img, pose = _setup_view(setup, yaw=100.0)
    # No yaw prior: the heading hypothesis is the candidate's gallery rotation (4 copies: 90° is 10° off).
    priors = Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                    hfov_deg=CAM.hfov_deg)
    fix = loc.localize([img], priors)
    assert fix.status == "verified" and fix.refined, fix.reason
    assert math.hypot(fix.easting - pose.easting, fix.northing - pose.northing) < 2.5
    assert abs((fix.registered_heading_deg - 100.0 + 180) % 360 - 180) < 3.0
    assert fix.registration.query_heading_deg is not None and fix.registration.query_heading_deg % 90 == 0
    assert list((index_copy / "map_features" / "xfeat").glob("level*/chunk_*.npz"))
    # One window, no retrieval (the tracker's keyframes), with the track's heading as the hypothesis.
    ce, cn = _centre(pose)
    near = loc.register_near(img, priors, ce + 15.0, cn - 10.0, 108.0, 90.0)
    assert near.status == "refined", near.reason
    assert math.hypot(near.best.center_e - ce, near.best.center_n - cn) < 2.5
