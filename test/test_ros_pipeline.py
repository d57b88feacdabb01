"""The node's rclpy-free parts: view selection, IMU convention, mailbox, priors, diagnostics levels, and the
pipeline (decode -> embed once -> window -> localize -> filter) with the real localizer on a synthetic map."""

import math
import threading
import time

import numpy as np
import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.io.images import encode_compressed, encode_image
from mobilegeo_ros.msrm import select_views
from mobilegeo_ros.ros.pipeline import (
    ERROR, OK, STALE, WARN, Frame, LatestMailbox, LocalizationPipeline, PriorState, diagnostic_level,
    heading_to_quaternion, quaternion_to_attitude,
)


def _unit(rows):
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_select_views_prunes_duplicates_and_keeps_newest():
    e = _unit([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0.001, 0]])
    # the newest (row 3) first, then the most different (row 2); rows 0 and 1 duplicate row 3
    assert select_views(e, 4).tolist() == [2, 3]
    assert select_views(e, 1).tolist() == [3]
    assert select_views(e, 4, max_similarity=1.1).tolist() == [0, 1, 2, 3]
    e = _unit([[1, 0], [0.9, 0.1], [0, 1]])
    assert select_views(e, 2).tolist() == [0, 2]
    with pytest.raises(ValueError, match="max_views"):
        select_views(e, 0)


@pytest.mark.parametrize("heading", [0.0, 45.0, 90.0, 200.0, 359.0])
def test_imu_quaternion_convention(heading):
    x, y, z, w = heading_to_quaternion(heading)
    h, pitch, roll = quaternion_to_attitude(x, y, z, w)
    assert (h - heading + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-9)
    assert pitch == pytest.approx(0.0, abs=1e-9) and roll == pytest.approx(0.0, abs=1e-9)


def test_imu_quaternion_by_hand():
    # identity = body x axis east = compass 90
    assert quaternion_to_attitude(0, 0, 0, 1)[0] == pytest.approx(90.0)
    # rotation +10 deg about the body y (left) axis: nose down, ROS pitch +10
    s, c = math.sin(math.radians(5)), math.cos(math.radians(5))
    assert quaternion_to_attitude(0, s, 0, c)[1] == pytest.approx(10.0)
    assert quaternion_to_attitude(s, 0, 0, c)[2] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_attitude(math.nan, 0, 0, 1)
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_attitude(0, 0, 0, 0)


def test_priors_expire_and_tilt_sign():
    cfg = config_mod.from_dict({"node": {"prior_timeout_s": 1.0, "use_imu_tilt": True, "camera_yaw_offset_deg": 90.0}})
    p = PriorState(cfg)
    s, c = math.sin(math.radians(5)), math.cos(math.radians(5))
    p.set_imu(0, s, 0, c, stamp_s=10.0)  # nose down 10 deg, body x east
    p.set_altitude(80.0, stamp_s=10.0)
    p.set_gnss(40.0, -105.0, 0, (100.0, 400.0), stamp_s=10.0)
    pr = p.priors(10.5)
    assert pr.yaw_deg == pytest.approx(180.0)  # east + 90 deg camera offset
    assert pr.pitch_deg == pytest.approx(-10.0)  # a fixed nadir camera looks backwards when the nose drops
    assert pr.altitude_m == 80.0
    assert pr.radius_m == pytest.approx(cfg.node.gnss_prior_radius_m + 60.0)
    empty = p.priors(11.5)  # 1.5 s from every sample: none within node.prior_timeout_s
    assert empty.yaw_deg is None and empty.altitude_m is None and empty.lat is None
    with pytest.raises(ValueError, match="altitude"):
        p.set_altitude(math.nan, 10.0)
    p.set_gnss(40.0, -105.0, -1, None, stamp_s=12.0)  # NO_FIX clears
    assert p.priors(12.0).lat is None


def test_mailbox_keeps_only_the_latest():
    box = LatestMailbox()
    assert box.put(1) is False
    assert box.put(2) is True  # 1 dropped
    assert box.get(0.01) == 2
    assert box.get(0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(box.get(5.0)))
    t.start()
    time.sleep(0.05)
    box.put(3)
    t.join(2)
    assert got == [3]
    box.close()
    assert box.get(5.0) is None and box.closed


def test_diagnostic_levels():
    base = {"last_image_s": 100.0, "received": 5, "errors": 0, "rejected": 0, "last_status": "fix",
            "last_reason": "", "last_error": ""}
    assert diagnostic_level(base, None, 100.5, 1.0)[0] == OK
    assert diagnostic_level(base, None, 101.5, 1.0)[0] == STALE
    assert diagnostic_level(dict(base, received=0, last_image_s=-math.inf), None, 0.0, 1.0) == (
        STALE, "no image received yet")
    assert diagnostic_level(dict(base, errors=1, last_error="boom"), base, 100.5, 1.0) == (
        ERROR, "inference failed: boom")
    level, msg = diagnostic_level(dict(base, rejected=2, last_error="bad"), base, 100.5, 1.0)
    assert level == WARN and "rejected 2" in msg
    # rejections already reported do not keep the level at WARN
    assert diagnostic_level(dict(base, rejected=2), dict(base, rejected=2), 100.5, 1.0)[0] == OK
    assert diagnostic_level(dict(base, last_status="no_fix", last_reason="low score"), base, 100.5, 1.0) == (
        WARN, "no fix: low score")


@pytest.fixture(scope="module")
def pipeline():
    from mobilegeo_ros.localizer import Localizer
    from synthetic_world import render_views, synthetic_setup

    setup = synthetic_setup()
    # each frame localized on its own (tracking off): the pipeline's own job is decoding and counting
    cfg = config_mod.from_dict({**setup.overrides, "node": {"keyframes_in_background": False},
                                "tracker": {"enabled": False}})
    loc = Localizer.from_files(setup.index_dir, cfg)
    return LocalizationPipeline(loc, cfg), render_views(setup, [(0.4, 0.6), (0.42, 0.6)])


def test_pipeline_decodes_both_encodings_and_runs_the_tracker(pipeline):
    pipe, views = pipeline
    frames = [Frame("raw", encode_image(views[0][0], "bgr8"), stamp_s=100.0),
              Frame("compressed", encode_compressed(views[1][0], "png"), stamp_s=100.5)]
    outs = [pipe.process(f) for f in frames]
    assert all(o is not None and o.status is FixStatus.VERIFIED for o in outs), [o.reason for o in outs if o]
    assert [o.frame for o in outs] == frames and [o.stamp_s for o in outs] == [100.0, 100.5]
    enu_e, enu_n, _ = pipe.tracker.enu.to_enu(*views[1][2], pipe.tracker.enu.origin_h)
    # nadir views at 60 m registered on the map: metres, not the tens of metres of a retrieval fix
    assert math.hypot(outs[-1].e - enu_e, outs[-1].n - enu_n) < 3.0
    assert outs[-1].vel_en is not None and outs[-1].filter_event == "update"
    snap = pipe.stats.snapshot()
    assert snap["by_status"].get("verified", 0) >= 2 and snap["last_status"] == "verified"
    # time going backwards (a bag loop) starts a new flight: a new filter, initialised on this frame
    out = pipe.process(Frame("compressed", encode_compressed(views[0][0], "jpeg"), stamp_s=50.0))
    assert out is not None and out.filter_event == "init"


def test_pipeline_counts_bad_frames(pipeline):
    pipe, _ = pipeline
    before = pipe.stats.snapshot()["rejected"]
    assert pipe.process(Frame("raw", {"height": 2, "width": 2, "encoding": "yuv422", "is_bigendian": 0, "step": 4,
                                      "data": bytes(8)}, stamp_s=1.0)) is None
    assert pipe.process(Frame("compressed", {"format": "jpeg", "data": b"\xff\xd8\xff" + bytes(10)},
                              stamp_s=1.0)) is None
    snap = pipe.stats.snapshot()
    assert snap["rejected"] == before + 2 and "jpeg" in snap["last_error"].lower()


def test_registered_heading_feeds_the_next_frames_as_yaw_prior(pipeline):
    from mobilegeo_ros.localizer import Priors

    pipe, views = pipeline
    tr = pipe.tracker
    out = pipe.process(Frame("raw", encode_image(views[0][0], "rgb8"), stamp_s=200.0))
    assert out is not None and out.status is FixStatus.VERIFIED, out.reason if out else None
    stamp, heading = tr._registered_heading
    assert stamp == 200.0
    assert abs((heading + 180.0) % 360.0 - 180.0) < 5.0  # the views are rendered with yaw 0
    fed = tr._with_heading_feedback(200.5, Priors())
    assert fed.yaw_deg == heading
    # an IMU heading wins; the feedback expires after node.heading_feedback_s (by stamps) and ignores older frames
    assert tr._with_heading_feedback(200.5, Priors(yaw_deg=90.0)).yaw_deg == 90.0
    assert tr._with_heading_feedback(200.0 + pipe.cfg.node.heading_feedback_s + 0.1, Priors()).yaw_deg is None
    assert tr._with_heading_feedback(199.0, Priors()).yaw_deg is None
