"""Bag replay into localize_node (a real separate process, real rclpy): a synthetic flight bag written in the test is
played into the node and its fixes are scored against the ground truth; a user's bag (compressed images on its own
topic, no ground truth) replays with --topic through the CLI."""

import csv
import json

import pytest

pytest.importorskip("rclpy")

from rosbags.rosbag2 import Writer  # noqa: E402

from mobilegeo_ros import cli  # noqa: E402
from mobilegeo_ros.config import from_dict  # noqa: E402
from mobilegeo_ros.io.bag import TOPIC_COMPRESSED, read_bag, typestore, write_flight_bag  # noqa: E402
from mobilegeo_ros.ros.replay import run_replay  # noqa: E402
from mobilegeo_ros.ros.testing import synthetic_setup  # noqa: E402

FRAMES = 20


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


def _bag_cfg(setup):
    return from_dict({**setup.overrides, "render": {"image_width_px": 160, "image_height_px": 120,
                                                    "altitude_m": [60.0, 60.0]}})


def test_replay_synthetic_flight(setup, tmp_path):
    bag = write_flight_bag(tmp_path / "bag", setup.map_path, _bag_cfg(setup), frames=FRAMES, rate_hz=10.0, seed=1)
    report = tmp_path / "report"
    summary = run_replay(bag, setup.index_dir, report, rate=1.0, use_sim_time=True)
    on_disk = json.loads((report / "summary.json").read_text())
    assert on_disk == summary
    for key in ("frames", "fixes", "no_fix", "median_error_m", "p95_error_m", "max_error_m",
                "within_2sigma_fraction", "mean_latency_ms"):
        assert key in summary, key
    assert summary["frames"] == FRAMES
    assert summary["fixes"] + summary["no_fix"] + summary["dropped"] == FRAMES
    # Frames the node had no time for are dropped by design (bounded latency); most of the rest must be fixes.
    processed = FRAMES - summary["dropped"]
    assert processed >= FRAMES // 2 and summary["fixes"] >= 0.7 * processed, summary
    assert summary["median_error_m"] < 40.0, summary  # 60 m tiles
    assert 0.0 <= summary["within_2sigma_fraction"] <= 1.0
    assert 0.0 < summary["mean_latency_ms"] < 2000.0
    assert summary["node_returncode"] == 0  # SIGINT: clean exit
    assert summary["node_parameters"]["use_sim_time"] is True
    assert summary["node_parameters"]["node.use_imu_tilt"] is True  # the bag's recommendation
    assert summary["remaps"]["imu"] == "/imu" and summary["remaps"]["image"] == "/camera/image_raw"
    with open(report / "track.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FRAMES
    assert sum(r["status"] == "fix" for r in rows) == summary["fixes"]
    assert all(r["truth_lat"] for r in rows)
    assert (report / "track.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Traceback" not in (report / "node.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "report"]  # no temporary directories left


def test_replay_users_compressed_bag_without_truth(setup, tmp_path, capsys):
    ours = write_flight_bag(tmp_path / "ours", setup.map_path, _bag_cfg(setup), frames=FRAMES, rate_hz=10.0, seed=2,
                            storage="mcap", compressed=True)
    # a "user's bag": only compressed camera frames, on the user's topic name, rosbag2 version 9
    ts = typestore()
    user = tmp_path / "user_bag"
    with Writer(user, version=9) as w:
        conn = w.add_connection("/drone/cam/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts)
        for _, t_ns, data in read_bag(ours, [TOPIC_COMPRESSED], raw=True):
            w.write(conn, t_ns, data)
    report = tmp_path / "report"
    rc = cli.main(["replay", str(user), "--index", str(setup.index_dir), "--report", str(report), "--rate", "2",
                   "--topic", "/drone/cam/compressed", "--param", "node.window_size:=3", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["ground_truth"] is False and "median_error_m" not in summary
    processed = FRAMES - summary["dropped"]  # played at 2x: a slow machine drops frames by design
    assert summary["frames"] == FRAMES and processed >= FRAMES // 3, summary
    assert summary["fixes"] >= 0.7 * processed, summary
    assert summary["remaps"] == {"image/compressed": "/drone/cam/compressed"}
    assert summary["node_parameters"]["node.window_size"] == 3
    assert "node.use_imu_tilt" not in summary["node_parameters"]
    assert "frames" in out and str(report) in out
    assert (report / "track.png").is_file()

    # a topic the bag lacks: one line, exit 2, nothing written
    rc = cli.main(["replay", str(user), "--index", str(setup.index_dir), "--report", str(tmp_path / "r2"),
                   "--topic", "/nope", "--quiet"])
    assert rc == 2
    assert "has no topic '/nope'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
