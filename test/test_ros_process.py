"""localize_node as a separate process (the console script): images from this process give fixes; SIGINT and
SIGTERM exit 0 without a traceback, also two SIGINTs in quick succession during start-up or once ready (a terminal's
Ctrl-C plus the one ros2 launch forwards); start-up refusals (missing index, bad parameter type, unknown parameter,
out-of-range value, model/index mismatch) exit 2 naming the problem."""

import math
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, NavSatFix, NavSatStatus  # noqa: E402

from mobilegeo_ros.io.images import encode_image  # noqa: E402
from ros_harness import node_command, node_env, spinning_client, wait_for  # noqa: E402
from synthetic_world import render_views, synthetic_setup  # noqa: E402

DOMAIN_ID = 72
# Start-up (imports, model load, index load) to the refusal: measured 40 s on 2 CPU cores shared by four test runs
# (load average 10; HEAD 07e5db1), a few seconds on an idle machine. A node that skipped the refusal fails at this
# bound, not at a long timeout.
MISMATCH_EXIT_S = 60.0




def _params(setup, **extra):
    # the settings that describe the index (tile size, input size, rotations) come from its index.json
    p = {"index_dir": str(setup.index_dir), "qos_overrides./image.subscription.reliability": "reliable"}
    p.update(extra)
    args = ["--ros-args"]
    for k, v in p.items():
        args += ["-p", f"{k}:={v}"]
    return args


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()


def _run(args, timeout=60):
    return subprocess.run(node_command() + args, env=node_env(DOMAIN_ID), capture_output=True, text=True, timeout=timeout)


def test_missing_index_dir_exits_2(tmp_path):
    missing = tmp_path / "no_such_index"
    r = _run(["--ros-args", "-p", f"index_dir:={missing}"])
    assert r.returncode == 2, r.stderr
    assert str(missing) in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("param,match", [
    ("node.window_size:=abc", "node.window_size: wrong type"),
    ("node.window_size:=0", "node.window_size"),
    ("node.no_such_setting:=1", "unknown parameter node.no_such_setting"),
    ("model.backend:=quantum", "model.backend: 'quantum' is not one of"),
    ("map.tile_px:=256", "map.tile_px describes the tile index"),
    ("node.qos_reliable:=true", "node.qos_reliable was removed: QoS is set per topic"),
])
def test_bad_parameters_exit_2(tmp_path, param, match):
    r = _run(["--ros-args", "-p", f"index_dir:={tmp_path}", "-p", param])
    assert r.returncode == 2, r.stderr
    assert match in r.stderr
    assert "Traceback" not in r.stderr


def _other_weights(tmp_path) -> Path:
    """The shipped student with one weight changed: another model identity (its sha256), same architecture."""
    from safetensors.torch import load_file, save_file

    from mobilegeo_ros.model.weights import resolve_default_weights

    tensors = load_file(str(resolve_default_weights("")))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    out = tmp_path / "other_student.safetensors"
    save_file(tensors, str(out))
    return out


def test_model_index_mismatch_exits_2(setup, tmp_path):
    # the index was built with the shipped student; other weights have another identity. The process is polled: a
    # node that skipped the refusal would run on (spin forever) and fail here at the bound, not at a long timeout.
    weights = _other_weights(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.Popen(node_command() + _params(setup, **{"model.weights": str(weights)}), env=node_env(DOMAIN_ID),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and time.monotonic() - t0 < MISMATCH_EXIT_S:
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        running = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert not running, f"the node was still running {MISMATCH_EXIT_S} s after start on a mismatched index:\n{err}"
    assert proc.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "[INFO]" not in ln]  # INFO: "starting: loading ..."
    assert len(lines) == 1, err  # one line naming the problem, no traceback
    assert "start-up refused" in lines[0] and str(setup.index_dir) in lines[0]
    assert "different embedding model" in lines[0] and "weights" in lines[0]
    assert elapsed < MISMATCH_EXIT_S


@pytest.fixture(scope="module")
def client():
    with spinning_client("process_test_client", DOMAIN_ID) as node:
        yield node



@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_node_process_localizes_and_shuts_down_cleanly(setup, client, sig):
    view, _, (lat, lon) = render_views(setup, [(0.55, 0.45)])[0]
    proc = subprocess.Popen(node_command() + _params(setup), env=node_env(DOMAIN_ID), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    fixes = []
    sub = client.create_subscription(NavSatFix, "/localize_node/fix", fixes.append, 10)
    pub = client.create_publisher(Image, "image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    try:
        wait_for(lambda: pub.get_subscription_count() > 0 and client.count_publishers("/localize_node/fix") > 0
              or proc.poll() is not None, 90, "the node's subscription")
        assert proc.poll() is None, proc.communicate()[1]
        f = encode_image(view, "rgb8")
        stamp_sec = 1_700_000_500 + int(sig)

        def got_fix():
            msg = Image(height=f["height"], width=f["width"], encoding="rgb8", step=f["step"], data=f["data"])
            msg.header.stamp = Time(sec=stamp_sec)
            if not any(m.header.stamp.sec == stamp_sec for m in fixes):
                pub.publish(msg)  # again, in case the first arrived before discovery completed both ways
            return next((m for m in fixes if m.header.stamp.sec == stamp_sec), None)

        fix = wait_for(got_fix, 60, "a fix from the node process")
        assert fix.status.status == NavSatStatus.STATUS_FIX
        dlat = (fix.latitude - lat) * 111_320.0
        dlon = (fix.longitude - lon) * 111_320.0 * math.cos(math.radians(lat))
        # refined: measured 0.063 m for this view (HEAD 07e5db1); retrieval alone is 19 m off here (60 m tiles)
        assert math.hypot(dlat, dlon) < 1.0
    finally:
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        client.destroy_subscription(sub)
        client.destroy_publisher(pub)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out


@pytest.mark.parametrize("phase", ["start-up", "ready"])
def test_two_quick_sigints_exit_0_without_traceback(setup, phase):
    """Issue 13 row 10, the node alone: a terminal's Ctrl-C reaches the node and ros2 launch, which forwards another
    SIGINT, so the node gets two in quick succession: while it loads (model, index, warm-up) or once ready. Either
    way it exits 0, says it is shutting down, and no KeyboardInterrupt traceback comes out of the cleanup."""
    proc = subprocess.Popen(node_command() + _params(setup), env=node_env(DOMAIN_ID), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    marker = "starting: loading the index" if phase == "start-up" else "ready: index"
    try:
        wait_for(lambda: any(marker in ln for ln in err) or proc.poll() is not None, 90, marker)
        assert proc.poll() is None, "".join(err)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:  # not communicate(): it would read stderr too, racing the reader thread for the last lines
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    out = proc.stdout.read()
    log = "".join(err)
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log and "Traceback" not in out, log
    said = "SIGINT: shutting down during start-up" if phase == "start-up" else "SIGINT: shutting down"
    assert said in log, log
    if phase == "start-up":
        assert "ready:" not in log  # it was interrupted while starting, not after
