"""Priors matched to the image stamp (mobilegeo_ros/ros/pipeline.py, rclpy-free): the IMU orientation slerped and the
altitude interpolated between the samples around the image stamp, the nearest sample within node.prior_timeout_s
otherwise, nothing beyond it; bounded buffers; a stamped rangefinder altitude. Expected values are worked by hand."""

import math

import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.ros.pipeline import (
    PRIOR_HISTORY_S, PRIOR_MAX_SAMPLES, PriorState, StampedSeries, heading_to_quaternion, quaternion_to_attitude,
    slerp,
)


def _state(**node):
    return PriorState(config_mod.from_dict({"node": {"prior_timeout_s": 1.0, **node}}))


def _heading_diff(a, b):
    return (a - b + 180.0) % 360.0 - 180.0


def test_slerp_takes_the_short_way_round_north():
    # headings 350 and 10 degrees: half way is north (0), not south (180) as averaging the angles would give
    q350, q10 = heading_to_quaternion(350.0), heading_to_quaternion(10.0)
    assert _heading_diff(quaternion_to_attitude(*slerp(q350, q10, 0.5))[0], 0.0) == pytest.approx(0.0, abs=1e-9)
    assert _heading_diff(quaternion_to_attitude(*slerp(q350, q10, 0.25))[0], 355.0) == pytest.approx(0.0, abs=1e-9)
    # -q is the same rotation as q: the sign of a sample must not send the interpolation the long way round
    neg10 = tuple(-c for c in q10)
    assert _heading_diff(quaternion_to_attitude(*slerp(q350, neg10, 0.5))[0], 0.0) == pytest.approx(0.0, abs=1e-9)
    # the ends are the samples themselves
    assert quaternion_to_attitude(*slerp(q350, q10, 0.0))[0] == pytest.approx(350.0)
    assert quaternion_to_attitude(*slerp(q350, q10, 1.0))[0] == pytest.approx(10.0)


def test_imu_heading_interpolated_at_the_image_stamp():
    p = _state()
    p.set_imu(*heading_to_quaternion(350.0), stamp_s=100.0)
    p.set_imu(*heading_to_quaternion(10.0), stamp_s=100.8)
    assert _heading_diff(p.priors(100.4).yaw_deg, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert _heading_diff(p.priors(100.2).yaw_deg, 355.0) == pytest.approx(0.0, abs=1e-9)
    assert p.priors(100.0).yaw_deg == pytest.approx(350.0)  # a sample at the very stamp
    # after the last sample: the nearest (no extrapolation) while within the tolerance, then nothing
    assert p.priors(101.5).yaw_deg == pytest.approx(10.0)
    assert p.priors(101.9).yaw_deg is None


def test_imu_tilt_interpolated_with_the_heading():
    p = _state(use_imu_tilt=True)
    s10, c10 = math.sin(math.radians(5)), math.cos(math.radians(5))
    p.set_imu(0.0, 0.0, 0.0, 1.0, stamp_s=5.0)  # level, body x east
    p.set_imu(0.0, s10, 0.0, c10, stamp_s=6.0)  # nose down 10 deg
    pr = p.priors(5.5)
    assert pr.yaw_deg == pytest.approx(90.0)
    assert pr.pitch_deg == pytest.approx(-5.0)  # half way, in the camera's sign convention (test_ros_pipeline)


def test_altitude_linear_between_samples_and_nearest_within_tolerance():
    p = _state()
    p.set_altitude(50.0, stamp_s=10.0)
    p.set_altitude(70.0, stamp_s=11.0)
    assert p.priors(10.5).altitude_m == pytest.approx(60.0)
    assert p.priors(10.25).altitude_m == pytest.approx(55.0)
    assert p.priors(11.0).altitude_m == 70.0
    # before the first sample / after the last one: the nearest within 1 s, else unknown
    assert p.priors(9.2).altitude_m == 50.0
    assert p.priors(8.9).altitude_m is None
    assert p.priors(12.0).altitude_m == 70.0
    assert p.priors(12.1).altitude_m is None


def test_only_one_neighbour_within_tolerance_is_used_as_it_is():
    # 0.3 s after a sample and 1.7 s before the next (tolerance 1 s): the near one, not an interpolation
    p = _state()
    p.set_altitude(50.0, stamp_s=10.0)
    p.set_altitude(90.0, stamp_s=12.0)
    assert p.priors(10.3).altitude_m == 50.0
    assert p.priors(11.8).altitude_m == 90.0
    assert p.priors(11.0).altitude_m == pytest.approx(70.0)  # 1 s from both: interpolated


def test_samples_arriving_out_of_order_are_sorted_by_stamp():
    p = _state()
    p.set_altitude(70.0, stamp_s=11.0)
    p.set_altitude(50.0, stamp_s=10.0)
    p.set_imu(*heading_to_quaternion(10.0), stamp_s=11.0)
    p.set_imu(*heading_to_quaternion(350.0), stamp_s=10.0)
    pr = p.priors(10.5)
    assert pr.altitude_m == pytest.approx(60.0)
    assert _heading_diff(pr.yaw_deg, 0.0) == pytest.approx(0.0, abs=1e-9)


def test_rangefinder_wins_over_float64_and_is_checked_against_its_limits():
    p = _state()
    p.set_altitude(80.0, stamp_s=10.0)  # std_msgs/Float64 (e.g. mavros rel_alt: above home)
    p.set_range(62.0, 0.2, 100.0, stamp_s=10.1)  # sensor_msgs/Range: the ground itself
    assert p.priors(10.0).altitude_m == 62.0
    assert p.priors(9.05).altitude_m == 80.0  # the range sample is 1.05 s away (out), the Float64 one 0.95 s
    with pytest.raises(ValueError, match="outside the sensor"):
        p.set_range(150.0, 0.2, 100.0, stamp_s=10.2)
    with pytest.raises(ValueError, match="outside the sensor"):
        p.set_range(0.1, 0.2, 100.0, stamp_s=10.2)
    for bad in (math.inf, -math.inf, math.nan, 0.0, -3.0):
        with pytest.raises(ValueError, match="range"):
            p.set_range(bad, 0.2, 100.0, stamp_s=10.2)
    p.set_range(75.0, 0.0, 0.0, stamp_s=10.3)  # a driver that fills no limits: accepted
    assert p.priors(10.3).altitude_m == 75.0
    with pytest.raises(ValueError, match="altitude"):
        p.set_altitude(-1.0, stamp_s=10.0)


def test_gnss_prior_is_the_nearest_sample_and_no_fix_clears_it():
    p = _state()
    p.set_gnss(40.0, -105.0, 0, None, stamp_s=20.0)
    p.set_gnss(40.1, -105.1, 0, (4.0, 9.0), stamp_s=21.0)
    pr = p.priors(20.4)
    assert (pr.lat, pr.lon, pr.radius_m) == (40.0, -105.0, p.node.gnss_prior_radius_m)  # nearest, not interpolated
    pr = p.priors(20.6)
    assert (pr.lat, pr.lon) == (40.1, -105.1) and pr.radius_m == pytest.approx(p.node.gnss_prior_radius_m + 9.0)
    assert p.priors(22.5).lat is None
    p.set_gnss(math.nan, math.nan, -1, None, stamp_s=21.5)
    assert p.priors(21.0).lat is None


def test_bad_samples_are_refused_and_nothing_is_stored():
    p = _state()
    with pytest.raises(ValueError, match="quaternion"):
        p.set_imu(0.0, 0.0, 0.0, 0.0, stamp_s=1.0)
    with pytest.raises(ValueError, match="stamp"):
        p.set_altitude(50.0, stamp_s=math.nan)
    pr = p.priors(1.0)
    assert pr.yaw_deg is None and pr.altitude_m is None
    assert p.priors(math.nan).altitude_m is None


def test_series_bounded_by_age_and_count():
    s = StampedSeries(horizon_s=3.0, max_samples=50)
    for k in range(100):
        s.add(float(k), k)
    # stamps 96..99: the newest (99) minus the 3 s horizon
    assert len(s) == 4 and s.around(96.0, 0.5) == [(96.0, 96)] and s.around(95.0, 0.5) == []
    dense = StampedSeries(horizon_s=3.0, max_samples=50)
    for k in range(1000):
        dense.add(k / 1000.0, k)  # 1 kHz
    assert len(dense) == 50 and dense.around(0.949, 0.0) == [] and dense.around(0.95, 0.0) == [(0.95, 950)]
    # the node's buffers: horizon = node.prior_timeout_s + PRIOR_HISTORY_S, at most PRIOR_MAX_SAMPLES
    p = _state()
    for k in range(20000):
        p.set_altitude(50.0 + k % 7, stamp_s=k / 400.0)  # 400 Hz for 50 s
    newest = 19999 / 400.0
    horizon = 1.0 + PRIOR_HISTORY_S
    assert len(p._altitude) <= PRIOR_MAX_SAMPLES
    assert p.priors(newest - horizon).altitude_m is not None  # the oldest sample kept
    assert p.priors(newest - horizon - 1.0 - 0.01).altitude_m is None  # older ones aged out (tolerance 1 s)


def test_time_going_back_starts_the_series_afresh():
    # a bag played again: samples far older than the newest belong to a new flight; the old one's must go
    p = _state()
    p.set_altitude(50.0, stamp_s=1000.0)
    p.set_altitude(52.0, stamp_s=1000.5)
    p.set_altitude(90.0, stamp_s=10.0)
    assert p.priors(1000.2).altitude_m is None
    assert p.priors(10.0).altitude_m == 90.0
    p.set_altitude(51.0, stamp_s=9.0)  # a little older than the newest: kept
    assert p.priors(9.5).altitude_m == pytest.approx(70.5)
