"""Priors matched to the image stamp (issue 13, row 5), end to end: localize_node runs in its own process (the console
script) and this process publishes as drivers would, every prior BEFORE the image it serves.

What depends on the matching: the yaw prior decides verification (a registered heading more than
``refine.max_heading_error_deg`` = 30 deg from it is refused: no fix), and the altitude prior is the published height
above ground (``~/fix`` altitude = ``node.ground_alt_m`` + it). So
  A. IMU headings 300 deg and 60 deg stamped 0.5 s before and after the image (true heading 0): slerped at the image
     stamp they give 0 -> a verified fix; the latest sample (60), the nearest, or averaging the angles (180) give no
     fix. Rangefinder heights 50 m and 70 m around it give 60 m -> altitude ground + 60.
  B. IMU heading 180 deg at the image stamp and 0 deg (the truth) 1 s later: the matched sample is wrong -> no fix,
     where the latest sample would verify.
  C. Messages without stamps (an Imu with a zero stamp, a std_msgs/Float64 altitude) are stamped with the node clock
     at receipt: an image stamped now gets them (altitude ground + 65 m); a wrong zero-stamped heading gives no fix.
A Range outside its own [min_range, max_range] is a counted prior error in /diagnostics and the node goes on.
"""

import math
import signal
import subprocess
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, Imu, NavSatFix, NavSatStatus, Range  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from mobilegeo_ros.io.images import encode_image  # noqa: E402
from mobilegeo_ros.ros.pipeline import heading_to_quaternion  # noqa: E402
from ros_harness import node_command, node_env, spinning_client, wait_for  # noqa: E402
from synthetic_world import render_views, synthetic_setup  # noqa: E402

DOMAIN_ID = 75
GROUND_ALT = 1500.0  # node.ground_alt_m: ground height above the WGS84 ellipsoid
T0 = 1_700_002_000  # image stamps of A and B (a real UTC time)
# The node process loads torch, the model and the index before it subscribes: measured 40 s on 2 CPU cores shared
# by four test runs (test_ros_process.py); a node that never comes up fails here, not at a long timeout.
STARTUP_S = 120.0
ANSWER_S = 60.0





def _stamp(t_s: float) -> Time:
    sec = math.floor(t_s)
    return Time(sec=int(sec), nanosec=int(round((t_s - sec) * 1e9)))


def _imu(heading_deg: float, t_s: float | None) -> Imu:
    msg = Imu()
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = heading_to_quaternion(heading_deg)
    if t_s is not None:
        msg.header.stamp = _stamp(t_s)  # None: a driver that does not stamp (zero stamp)
    return msg


def _range(height_m: float, t_s: float, max_range_m: float = 100.0) -> Range:
    msg = Range(radiation_type=Range.INFRARED, field_of_view=0.05, min_range=0.2, max_range=max_range_m,
                range=height_m)
    msg.header.stamp = _stamp(t_s)
    msg.header.frame_id = "rangefinder"
    return msg


def _image(rgb, t_s: float) -> Image:
    f = encode_image(rgb, "rgb8")
    msg = Image(height=f["height"], width=f["width"], encoding="rgb8", step=f["step"], data=f["data"])
    msg.header.stamp = _stamp(t_s)
    msg.header.frame_id = "camera"
    return msg


def _distance_m(lat1, lon1, lat2, lon2):
    dn = (lat1 - lat2) * 111_320.0
    de = (lon1 - lon2) * 111_320.0 * math.cos(math.radians(lat2))
    return math.hypot(dn, de)


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


@pytest.fixture(scope="module")
def client():
    with spinning_client("prior_stamps_test_client", DOMAIN_ID) as node:
        yield node


def test_priors_are_matched_to_the_image_stamp(setup, client):
    # three places (so no frame is tracked from another), true heading 0 (image top north), 60 m above ground
    views = render_views(setup, [(0.55, 0.45), (0.35, 0.6), (0.6, 0.6), (0.4, 0.35)])
    params = {"index_dir": str(setup.index_dir), "qos_overrides./image.subscription.reliability": "reliable",
              "node.ground_alt_m": GROUND_ALT, "node.prior_timeout_s": 2.0, "node.diagnostics_period_s": 0.25,
              "node.stale_timeout_s": 30.0}
    cmd = node_command() + ["--ros-args"] + [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    proc = subprocess.Popen(cmd, env=node_env(DOMAIN_ID), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    lock = threading.Lock()
    fixes, diags = [], []

    def store(box):
        def cb(msg):
            with lock:
                box.append(msg)
        return cb

    subs = [client.create_subscription(NavSatFix, "/localize_node/fix", store(fixes), 50),
            client.create_subscription(DiagnosticArray, "/diagnostics", store(diags), 50)]
    pubs = {"image": client.create_publisher(Image, "image", reliable),
            "imu": client.create_publisher(Imu, "imu", reliable),
            "altitude_range": client.create_publisher(Range, "altitude_range", reliable),
            "altitude": client.create_publisher(Float64, "altitude", reliable)}
    try:
        wait_for(lambda: proc.poll() is not None or (all(p.get_subscription_count() > 0 for p in pubs.values())
                                                   and client.count_publishers("/localize_node/fix") > 0),
              STARTUP_S, "the node's subscriptions")
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.5)  # discovery is asynchronous: let the node's side of every match complete too

        def answer(rgb, t_s):
            """Publish the image (again every 5 s while unanswered: a first message can race discovery) and return
            the fix stamped ``t_s``."""
            stamp, sent = _stamp(t_s), [-math.inf]

            def find():
                with lock:
                    hit = next((m for m in fixes if m.header.stamp == stamp), None)
                if hit is None and time.monotonic() - sent[0] > 5.0:
                    pubs["image"].publish(_image(rgb, t_s))
                    sent[0] = time.monotonic()
                return hit
            return wait_for(find, ANSWER_S, f"the node's answer to the image stamped {t_s}")

        # A: samples around the image stamp, all published before the image
        ta = T0 + 0.25
        pubs["imu"].publish(_imu(300.0, ta - 0.5))
        pubs["imu"].publish(_imu(60.0, ta + 0.5))
        pubs["altitude_range"].publish(_range(50.0, ta - 0.5))
        pubs["altitude_range"].publish(_range(70.0, ta + 0.5))
        time.sleep(0.3)
        rgb, _, (lat, lon) = views[0]
        fix = answer(rgb, ta)
        assert fix.status.status == NavSatStatus.STATUS_FIX, "the slerped heading (0 deg) should verify"
        assert _distance_m(fix.latitude, fix.longitude, lat, lon) < 1.0
        assert fix.altitude == pytest.approx(GROUND_ALT + 60.0, abs=1e-6)  # 50 and 70 m half-way: 60 m

        # B: the sample at the image stamp says 180 deg (wrong), a later one 0 deg (right)
        tb = T0 + 100.0
        pubs["imu"].publish(_imu(180.0, tb))
        pubs["imu"].publish(_imu(0.0, tb + 1.0))
        time.sleep(0.3)
        rgb, _, _ = views[1]
        fix = answer(rgb, tb)
        assert fix.status.status == NavSatStatus.STATUS_NO_FIX, "the heading at the image stamp (180 deg) must be used"

        # C: no stamps: the node clock at receipt. First a wrong zero-stamped heading, then the right one + Float64
        pubs["imu"].publish(_imu(180.0, None))
        time.sleep(0.3)
        rgb, _, _ = views[2]
        fix = answer(rgb, time.time())
        assert fix.status.status == NavSatStatus.STATUS_NO_FIX, "a zero-stamped heading is stamped at its receipt"
        time.sleep(2.5)  # the 180 deg sample is now more than node.prior_timeout_s from the next image
        pubs["imu"].publish(_imu(0.0, None))
        pubs["altitude"].publish(Float64(data=65.0))
        time.sleep(0.3)
        rgb, _, (lat, lon) = views[3]
        fix = answer(rgb, time.time())
        assert fix.status.status == NavSatStatus.STATUS_FIX
        assert _distance_m(fix.latitude, fix.longitude, lat, lon) < 1.5
        assert fix.altitude == pytest.approx(GROUND_ALT + 65.0, abs=1e-6)

        # a rangefinder reading beyond its own max_range: counted, reported, and the node goes on
        pubs["altitude_range"].publish(_range(150.0, time.time()))

        def prior_error():
            with lock:
                for d in reversed(diags):
                    values = {kv.key: kv.value for kv in d.status[0].values}
                    if int(values.get("prior_errors", "0")) >= 1:
                        return values
            return None
        values = wait_for(prior_error, 10, "prior_errors in /diagnostics")
        assert "altitude_range" in values["last_error"] and "outside the sensor" in values["last_error"]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        for s in subs:
            client.destroy_subscription(s)
        for p in pubs.values():
            client.destroy_publisher(p)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
