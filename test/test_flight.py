"""Synthetic flights (geo.flight): deterministic, smooth, at the requested speed, heading along the track, banking
into turns, footprint always inside the map."""

import math

import numpy as np
import pytest

from mobilegeo_ros.config import RenderConfig
from mobilegeo_ros.geo.flight import body_attitude, flight_poses, footprint_radius
from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, footprint
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

RCFG = RenderConfig(image_width_px=160, image_height_px=120, hfov_deg=70.0, altitude_m=[50.0, 70.0])


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    path = write_synthetic_geotiff(tmp_path_factory.mktemp("flight") / "map.tif", 600, 500, 0.5, seed=4)
    return read_orthophoto(path)


def test_deterministic_for_a_seed(ortho):
    a = flight_poses(ortho, 20.0, 5.0, 7, RCFG)
    b = flight_poses(ortho, 20.0, 5.0, 7, RCFG)
    c = flight_poses(ortho, 20.0, 5.0, 8, RCFG)
    assert a == b
    assert a != c
    assert len(a) == 100
    assert [t for t, _ in a[:3]] == pytest.approx([0.0, 0.2, 0.4])


def test_speed_heading_and_bank(ortho):
    speed, rate = 6.0, 10.0
    poses = flight_poses(ortho, 60.0, rate, 3, RCFG, speed_m_s=speed, yaw_noise_deg=0.0, gust_tilt_deg=0.0)
    xy = np.array([[p.easting, p.northing] for _, p in poses])
    step = np.hypot(*np.diff(xy, axis=0).T)
    assert np.median(step) == pytest.approx(speed / rate, rel=0.02)
    # compass direction of travel (clockwise from north) matches the heading = image top direction
    travel = np.degrees(np.arctan2(np.diff(xy[:, 0]), np.diff(xy[:, 1]))) % 360.0
    yaw = np.array([p.yaw_deg for _, p in poses[:-1]])
    diff = (travel - yaw + 180.0) % 360.0 - 180.0
    assert np.abs(diff).max() < 3.0
    # a multirotor banks into the turn: camera roll = -(REP-103 roll) = atan(v * turn rate / g), clipped at 8 deg
    rolls = np.array([p.roll_deg for _, p in poses[:-1]])
    turn_rate = -np.radians((np.diff(yaw) + 180.0) % 360.0 - 180.0) * rate  # rad/s, > 0 turning left
    expected = np.clip(np.degrees(np.arctan(speed * turn_rate / 9.80665)), -8.0, 8.0)
    assert np.median(np.abs(rolls[:-1] - expected)) < 0.5
    assert np.mean(rolls > 0) > 0.8  # the loop is flown counter-clockwise: mostly left turns
    assert np.all(np.array([p.pitch_deg for _, p in poses]) < 0)  # cruise: nose down tilts the camera backwards
    heading, ros_pitch, ros_roll = body_attitude(poses[0][1])
    assert (ros_pitch, ros_roll) == (-poses[0][1].pitch_deg, -poses[0][1].roll_deg)
    assert 0.0 <= heading < 360.0


def test_footprint_inside_map_and_limits(ortho):
    poses = flight_poses(ortho, 120.0, 2.0, 11, RCFG, speed_m_s=12.0, yaw_noise_deg=10.0, gust_tilt_deg=3.0)
    cam = CameraModel.from_config(RCFG)
    left, bottom, right, top = ortho.bounds
    alts = []
    for _, p in poses:
        fp = footprint(p, cam)
        assert fp[:, 0].min() >= left and fp[:, 0].max() <= right
        assert fp[:, 1].min() >= bottom and fp[:, 1].max() <= top
        assert abs(p.pitch_deg) <= 8.0 + 1e-9 and abs(p.roll_deg) <= 8.0 + 1e-9
        alts.append(p.altitude_m)
    assert 50.0 <= min(alts) and max(alts) <= 70.0
    assert max(alts) - min(alts) > 10.0  # slowly varying over the range
    fixed = flight_poses(ortho, 10.0, 2.0, 11, RCFG, altitude_m=55.0)
    assert {p.altitude_m for _, p in fixed} == {55.0}


def test_smooth_heading(ortho):
    poses = flight_poses(ortho, 30.0, 10.0, 5, RCFG)
    yaw = np.array([p.yaw_deg for _, p in poses])
    dyaw = (np.diff(yaw) + 180.0) % 360.0 - 180.0
    assert np.abs(dyaw).max() < 5.0  # degrees per 0.1 s: no jumps


def test_errors(ortho):
    with pytest.raises(GeoError, match="no room to fly"):
        flight_poses(ortho, 10.0, 1.0, 0, RenderConfig(altitude_m=[300.0, 300.0]))
    with pytest.raises(GeoError, match="must be positive"):
        flight_poses(ortho, 10.0, 0.0, 0, RCFG)
    with pytest.raises(GeoError, match="horizon"):
        footprint_radius(CameraModel(160, 120, 140.0), 50.0, 30.0)
