"""rosbag2 writing and reading (io.bag, rosbags): both storages, metadata version 8, message counts and stamps, images
that decode back to the rendered frames, the IMU convention the node decodes, atomic output, user bags."""

import math

import numpy as np
import pytest
import yaml

from mobilegeo_ros import cli
from mobilegeo_ros.config import from_dict
from mobilegeo_ros.geo.flight import body_attitude, flight_poses
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.io import bag as bagmod
from mobilegeo_ros.io.bag import (
    EPOCH_NS, BagError, attitude_quaternion, bag_metadata, bag_topics, decode_bag_image, flight_frames, flight_info,
    read_bag, stamp_ns, write_flight_bag,
)
from mobilegeo_ros.ros.pipeline import quaternion_to_attitude

FRAMES, RATE = 6, 4.0
CFG = {"render": {"image_width_px": 96, "image_height_px": 72, "altitude_m": [60.0, 60.0]}}


@pytest.fixture(scope="module")
def map_path(tmp_path_factory):
    return write_synthetic_geotiff(tmp_path_factory.mktemp("bagmap") / "map.tif", 400, 400, 0.5, seed=2)


@pytest.mark.parametrize("storage,compressed", [("sqlite3", False), ("mcap", True)])
def test_write_and_read_back(tmp_path, map_path, storage, compressed):
    cfg = from_dict(CFG)
    out = write_flight_bag(tmp_path / "flight", map_path, cfg, frames=FRAMES, rate_hz=RATE, seed=5, storage=storage,
                           compressed=compressed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flight"]  # no temporary directory left behind
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8
    assert meta["storage_identifier"] == storage
    assert meta["message_count"] == 5 * FRAMES
    assert (out / meta["relative_file_paths"][0]).is_file()
    image_topic = bagmod.TOPIC_COMPRESSED if compressed else bagmod.TOPIC_IMAGE
    topics = bag_topics(out)
    assert set(topics) == {image_topic, "/camera/camera_info", "/imu", "/altitude", "/ground_truth/fix"}
    assert all(v["count"] == FRAMES for v in topics.values())
    assert topics[image_topic]["type"] == ("sensor_msgs/msg/CompressedImage" if compressed else
                                           "sensor_msgs/msg/Image")

    msgs = list(read_bag(out))
    log_times = [t for _, t, _ in msgs]
    assert log_times == sorted(log_times)
    by_topic = {}
    for topic, t_ns, msg in msgs:
        by_topic.setdefault(topic, []).append((t_ns, msg))
    expected_stamps = [EPOCH_NS + round(i / RATE * 1e9) for i in range(FRAMES)]
    for topic, items in by_topic.items():
        stamps = [stamp_ns(m) if hasattr(m, "header") else t for t, m in items]
        assert stamps == expected_stamps, topic
    # the image is logged after the priors of its time step, so a player sends the priors first
    assert [t for t, _ in by_topic[image_topic]] == [s + bagmod.IMAGE_LOG_DELAY_NS for s in expected_stamps]
    assert by_topic[image_topic][0][1].header.frame_id == "camera"

    ortho = read_orthophoto(map_path, cfg.map)
    cam = CameraModel.from_config(cfg.render)
    poses = flight_poses(ortho, FRAMES / RATE, RATE, 5, cfg.render, camera=cam)
    rendered = list(flight_frames(ortho, poses, cam, cfg, 5))
    for (_, msg), ref in zip(by_topic[image_topic], rendered, strict=True):
        img = decode_bag_image(msg)
        assert img.shape == (72, 96, 3)
        if compressed:
            assert msg.format.endswith("jpeg compressed bgr8")
            mse = np.mean((img.astype(float) - ref.astype(float)) ** 2)
            assert 10 * math.log10(255.0**2 / mse) > 30.0  # JPEG quality 90
        else:
            assert msg.encoding == "rgb8" and msg.step == 96 * 3
            np.testing.assert_array_equal(img, ref)

    for (_, fix), (_, pose) in zip(by_topic["/ground_truth/fix"], poses, strict=True):
        lat, lon = ortho.map_to_wgs84(pose.easting, pose.northing)
        assert fix.latitude == pytest.approx(float(lat), abs=1e-9)
        assert fix.longitude == pytest.approx(float(lon), abs=1e-9)
        assert fix.status.status == 0 and fix.altitude == pytest.approx(60.0)
    for (_, imu), (_, pose) in zip(by_topic["/imu"], poses, strict=True):
        q = imu.orientation
        heading, pitch, roll = quaternion_to_attitude(q.x, q.y, q.z, q.w)  # how the node reads it
        h_ref, p_ref, r_ref = body_attitude(pose)
        assert (heading - h_ref + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-6)
        assert (pitch, roll) == pytest.approx((p_ref, r_ref), abs=1e-6)
        assert imu.angular_velocity_covariance[0] == -1.0
    assert [m.data for _, m in by_topic["/altitude"]] == pytest.approx([60.0] * FRAMES)
    info = by_topic["/camera/camera_info"][0][1]
    assert (info.width, info.height) == (96, 72)
    assert math.degrees(2 * math.atan(96 / 2 / info.k[0])) == pytest.approx(70.0)

    flight = flight_info(out)
    assert flight["frames"] == FRAMES and flight["map_path"] == str(map_path.resolve())
    assert flight["recommended_node_parameters"] == {"node.use_imu_tilt": True}
    # same seed, same bag contents
    again = write_flight_bag(tmp_path / "again", map_path, cfg, frames=FRAMES, rate_hz=RATE, seed=5, storage=storage,
                             compressed=compressed)
    assert [bytes(d) for _, _, d in read_bag(again, raw=True)] == [bytes(d) for _, _, d in read_bag(out, raw=True)]


@pytest.mark.parametrize("heading,pitch,roll", [(0.0, 0.0, 0.0), (90.0, 5.0, -3.0), (225.0, -7.0, 4.0),
                                                (359.0, 2.0, 8.0)])
def test_attitude_quaternion_matches_the_node(heading, pitch, roll):
    q = attitude_quaternion(heading, pitch, roll)
    assert sum(c * c for c in q) == pytest.approx(1.0)
    h, p, r = quaternion_to_attitude(*q)
    assert (h - heading + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-9)
    assert (p, r) == pytest.approx((pitch, roll), abs=1e-9)


def test_refuses_existing_output_and_bad_arguments(tmp_path, map_path):
    cfg = from_dict(CFG)
    (tmp_path / "exists").mkdir()
    with pytest.raises(BagError, match="already exists"):
        write_flight_bag(tmp_path / "exists", map_path, cfg, frames=2)
    with pytest.raises(BagError, match="storage 'rosbag1'"):
        write_flight_bag(tmp_path / "x", map_path, cfg, frames=2, storage="rosbag1")
    with pytest.raises(BagError, match="not a rosbag2 directory"):
        list(read_bag(tmp_path / "exists"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_cli_make_bag_and_errors(tmp_path, map_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    out = tmp_path / "cli_bag"
    rc = cli.main(["make-bag", str(map_path), "--out", str(out), "--frames", "3", "--rate-hz", "2", "--seed", "1",
                   "--storage", "mcap", "--compressed", "--config", str(cfg), "--quiet"])
    assert rc == 0
    assert bag_metadata(out)["storage_identifier"] == "mcap"
    assert bag_topics(out)[bagmod.TOPIC_COMPRESSED]["count"] == 3
    assert cli.main(["make-bag", str(map_path), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["make-bag", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "b2"), "--quiet"]) == 2
    assert "nope.tif" in capsys.readouterr().err


def test_read_a_users_bag_with_its_own_message_type(tmp_path):
    """A bag recorded elsewhere: a custom message type is registered from the definition stored in the bag."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    ts.register(get_types_from_msg("float64 speed\nstring label\n", "my_pkg/msg/Status"))
    status_t = ts.types["my_pkg/msg/Status"]
    with Writer(tmp_path / "user", version=8) as w:
        c = w.add_connection("/status", "my_pkg/msg/Status", typestore=ts)
        for i in range(3):
            w.write(c, 1_000 + i, ts.serialize_cdr(status_t(speed=float(i), label=f"s{i}"), "my_pkg/msg/Status"))
    msgs = list(read_bag(tmp_path / "user", ["/status"]))
    assert [(t, m.speed, m.label) for _, t, m in msgs] == [(1000, 0.0, "s0"), (1001, 1.0, "s1"), (1002, 2.0, "s2")]
    assert flight_info(tmp_path / "user") is None
    with pytest.raises(BagError, match="no topic"):
        list(read_bag(tmp_path / "user", ["/camera"]))
