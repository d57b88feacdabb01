"""The core tracker (mobilegeo_ros/tracker.py) and the one status decision (estimator/status.py) on a synthetic map.

Real rasterio map, real faiss index, real model, real SIFT registration; the flight is rendered with known poses, so
every expected value comes from the rendering, not from the code under test.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.estimator.refine import MAX_REGISTRATION_LEVEL
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
from mobilegeo_ros.localizer import Localizer, Priors
from mobilegeo_ros.tracker import FrameToFrame, Tracker, covariance_upper_bound, image_overlap

from synthetic_world import synthetic_setup

CAMERA = CameraModel(320, 240, 70.0)
ALT = 60.0


# ---------------------------------------------------------------------------------------------------------------------
# A synthetic flight


@pytest.fixture(scope="module")
def world():
    setup = synthetic_setup()
    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    return setup, ortho


def _tracker(setup, **sections) -> Tracker:
    data = dict(setup.overrides)
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    cfg = config_mod.from_dict(data)
    return Tracker(Localizer.from_files(setup.index_dir, cfg), cfg)


def _flight(ortho, n: int, rate_hz: float = 10.0, speed=(6.0, 3.0), start=(70.0, 80.0), yaw0=30.0,
            tilt=True) -> list[tuple[float, CameraPose, np.ndarray]]:
    left, bottom, _, _ = ortho.bounds
    out = []
    for i in range(n):
        t = i / rate_hz
        pose = CameraPose(left + start[0] + speed[0] * t, bottom + start[1] + speed[1] * t, ALT, yaw0 + 2.0 * t,
                          5.0 * math.sin(t) if tilt else 0.0, 3.0 if tilt else 0.0)
        out.append((t, pose, render_view(ortho, pose, CAMERA)))
    return out


def _err(res, pose: CameraPose) -> float:
    return math.hypot(res.easting - pose.easting, res.northing - pose.northing)


def test_flight_every_frame_verified_or_tracked_to_the_drone_position(world):
    setup, ortho = world
    tr = _tracker(setup)
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    statuses, errors, sigmas = [], [], []
    for t, pose, img in _flight(ortho, 16):
        res = tr.process(img, t, priors)
        statuses.append(res.status)
        assert res.status.is_fix, res.reason
        errors.append(_err(res, pose))
        sigmas.append(res.sigma_m)
    # keyframes on the schedule (every 0.5 s = 5 frames at 10 Hz), tracked in between
    assert statuses[0] is FixStatus.VERIFIED and statuses[5] is FixStatus.VERIFIED
    assert statuses[1:5] == [FixStatus.TRACKED] * 4
    assert tr.counts["verified"] + tr.counts["tracked"] == 16
    # errors to the drone (not the image centre, ~6 m away at 5° tilt and 60 m) and covered by 2 sigma
    assert max(errors) < 3.0, errors
    assert all(e <= 2.0 * s for e, s in zip(errors, sigmas)), list(zip(errors, sigmas))


def test_tracked_covariance_grows_with_distance_and_resets_at_keyframes(world):
    setup, ortho = world
    # no keyframe after the first (schedule far away, no sigma/overlap trigger), no filter (raw covariance)
    tr = _tracker(setup, tracker={"keyframe_every_s": 100.0, "keyframe_sigma_m": 1000.0, "keyframe_min_overlap": 0.0,
                                  "drift_fraction": 0.1, "drift_per_frame_m": 0.0},
                  node={"filter_enabled": False})
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    flight = _flight(ortho, 8, tilt=False)
    res0 = tr.process(flight[0][2], flight[0][0], priors)
    assert res0.status is FixStatus.VERIFIED
    var = [float(np.trace(res0.cov_en)) / 2.0]
    for t, _, img in flight[1:]:
        res = tr.process(img, t, priors)
        assert res.status is FixStatus.TRACKED, res.reason
        var.append(float(np.trace(res.cov_en)) / 2.0)
    # each frame moves sqrt(0.6² + 0.3²) = 0.671 m: the variance grows by (0.1 × 0.671)² per frame, by hand
    step = math.hypot(0.6, 0.3)
    np.testing.assert_allclose(np.diff(var), (0.1 * step) ** 2, rtol=0.1)
    # a keyframe resets the covariance to the registration's
    tr.cfg.tracker.keyframe_every_s = 0.0
    t, _, img = _flight(ortho, 9, tilt=False)[8]
    res = tr.process(img, t, priors)
    assert res.status is FixStatus.VERIFIED and res.keyframe
    assert float(np.trace(res.cov_en)) / 2.0 < var[-1]


def test_sigma_limit_drops_the_track_and_is_no_fix_under_no_fix_fallback(world):
    setup, ortho = world
    tr = _tracker(setup, tracker={"keyframe_every_s": 100.0, "keyframe_sigma_m": 1000.0, "keyframe_min_overlap": 0.0,
                                  "drift_fraction": 1.0, "max_track_sigma_m": 4.0})
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    flight = _flight(ortho, 12, speed=(20.0, 0.0))
    assert tr.process(flight[0][2], 0.0, priors).status is FixStatus.VERIFIED
    res = tr.process(flight[1][2], flight[1][0], priors)  # moved 2 m: sigma sqrt(2.5² + 2²) = 3.2 m: tracked
    assert res.status is FixStatus.TRACKED
    # after two more frames the tracked sigma passes 4 m: the track is dropped; the frame is localized from scratch
    seen_lost = False
    for t, pose, img in flight[2:]:
        res = tr.process(img, t, priors)
        assert res.status in (FixStatus.VERIFIED, FixStatus.TRACKED), res.reason
        seen_lost |= tr.counts["track_lost"] > 0
        assert res.sigma_m <= 4.0 or res.status is FixStatus.VERIFIED
    assert seen_lost


def test_unverifiable_frame_is_no_fix_with_its_stamp(world):
    setup, _ = world
    # texture that is nowhere on the map: retrieval still returns tiles, registration verifies none
    rng = np.random.default_rng(5)
    noise = (rng.random((CAMERA.height_px, CAMERA.width_px, 3)) * 255).astype(np.uint8)
    for fallback, expected in (("no_fix", FixStatus.NO_FIX), ("retrieval", None)):
        tr = _tracker(setup, refine={"fallback": fallback}, estimator={"min_score": -1.0,
                                                                       "min_cluster_weight": 0.0})
        res = tr.process(noise, 42.5, Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg))
        assert res.stamp_s == 42.5
        if expected is FixStatus.NO_FIX:
            assert res.status is FixStatus.NO_FIX and not res.status.is_fix, res.reason
            assert math.isnan(res.lat) and math.isnan(res.sigma_m)
        else:
            # the same frame with fallback: retrieval is published as what it is, never as verified
            assert res.status is FixStatus.RETRIEVAL, res.reason


def test_relocalization_after_a_jump_is_reported_not_silent(world):
    setup, ortho = world
    tr = _tracker(setup, tracker={"keyframe_every_s": 0.3})
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    flight = _flight(ortho, 6, tilt=False)
    for t, _, img in flight[:3]:
        assert tr.process(img, t, priors).status.is_fix
    # the track drifts by 30 m (e.g. a bad flow chain): shift its map registration east
    tr.track.h_map = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ tr.track.h_map
    results = [(pose, tr.process(img, t, priors)) for t, pose, img in flight[3:]]
    jumped = [(p, r) for p, r in results if r.relocalized]
    assert len(jumped) == 1, [r.reason for _, r in results]
    pose, res = jumped[0]
    assert res.status is FixStatus.VERIFIED and "relocalized" in res.reason
    assert tr.counts["relocalizations"] == 1
    assert _err(res, pose) < 3.0  # the published fix is the verified one, not the drifted track
    # frames before the keyframe were still on the drifted track; frames after it follow the relocalized one
    after = results[results.index((pose, res)) + 1:]
    assert all(_err(r, p) < 3.0 for p, r in after)


def test_lost_track_after_a_cut_relocalizes_from_scratch(world):
    setup, ortho = world
    tr = _tracker(setup)
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    a = _flight(ortho, 3, start=(60.0, 60.0))
    b = _flight(ortho, 5, start=(140.0, 130.0), yaw0=200.0)
    for t, _, img in a:
        tr.process(img, t, priors)
    # a video cut to another place 100 m away: the flow cannot follow, each frame is localized anew; the temporal
    # filter refuses the far verified fixes until node.filter_max_rejections of them agree, then resets on them
    out = [(pose, tr.process(img, 0.3 + t, priors)) for t, pose, img in b]
    assert tr.counts["track_lost"] == 1
    assert all(not r.status.is_fix or _err(r, p) < 3.0 for p, r in out), [(r.status, r.reason) for _, r in out]
    first = next(i for i, (_, r) in enumerate(out) if r.status.is_fix)
    assert first <= tr.cfg.node.filter_max_rejections
    assert all("temporal filter" in r.reason for _, r in out[:first])
    assert all(r.status.is_fix for _, r in out[first:])


def test_repeated_frames_never_publish_a_covariance_below_the_single_fix(world):
    setup, ortho = world
    # every frame localized on its own (tracking off) so each frame has its own single-fix covariance
    tr = _tracker(setup, tracker={"enabled": False})
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    _, pose, img = _flight(ortho, 1)[0]
    for k in range(4):
        res = tr.process(img, 0.25 * k, priors)
        assert res.status is FixStatus.VERIFIED and res.fix is not None
        single = np.asarray(res.fix.cov_en)
        assert np.linalg.eigvalsh(res.cov_en - single).min() >= -1e-9, (k, res.cov_en, single)
    # the filter alone would have shrunk it (independent measurements): the bound is what keeps it
    r = tr.filter.update(1.0, (res.e, res.n), single)
    assert r.event == "update" and float(np.trace(r.position_cov)) < float(np.trace(single))


def test_raw_output_is_the_frames_own_fix_before_the_smoothing(world):
    # ~/fix_raw publishes raw_lat/raw_lon/raw_cov_en: each frame's own verified fix; ~/fix the filtered one
    setup, ortho = world
    tr = _tracker(setup, tracker={"enabled": False})
    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    moved = []
    for t, pose, img in _flight(ortho, 4, rate_hz=2.0, tilt=False):
        res = tr.process(img, t, priors)
        assert res.status is FixStatus.VERIFIED and res.fix is not None
        assert (res.raw_lat, res.raw_lon) == (res.fix.lat, res.fix.lon)
        assert np.allclose(res.raw_cov_en, res.fix.cov_en)
        (e1, n1, _), (e2, n2, _) = tr.enu.to_enu(res.lat, res.lon, 0.0), tr.enu.to_enu(res.raw_lat, res.raw_lon, 0.0)
        moved.append(math.hypot(e1 - e2, n1 - n2))
    assert moved[0] == pytest.approx(0.0, abs=1e-6)  # the filter starts on the first fix
    assert max(moved[1:]) > 1e-4  # then smooths: the published fix is not the raw one
    # with the filter off, raw and published are the same
    tr = _tracker(setup, tracker={"enabled": False}, node={"filter_enabled": False})
    t, _, img = _flight(ortho, 1)[0]
    res = tr.process(img, t, priors)
    assert (res.raw_lat, res.raw_lon) == (res.lat, res.lon)


def test_covariance_upper_bound_by_hand():
    filtered = np.array([[4.0, 0.0], [0.0, 100.0]])
    single = np.array([[25.0, 0.0], [0.0, 25.0]])
    np.testing.assert_allclose(covariance_upper_bound(filtered, single), [[25.0, 0.0], [0.0, 100.0]])
    np.testing.assert_allclose(covariance_upper_bound(single * 2, single), single * 2)


def test_pose_recovery_without_attitude_prior(world):
    setup, ortho = world
    tr = _tracker(setup)
    left, bottom, _, _ = ortho.bounds
    pose = CameraPose(left + 100.0, bottom + 100.0, ALT, 75.0, 12.0, -8.0)
    img = render_view(ortho, pose, CAMERA)
    # only the camera's field of view (camera_info) is known: no attitude, no altitude
    res = tr.process(img, 0.0, Priors(hfov_deg=CAMERA.hfov_deg))
    assert res.status is FixStatus.VERIFIED, res.reason
    # the image centre is ALT·tan(14.4°) ≈ 15 m from the drone: the fix is at the drone
    assert _err(res, pose) < 2.0, (res.easting - pose.easting, res.northing - pose.northing)
    assert abs(res.altitude_m - ALT) < 0.05 * ALT
    assert abs(res.pitch_deg - 12.0) < 1.5 and abs(res.roll_deg + 8.0) < 1.5
    assert _err(res, pose) <= 2.0 * res.sigma_m


def test_no_intrinsics_sigma_covers_the_unknown_tilt(world):
    setup, ortho = world
    tr = _tracker(setup)
    left, bottom, _, _ = ortho.bounds
    pose = CameraPose(left + 100.0, bottom + 100.0, ALT, 0.0, 10.0, 0.0)
    res = tr.process(render_view(ortho, pose, CAMERA), 0.0, Priors(altitude_m=ALT))
    assert res.status is FixStatus.VERIFIED, res.reason
    # no field of view, no attitude: the image centre (10.6 m ahead) with sigma >= ALT·tan(20°) = 21.8 m
    assert res.sigma_m >= ALT * math.tan(math.radians(20.0))
    assert _err(res, pose) <= 2.0 * res.sigma_m


# ---------------------------------------------------------------------------------------------------------------------
# Frame-to-frame pieces


def test_frame_to_frame_homography_of_a_known_shift(world):
    _, ortho = world
    left, bottom, _, _ = ortho.bounds
    p0 = CameraPose(left + 100.0, bottom + 100.0, ALT, 0.0)
    p1 = dataclasses.replace(p0, easting=p0.easting + 2.0)
    ftf = FrameToFrame(320, 300, 25)
    g0, s = ftf.prepare(render_view(ortho, p0, CAMERA))
    g1, _ = ftf.prepare(render_view(ortho, p1, CAMERA))
    f, inliers, _ = ftf.motion(g0, g1, s)
    # moving 2 m east at yaw 0 shifts the content left by 2 m / gsd pixels: frame-1 pixel u is frame-0 pixel u + d
    d = 2.0 / (ALT / CAMERA.focal_px)
    p = f @ np.array([160.0, 120.0, 1.0])
    assert inliers >= 25
    assert abs(p[0] / p[2] - (160.0 + d)) < 0.3 and abs(p[1] / p[2] - 120.0) < 0.3
    assert image_overlap(np.eye(3), 320, 240) == pytest.approx(1.0)
    assert image_overlap(np.array([[1.0, 0, 160.0], [0, 1.0, 0], [0, 0, 1.0]]), 320, 240) == pytest.approx(0.5)


def test_node_cli_and_demo_run_the_same_tracker_path():
    """The node (pipeline), `mobilegeo localize` (geotag.py) and the demo all localize through Tracker.process: none
    calls the localizer's per-view entry points itself (a second path would drift from what the node publishes)."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "mobilegeo_ros"
    # (`mobilegeo localize` runs geotag.localize_photos; the CLI itself calls no localizer entry point)
    cli = ast.parse((pkg / "cli.py").read_text())
    cli_calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(cli)
                 if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
    assert "localize_photos" in cli_calls and not cli_calls & {"localize", "localize_embeddings", "register_near"}
    for rel in ("ros/pipeline.py", "geotag.py", "demo.py"):
        tree = ast.parse((pkg / rel).read_text())
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        names = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "Tracker" in names and "process" in calls, rel
        assert not calls & {"localize", "localize_embeddings", "register_near"}, (rel, calls & {"localize"})


def test_warm_up_pays_the_one_time_costs_and_leaves_a_fresh_tracker(world):
    """The node warms up before it says ready (Tracker.warm_up): a view cut from the map goes through the whole path
    (verified: retrieval, registration, pose), every map-feature level is made ready, and afterwards the tracker is
    indistinguishable from a fresh one: no track, filter state, window or counts, and a flight gives the same
    results as through a tracker that never warmed up, without any map load of its own."""
    setup, ortho = world
    warmed, fresh = _tracker(setup), _tracker(setup)
    assert warmed.loc.map_loads() == 0  # nothing read yet: the first frame would pay for all of it
    w = warmed.warm_up()
    assert w.status is FixStatus.VERIFIED, w.reason
    assert w.map_levels == min(ortho.max_pyramid_level, MAX_REGISTRATION_LEVEL) + 1  # a small map: every level
    assert w.map_loads == warmed.loc.map_loads() >= 1 + w.map_levels  # the map opened + blocks of every level
    assert warmed.track is None and not warmed.window and not warmed._pending and warmed._prev is None
    assert warmed.filter.x is None and warmed._registered_heading is None
    assert not any(warmed.counts.values()), warmed.counts

    priors = Priors(altitude_m=ALT, hfov_deg=CAMERA.hfov_deg)
    for t, pose, img in _flight(ortho, 8):
        a, b = warmed.process(img, t, priors), fresh.process(img, t, priors)
        assert a.status is b.status and a.keyframe == b.keyframe, (t, a.reason, b.reason)
        assert a.filter_event == b.filter_event, t  # "init" on the first frame: no filter state was left behind
        # the same up to the matcher's randomness (measured: <= 0.08 m apart, sigma 3.26 m both)
        assert math.hypot(a.easting - b.easting, a.northing - b.northing) < 0.5, t
        assert a.sigma_m == pytest.approx(b.sigma_m, rel=0.05), t
    assert warmed.counts == fresh.counts
    assert warmed.loc.map_loads() == w.map_loads  # the flight ran warm ...
    assert fresh.loc.map_loads() > 0  # ... while the fresh tracker's first frame read the map

    # with keyframes in a worker thread (the node): nothing of the warm-up is left running or pending
    bg = Tracker(warmed.loc, warmed.cfg, background=True)
    try:
        w2 = bg.warm_up()
        assert w2.status is FixStatus.VERIFIED and w2.map_loads == w.map_loads
        assert not bg._worker.busy and bg._worker.results() == [] and bg.track is None
    finally:
        bg.close()
