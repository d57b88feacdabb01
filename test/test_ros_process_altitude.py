"""The published altitude (issue 13, row 6), end to end: localize_node in its own process, images and a rangefinder
height published from this process, the fix read back from ~/fix, ~/pose and the NMEA and MAVLink datagrams the node
sends to UDP ports this test listens on.

- With ``node.dem_file`` (a GeoTIFF written here in Web Mercator, heights above the WGS84 ellipsoid on a plane known
  here) the NavSatFix altitude is the DEM height at the fix + the 60 m height above ground; ~/pose z follows the
  ground (up in the map frame); GGA carries the altitude above mean sea level (ellipsoidal - ``node.geoid_separation_m``)
  with that separation, GPS_INPUT the same MSL altitude.
- Without a ground height (the default, read from the generated config/localize.yaml as a --params-file, and
  ``-p node.ground_alt_m:=nan``) the altitude is NaN with a huge variance, GGA's altitude and separation fields are
  empty and GPS_INPUT ignores its altitude; ~/pose z is the height above ground.
- An unusable ``node.dem_file`` stops the start-up (exit 2) with one line naming it.
"""

import math
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

import rasterio  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from pymavlink.dialects.v20 import ardupilotmega as mav2  # noqa: E402
from pyproj import Transformer  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, NavSatFix, NavSatStatus, Range  # noqa: E402

from mobilegeo_ros.io.images import encode_image  # noqa: E402
from ros_harness import node_command, node_env, spinning_client, wait_for  # noqa: E402
from synthetic_world import render_views, synthetic_setup  # noqa: E402

DOMAIN_ID = 76
REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_003_000  # image stamps (a real UTC time: NMEA times and GPS weeks are meaningful)
GEOID_M = 17.25  # node.geoid_separation_m of the node with a DEM
AGL_M = 60.0  # the views' height above ground, published as a rangefinder reading stamped with each image
STARTUP_S = 120.0  # see test_ros_process_prior_stamps.py
ANSWER_S = 60.0
TO_MERCATOR = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)





def _dem_height(x, y):
    """The DEM's plane in Web Mercator metres: 1650 m at the map, rising 0.15 per metre east, 0.1 per metre north."""
    return 1650.0 + 0.15 * (x - DEM_X0) + 0.1 * (y - DEM_Y0)


DEM_X0, DEM_Y0 = -11_720_000.0, 4_880_000.0  # plane reference (near the synthetic map at 40.1 N, 105.15 W)


def _write_dem(setup, path):
    with rasterio.open(setup.map_path) as src:
        to_wgs84 = Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
        left, bottom, right, top = src.bounds
    corners = [to_wgs84.transform(x, y) for x in (left - 300, right + 300) for y in (bottom - 300, top + 300)]
    xs, ys = zip(*(TO_MERCATOR.transform(lon, lat) for lon, lat in corners))
    res = 5.0
    transform = from_origin(min(xs), max(ys), res, res)
    w, h = int((max(xs) - min(xs)) / res) + 1, int((max(ys) - min(ys)) / res) + 1
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    px, py = transform @ (cols, rows)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float64", crs="EPSG:3857",
                       transform=transform) as dst:
        dst.write(_dem_height(px, py), 1)
    return path


def _expected_ellipsoidal(lat, lon):
    return _dem_height(*TO_MERCATOR.transform(lon, lat)) + AGL_M


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


@pytest.fixture(scope="module")
def client():
    with spinning_client("altitude_test_client", DOMAIN_ID) as node:
        yield node


def _udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.05)
    return s


def _drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except (socket.timeout, BlockingIOError):
            return out


class NodeUnderTest:
    """One localize_node process in namespace ``ns`` with NMEA and MAVLink bridges to this test's UDP sockets."""

    def __init__(self, client, setup, ns, head_args, params):
        self.client, self.ns = client, ns
        self.nmea, self.mav = _udp_socket(), _udp_socket()
        # the tile size, input size and rotations come from the index; the camera QoS follows this test's publisher
        p = {"index_dir": str(setup.index_dir), "node.stale_timeout_s": 60.0, "node.nmea_enabled": "true", "node.nmea_port": self.nmea.getsockname()[1],
             "node.mavlink_enabled": "true", "node.mavlink_port": self.mav.getsockname()[1], **params}
        cmd = node_command() + ["--ros-args"] + head_args + [a for k, v in p.items() for a in ("-p", f"{k}:={v}")]
        cmd += ["-r", f"__ns:=/{ns}"]
        self.proc = subprocess.Popen(cmd, env=node_env(DOMAIN_ID), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.fixes, self.poses = [], []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = [client.create_subscription(NavSatFix, f"/{ns}/localize_node/fix", self._store(self.fixes), 50),
                     client.create_subscription(PoseWithCovarianceStamped, f"/{ns}/localize_node/pose",
                                                self._store(self.poses), 50)]
        self.pub_image = client.create_publisher(Image, f"/{ns}/image", qos)
        self.pub_range = client.create_publisher(Range, f"/{ns}/altitude_range", qos)

    def _store(self, box):
        def cb(msg):
            with self.lock:
                box.append(msg)
        return cb

    def wait_ready(self):
        wait_for(lambda: self.proc.poll() is not None or (
            self.pub_image.get_subscription_count() > 0 and self.pub_range.get_subscription_count() > 0
            and self.client.count_publishers(f"/{self.ns}/localize_node/fix") > 0), STARTUP_S, f"node {self.ns}")
        assert self.proc.poll() is None, self.proc.communicate()[1]

    def answer(self, rgb, sec):
        """Publish the rangefinder height and the image stamped ``sec`` (again every 5 s while unanswered: a first
        message can race discovery); returns (fix, pose or None, NMEA datagrams, MAVLink datagrams) received."""
        stamp, sent = Time(sec=sec), [-math.inf]
        f = encode_image(rgb, "rgb8")
        img = Image(height=f["height"], width=f["width"], encoding="rgb8", step=f["step"], data=f["data"])
        img.header.stamp = stamp
        rng = Range(radiation_type=Range.ULTRASOUND, field_of_view=0.3, min_range=0.3, max_range=120.0, range=AGL_M)
        rng.header.stamp = stamp

        def find():
            with self.lock:
                hit = next((m for m in self.fixes if m.header.stamp == stamp), None)
            if hit is None and time.monotonic() - sent[0] > 5.0:
                self.pub_range.publish(rng)
                time.sleep(0.2)
                self.pub_image.publish(img)
                sent[0] = time.monotonic()
            return hit
        fix = wait_for(find, ANSWER_S, f"{self.ns}'s fix stamped {sec}")
        time.sleep(0.5)  # the datagrams leave right after the fix is published
        with self.lock:
            pose = next((m for m in self.poses if m.header.stamp == stamp), None)
        return fix, pose, _drain(self.nmea), _drain(self.mav)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        for s in self.subs:
            self.client.destroy_subscription(s)
        self.client.destroy_publisher(self.pub_image)
        self.client.destroy_publisher(self.pub_range)
        self.nmea.close()
        self.mav.close()
        return err


def _gga_fields(datagrams, sec):
    """The comma-separated fields of the valid (quality 1) GGA sentences for the stamp ``sec``."""
    hms = time.strftime("%H%M%S", time.gmtime(sec)) + ".00"
    out = []
    for d in datagrams:
        for line in d.decode("ascii").split("\r\n"):
            fields = line.split("*")[0].split(",")
            if fields[0].endswith("GGA") and fields[1] == hms and fields[6] == "1":
                out.append(fields)
    return out


def _gps_inputs(datagrams, sec):
    parser = mav2.MAVLink(None)
    msgs = [m for d in datagrams for m in parser.parse_buffer(d) or []]
    return [m for m in msgs if m.get_type() == "GPS_INPUT" and m.fix_type == 3 and m.time_usec == sec * 1_000_000]


def test_altitude_known_from_a_dem_and_unknown_without(setup, client, tmp_path):
    dem = _write_dem(setup, tmp_path / "ground_ellipsoidal_3857.tif")
    views = render_views(setup, [(0.3, 0.35), (0.7, 0.65)])  # ~110 m apart: ~19 m of ground rise between them
    known = NodeUnderTest(client, setup, "known", [], {"node.dem_file": str(dem), "node.geoid_separation_m": GEOID_M})
    unknown = NodeUnderTest(client, setup, "unknown", ["--params-file", str(REPO / "config" / "localize.yaml")],
                            {"node.ground_alt_m": "nan"})
    errors = {}
    try:
        known.wait_ready()
        unknown.wait_ready()
        time.sleep(0.5)  # discovery is asynchronous: let the nodes' side of every match complete too

        results = []
        for k, (rgb, _, _) in enumerate(views):
            sec = T0 + 100 * k  # far apart: each view is localized on its own (no track from the other)
            fix, pose, nmea, mav = known.answer(rgb, sec)
            assert fix.status.status == NavSatStatus.STATUS_FIX
            expected = _expected_ellipsoidal(fix.latitude, fix.longitude)
            assert fix.altitude == pytest.approx(expected, abs=1e-3)
            assert fix.position_covariance[8] == pytest.approx(1.0)  # the rangefinder's assumed 1 m sigma, squared
            ggas = _gga_fields(nmea, sec)
            assert ggas, nmea
            assert float(ggas[-1][9]) == pytest.approx(fix.altitude - GEOID_M, abs=0.006)  # MSL, 2 decimals
            assert (ggas[-1][10], float(ggas[-1][11]), ggas[-1][12]) == ("M", GEOID_M, "M")
            gps = _gps_inputs(mav, sec)
            assert gps, mav
            assert not gps[-1].ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_ALT
            assert gps[-1].alt == pytest.approx(fix.altitude - GEOID_M, abs=1e-3)
            results.append((fix, pose))
        (fix0, pose0), (fix1, pose1) = results
        rise = fix1.altitude - fix0.altitude
        assert rise > 10.0
        # ~/pose z: up in the map frame (ENU at the ground of the index origin), so it rises with the ground
        assert pose1.pose.pose.position.z - pose0.pose.pose.position.z == pytest.approx(rise, abs=0.01)

        sec = T0 + 300
        fix, pose, nmea, mav = unknown.answer(views[0][0], sec)
        assert fix.status.status == NavSatStatus.STATUS_FIX
        assert math.isnan(fix.altitude) and fix.position_covariance[8] >= 1e5  # NavSatFix: NaN if no altitude
        assert pose.pose.pose.position.z == pytest.approx(AGL_M)  # height above ground
        ggas = _gga_fields(nmea, sec)
        assert ggas, nmea
        assert (ggas[-1][9], ggas[-1][10], ggas[-1][11], ggas[-1][12]) == ("", "M", "", "M")
        gps = _gps_inputs(mav, sec)
        assert gps and gps[-1].ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_ALT, mav
    finally:
        errors = {"known": known.close(), "unknown": unknown.close()}
    for name, err in errors.items():
        assert "Traceback" not in err, f"{name}: {err}"
    assert known.proc.returncode == 0 and unknown.proc.returncode == 0, errors


def test_unusable_dem_file_stops_the_start_up(setup, tmp_path):
    bad = tmp_path / "dem_without_crs.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as dst:
        dst.write(np.zeros((8, 8), "float32"), 1)
    cmd = node_command() + ["--ros-args", "-p", f"index_dir:={setup.index_dir}",
                            "-p", f"node.dem_file:={bad}"]
    r = subprocess.run(cmd, env=node_env(DOMAIN_ID), capture_output=True, text=True, timeout=STARTUP_S)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("[INFO]")]  # "starting: ..."
    assert len(lines) == 1 and "start-up refused: node.dem_file" in lines[0], r.stderr
    assert str(bad) in lines[0] and "not georeferenced" in lines[0]
