"""localize_node in its own process, driven from this process the way a camera driver, an IMU driver and a user's
``ros2 param set`` would (issue 13): camera QoS that follows the publishers (640×480 and 1920×1080 raw images with a
publisher's default QoS), a warning naming the topic when large best-effort images are lost, per-topic
``qos_overrides``, one image transport at a time, camera_info as the image topic's sibling, ~/fix_raw and ~/odometry,
one frame_id for every NavSatFix (stale NO_FIX included), a log line for a rejected frame, and run-time parameters.

One node process serves the tests of this module (they run in any order: each uses its own stamps and restores what it
changes); a second one checks per-topic overrides.
"""

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix, NavSatStatus  # noqa: E402

from mobilegeo_ros.io.images import encode_compressed, encode_image  # noqa: E402
from ros_harness import node_env, wait_for  # noqa: E402
from synthetic_world import render_views, synthetic_setup  # noqa: E402

DOMAIN_ID = 81
CAMERA = "/cam/image_raw"
NODE = "/localize_node"
T0 = 1_700_100_000


def _haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371000.0 * math.asin(math.sqrt(a))


class NodeProcess:
    """``python -m mobilegeo_ros.ros.node`` with a config file, extra ``--ros-args``, stderr kept in a file."""

    def __init__(self, setup, tmp: Path, ros_args: list[str], node_overrides: dict | None = None):
        cfg = dict(setup.overrides)
        cfg["node"] = {"diagnostics_period_s": 0.5, "stale_timeout_s": 1.0, **(node_overrides or {})}
        self.cfg_file = tmp / "node.yaml"
        self.cfg_file.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / "node.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mobilegeo_ros.ros.node", "--ros-args", "-p", f"index_dir:={setup.index_dir}",
             "-p", f"config_file:={self.cfg_file}", *ros_args], env=node_env(DOMAIN_ID), stdout=self._log,
            stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Driver:
    """This process's ROS side: publishers as drivers create them, subscribers recording the node's outputs."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("integration_driver", context=self.context)
        self.lock = threading.Lock()
        self.got: dict[str, list] = {"fix": [], "fix_raw": [], "odometry": [], "pose": [], "diag": []}
        for key, msg_type, topic in [("fix", NavSatFix, f"{NODE}/fix"), ("fix_raw", NavSatFix, f"{NODE}/fix_raw"),
                                     ("odometry", Odometry, f"{NODE}/odometry"),
                                     ("pose", PoseWithCovarianceStamped, f"{NODE}/pose"),
                                     ("diag", DiagnosticArray, "/diagnostics")]:
            self.node.create_subscription(msg_type, topic, self._store(key), 100)
        self.set_client = self.node.create_client(SetParameters, f"{NODE}/set_parameters")
        self.get_client = self.node.create_client(GetParameters, f"{NODE}/get_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _store(self, key):
        def cb(msg):
            with self.lock:
                self.got[key].append(msg)
        return cb

    def stamped(self, key: str, sec: int) -> list:
        with self.lock:
            return [m for m in self.got[key] if m.header.stamp.sec == sec]

    def diag_values(self) -> dict:
        with self.lock:
            mine = [d for d in self.got["diag"] if d.status and d.status[0].name.startswith("localize_node:")]
        return {kv.key: kv.value for kv in mine[-1].status[0].values} if mine else {}

    def set_param(self, name: str, value) -> tuple[bool, str]:
        """What ``ros2 param set`` does: one SetParameters request."""
        pv = ParameterValue()
        if isinstance(value, bool):
            pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
        elif isinstance(value, int):
            pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, str(value)
        wait(self.set_client.service_is_ready, 30, "the set_parameters service")
        future = self.set_client.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)]))
        result = wait(lambda: future.done() and future.result(), 20, "set_parameters")
        return result.results[0].successful, result.results[0].reason

    def get_param(self, name: str):
        wait(self.get_client.service_is_ready, 30, "the get_parameters service")
        future = self.get_client.call_async(GetParameters.Request(names=[name]))
        return wait(lambda: future.done() and future.result(), 20, "get_parameters").values[0]

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(5)


def wait(pred, timeout, what, proc: NodeProcess | None = None):
    return wait_for(pred, timeout, what, proc.proc if proc else None, proc.log if proc else (lambda: ""))


def image_msg(rgb, sec: int, encoding: str = "bgr8") -> Image:
    f = encode_image(rgb, encoding)
    msg = Image(height=f["height"], width=f["width"], encoding=encoding, step=f["step"], data=f["data"])
    msg.header.stamp = Time(sec=sec)
    msg.header.frame_id = "camera_optical"
    return msg


def publish_until(driver, pub, msg, sec: int, proc: NodeProcess, timeout: float = 90.0, key: str = "fix"):
    """Publish ``msg`` at 2 Hz (a camera) until the node answers its stamp; returns the answer."""
    def answered():
        found = driver.stamped(key, sec)
        if not found:
            pub.publish(msg)
        return found[0] if found else None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = answered()
        if found is not None:
            return found
        if proc.proc.poll() is not None:
            raise AssertionError(f"the node exited with {proc.proc.returncode}:\n{proc.log()}")
        time.sleep(0.5)
    raise AssertionError(f"no answer stamped {sec} within {timeout} s:\n{proc.log()[-3000:]}")


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


@pytest.fixture(scope="module")
def driver():
    d = Driver()
    yield d
    d.close()


@pytest.fixture(scope="module")
def node(setup, driver, tmp_path_factory):
    """The node as a user starts it: defaults (camera QoS following its publishers), camera remapped."""
    proc = NodeProcess(setup, tmp_path_factory.mktemp("node"), ["-r", f"image:={CAMERA}"])
    wait(lambda: driver.node.count_publishers(f"{NODE}/fix") > 0 and driver.diag_values(), 120,
         "the node's outputs", proc)
    yield proc
    assert proc.stop() == 0, proc.log()
    assert "Traceback" not in proc.log()


def _check_fix_at(fix, latlon, frame="base_link"):
    assert fix.status.status == NavSatStatus.STATUS_FIX
    assert fix.header.frame_id == frame
    err = _haversine_m(fix.latitude, fix.longitude, *latlon)
    sigma = math.sqrt(max(fix.position_covariance[0], fix.position_covariance[4]))
    # refined on the map: measured errors of a few cm on these synthetic views; retrieval alone is tens of metres
    assert err < 1.0 and err < 3.0 * sigma, (err, sigma)


@pytest.mark.slow
@pytest.mark.parametrize("size,sec", [((640, 480), T0 + 100), ((1920, 1080), T0 + 200)])
def test_raw_images_with_a_publishers_default_qos_arrive(setup, driver, node, size, sec):
    # row 1: rclpy's default publisher QoS (reliable, depth 10), as usb_cam and image_transport publish
    (rgb, _, latlon), = render_views(setup, [(0.45, 0.55)], size_px=size)
    pub = driver.node.create_publisher(Image, CAMERA, 10)
    try:
        fix = publish_until(driver, pub, image_msg(rgb, sec), sec, node)
        _check_fix_at(fix, latlon)
        assert driver.diag_values().get("image_reliability") == "reliable"
        # ~/odometry (row 14): REP-105 frames, the same position as ~/pose
        odom = wait(lambda: driver.stamped("odometry", sec), 10, "odometry")[0]
        pose = wait(lambda: driver.stamped("pose", sec), 10, "pose")[0]
        assert (odom.header.frame_id, odom.child_frame_id) == ("map", "base_link")
        assert odom.pose.pose.position.x == pytest.approx(pose.pose.pose.position.x)
        assert odom.pose.pose.position.y == pytest.approx(pose.pose.pose.position.y)
        assert list(odom.pose.covariance) == pytest.approx(list(pose.pose.covariance))
        # ~/fix_raw (row 8): the frame's own fix, same stamp and frame
        raw = wait(lambda: driver.stamped("fix_raw", sec), 10, "fix_raw")[0]
        _check_fix_at(raw, latlon)
    finally:
        driver.node.destroy_publisher(pub)


@pytest.mark.slow
def test_lost_best_effort_images_give_a_warning_naming_the_topic(setup, driver, node):
    # row 1: a 640x480 raw image sent best effort (SensorDataQoS) is lost by Fast DDS's default transports; the node
    # cannot receive it, but it must say so, with the topic and the fix
    (rgb, _, _), = render_views(setup, [(0.5, 0.5)], size_px=(640, 480))
    pub = driver.node.create_publisher(Image, CAMERA, qos_profile_sensor_data)
    needle = f"no image received on {CAMERA}"
    try:
        msg = image_msg(rgb, T0 + 300)
        for _ in range(60):  # a 2 Hz camera for up to 30 s
            pub.publish(msg)
            if needle in node.log():
                break
            time.sleep(0.5)
        assert needle in node.log(), (driver.diag_values(), len(driver.stamped("fix", T0 + 300)), node.log())
    finally:
        driver.node.destroy_publisher(pub)
    line = next(ln for ln in node.log().splitlines() if needle in ln)
    assert "best_effort" in line and "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA" in line and "compressed" in line
    assert node.proc.poll() is None


@pytest.mark.slow
def test_one_transport_at_a_time_gives_one_fix_per_stamp(setup, driver, node):
    # row 3: the same frame on image and image/compressed: the raw transport (default) answers once
    (rgb, _, latlon), = render_views(setup, [(0.4, 0.45)])
    raw_pub = driver.node.create_publisher(Image, CAMERA, 10)
    comp_pub = driver.node.create_publisher(CompressedImage, f"{CAMERA}/compressed", 10)
    sec = T0 + 400
    comp = CompressedImage(format="jpeg", data=encode_compressed(rgb, "jpeg", 95)["data"])
    comp.header.stamp = Time(sec=sec)
    try:
        assert comp_pub.get_subscription_count() == 0  # nobody subscribes to the other transport
        for _ in range(3):
            comp_pub.publish(comp)
        fix = publish_until(driver, raw_pub, image_msg(rgb, sec), sec, node)
        _check_fix_at(fix, latlon)
        time.sleep(2.0)  # a second answer to the same stamp would have arrived by now
        assert len(driver.stamped("fix", sec)) == 1
    finally:
        driver.node.destroy_publisher(raw_pub)
        driver.node.destroy_publisher(comp_pub)


@pytest.mark.slow
def test_camera_info_is_the_image_topics_sibling(driver, node):
    # row 4: image remapped to /cam/image_raw -> camera_info on /cam/camera_info (not /camera_info)
    assert driver.node.count_subscribers("/cam/camera_info") >= 1
    assert driver.node.count_subscribers("/camera_info") == 0
    pub = driver.node.create_publisher(CameraInfo, "/cam/camera_info", 10)
    try:
        info = CameraInfo(width=640, height=480)
        info.k = [400.0, 0.0, 320.0, 0.0, 400.0, 240.0, 0.0, 0.0, 1.0]
        expected = math.degrees(2 * math.atan(640 / (2 * 400.0)))

        def hfov():
            pub.publish(info)
            v = driver.diag_values().get("camera_hfov_deg", "unknown")
            return v != "unknown" and float(v)
        assert wait(hfov, 20, "camera_hfov_deg in diagnostics", node) == pytest.approx(expected, abs=0.1)
        assert driver.diag_values()["camera_info_topic"] == "/cam/camera_info"
    finally:
        driver.node.destroy_publisher(pub)


@pytest.mark.slow
def test_stale_no_fix_carries_the_frame_of_every_fix(driver, node):
    # row 9: with no camera the node says NO_FIX once per diagnostics period, in node.base_frame like its fixes
    def stale():
        with driver.lock:
            return [f for f in driver.got["fix"] if f.status.status == NavSatStatus.STATUS_NO_FIX
                    and f.header.stamp.sec > T0 + 10**7]  # stamped by the node's clock: no image to answer
    fixes = wait(stale, 20, "a stale NO_FIX", node)
    assert {f.header.frame_id for f in fixes} == {"base_link"}
    assert all(math.isnan(f.latitude) for f in fixes)


@pytest.mark.slow
def test_a_rejected_frame_is_logged_with_its_reason(driver, node):
    # row 12: besides /diagnostics, a throttled log line names the frame and the reason
    pub = driver.node.create_publisher(Image, CAMERA, 10)
    try:
        bad = Image(height=4, width=4, encoding="rgb8", step=6, data=bytes(24))  # step < width * 3
        bad.header.stamp = Time(sec=T0 + 500)

        def logged():
            pub.publish(bad)
            return f"frame stamped {T0 + 500}.000 not localized" in node.log()
        wait(logged, 30, "the rejected-frame log line", node)
        line = next(ln for ln in node.log().splitlines() if f"frame stamped {T0 + 500}.000" in ln)
        assert "step" in line
        assert node.proc.poll() is None
    finally:
        driver.node.destroy_publisher(pub)


@pytest.mark.slow
def test_runtime_parameters_apply_and_read_only_ones_are_refused(setup, driver, node):
    # row 13: what `ros2 param set` does, on the running node
    (rgb, _, latlon), = render_views(setup, [(0.55, 0.4)])
    pub = driver.node.create_publisher(Image, CAMERA, 10)
    try:
        ok, reason = driver.set_param("estimator.min_score", 0.999)
        assert ok, reason
        assert driver.get_param("estimator.min_score").double_value == pytest.approx(0.999)
        no_fix = publish_until(driver, pub, image_msg(rgb, T0 + 600), T0 + 600, node)
        assert no_fix.status.status == NavSatStatus.STATUS_NO_FIX
        assert "min_score 0.999" in wait(lambda: "min_score" in driver.diag_values().get("last_reason", "")
                                         and driver.diag_values()["last_reason"], 10, "the reason")
        assert driver.set_param("estimator.min_score", 0.3)[0]
        ok, reason = driver.set_param("node.publish_fix_raw", False)
        assert ok, reason
        fix = publish_until(driver, pub, image_msg(rgb, T0 + 610), T0 + 610, node)
        _check_fix_at(fix, latlon)
        time.sleep(1.0)
        assert driver.stamped("fix_raw", T0 + 610) == []  # output switched off
        assert driver.set_param("node.publish_fix_raw", True)[0]
        # refused: read-only, out of range, not one of the choices; nothing changes
        ok, reason = driver.set_param("model.backend", "torch")
        assert not ok and "read-only" in reason
        ok, reason = driver.set_param("estimator.min_score", 5.0)
        assert not ok
        ok, reason = driver.set_param("node.image_transport", "mjpeg")
        assert not ok and "node.image_transport" in reason and "raw, compressed" in reason
        assert driver.get_param("estimator.min_score").double_value == pytest.approx(0.3)
        assert driver.get_param("model.backend").string_value == "auto"
    finally:
        driver.set_param("estimator.min_score", 0.3)
        driver.set_param("node.publish_fix_raw", True)
        driver.node.destroy_publisher(pub)


@pytest.mark.slow
def test_qos_overrides_per_topic(setup, driver, tmp_path):
    # row 2: the camera forced reliable through the ROS 2 override, and a best-effort IMU driver still heard; a
    # best-effort camera is then incompatible, and the node says which topic and which override
    proc = NodeProcess(setup, tmp_path, ["-r", "image:=/cam2/image", "-r", "__node:=localize_node_qos",
                                         "-p", "qos_overrides./cam2/image.subscription.reliability:=reliable"])
    imu_pub = driver.node.create_publisher(Imu, "/imu", qos_profile_sensor_data)
    cam_pub = driver.node.create_publisher(Image, "/cam2/image", qos_profile_sensor_data)
    try:
        wait(lambda: driver.node.count_subscribers("/cam2/image") > 0, 120, "the node's camera subscription", proc)
        imu = Imu()
        imu.orientation.w = 1.0

        def imu_heard():
            imu_pub.publish(imu)
            with driver.lock:
                mine = [d for d in driver.got["diag"] if d.status and "localize_node_qos" in d.status[0].name]
            values = {kv.key: kv.value for kv in mine[-1].status[0].values} if mine else {}
            return int(values.get("imu_received", 0)) > 0 and values
        values = wait(imu_heard, 30, "the best-effort IMU", proc)
        assert values["image_reliability"] == "reliable"
        wait(lambda: "/cam2/image: a publisher offers QoS incompatible" in proc.log(), 30,
             "the incompatible-QoS warning", proc)
        assert "qos_overrides./cam2/image.subscription.reliability" in proc.log()
    finally:
        driver.node.destroy_publisher(imu_pub)
        driver.node.destroy_publisher(cam_pub)
        code = proc.stop()
    assert code == 0, proc.log()


@pytest.mark.slow
def test_a_qos_override_for_a_topic_the_node_does_not_have_is_refused(setup, tmp_path):
    # the usual mistake: the unremapped name (/image) while the camera is remapped to /cam/image_raw
    proc = NodeProcess(setup, tmp_path, ["-r", f"image:={CAMERA}",
                                         "-p", "qos_overrides./image.subscription.reliability:=reliable"])
    try:
        proc.proc.wait(120)
    finally:
        proc.stop()
    assert proc.proc.returncode == 2, proc.log()
    log = proc.log()
    assert "qos_overrides./image.subscription.reliability" in log and CAMERA in log
    assert "Traceback" not in log
