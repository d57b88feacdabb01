"""Issue 13, colcon row: the package built the way ROS users build it, ``colcon build`` in a workspace.

A temporary workspace gets the package sources in ``src/mobilegeo_ros``; ``colcon build`` (ament_python build type
from package.xml, no symlink install) builds it against this venv's ROS 2 wheels; the test then sources
``install/setup.bash``, checks the layout ``ros2`` relies on (the ament resource marker, share/ files, the executable
in lib/mobilegeo_ros) and that the colcon copy is the one found, and starts the node with ``ros2 run mobilegeo_ros
localize_node`` from that install: it warms up, says ready, answers an image published from this process (as a
camera driver would) with a fix at the truth, and Ctrl-C (SIGINT to the process group) ends ``ros2 run`` with 0.

Skips (with the reason) only when colcon (``tools/setup.sh`` installs it) or the ROS 2 launch stack (``ros2``) is
missing.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ros_harness import default_signals, wait_for

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = 73
BIN = Path(sys.executable).parent
#: What setup.py and package.xml need from the source tree (tests, benchmarks, docs and tools are not installed).
SOURCES = ("package.xml", "setup.py", "setup.cfg", "resource", "mobilegeo_ros", "launch", "config", "models",
           "scripts")


def _skip_reason() -> str | None:
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    if shutil.which("colcon", path=path) is None:
        return "colcon is not installed (tools/setup.sh installs colcon-core, colcon-ros, colcon-common-extensions)"
    if shutil.which("ros2", path=path) is None:
        return f"the ros2 command is not installed in {BIN} (../shared/ros/install.sh)"
    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        return f"rclpy is not importable: {e}"
    return None


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), AMENT_PREFIX_PATH=sys.prefix, TMPDIR=str(tmp_path),
               PYTHONUNBUFFERED="1", COLCON_HOME=str(tmp_path / "colcon_home"))
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)  # the colcon install, not this checkout, must provide the package
    env.pop("COLCON_PREFIX_PATH", None)
    return env



@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_colcon_build_then_ros2_run_from_the_install(tmp_path):
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, NavSatFix, NavSatStatus

    from mobilegeo_ros.io.images import encode_image
    from synthetic_world import render_views, synthetic_setup

    ws = tmp_path / "ws"
    pkg_src = ws / "src" / "mobilegeo_ros"
    pkg_src.mkdir(parents=True)
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, pkg_src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, pkg_src / name)
    env = _env(tmp_path)

    # what a ROS user types: colcon build --packages-select mobilegeo_ros
    build = subprocess.run(["colcon", "build", "--packages-select", "mobilegeo_ros"], cwd=ws, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "Summary: 1 package finished" in build.stdout, build.stdout
    prefix = ws / "install" / "mobilegeo_ros"
    share = prefix / "share" / "mobilegeo_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "mobilegeo_ros").is_file()
    for rel in ("package.xml", "launch/localize.launch.py", "config/localize.yaml", "models/student.safetensors"):
        assert (share / rel).is_file(), rel
    exe = prefix / "lib" / "mobilegeo_ros" / "localize_node"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert exe.read_text().startswith("#!") and "bin/../../bin" not in exe.read_text()  # colcon's script, no wrapper

    setup = synthetic_setup(overrides={})  # an index built with the defaults the installed localize.yaml holds
    view, _, (lat, lon) = render_views(setup, [(0.5, 0.5)], altitude_m=110.0)[0]
    script = (f"source {ws / 'install' / 'setup.bash'} && "
              "echo PREFIX=$(ros2 pkg prefix mobilegeo_ros) && "
              "python -c 'import mobilegeo_ros; print(\"MODULE=\" + mobilegeo_ros.__file__)' && "
              "exec ros2 run mobilegeo_ros localize_node --ros-args "
              f"-p index_dir:={setup.index_dir} -p config_file:={share / 'config' / 'localize.yaml'} "
              "-p qos_overrides./image.subscription.reliability:=reliable")
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_signals)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = rclpy.create_node("colcon_test_camera", context=context)
    fixes: list = []
    node.create_subscription(NavSatFix, "/localize_node/fix", fixes.append, 10)
    pub = node.create_publisher(Image, "/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def wait(pred, timeout, what):
        return wait_for(pred, timeout, what, proc, lambda: "".join(lines), name="ros2 run")

    try:
        wait(lambda: any("]: ready: " in ln for ln in lines), 120, "the node's ready line")
        out = "".join(lines)
        # the colcon install is what ros2 found and what Python imported
        assert re.search(rf"^PREFIX={re.escape(str(prefix))}$", out, re.M), out
        module = re.search(r"^MODULE=(.*)$", out, re.M).group(1)
        assert Path(module).resolve().is_relative_to(prefix.resolve()), module
        assert "]: warm-up: " in out, out
        wait(lambda: pub.get_subscription_count() > 0, 30, "the node's image subscription")
        f = encode_image(view, "rgb8")
        stamp = 1_700_005_000
        sent = [0.0]

        def fix_for_image():
            found = next((m for m in fixes if m.header.stamp.sec == stamp), None)
            if found is None and time.monotonic() - sent[0] > 2.0:
                sent[0] = time.monotonic()
                msg = Image(height=f["height"], width=f["width"], encoding="rgb8", step=f["step"], data=f["data"])
                msg.header.stamp = Time(sec=stamp)
                pub.publish(msg)
            return found

        fix = wait(fix_for_image, 60, "a NavSatFix for the published image")
        assert fix.status.status == NavSatStatus.STATUS_FIX
        north = (fix.latitude - lat) * 111_320.0
        east = (fix.longitude - lon) * 111_320.0 * math.cos(math.radians(lat))
        assert math.hypot(north, east) < 1.0, (north, east)  # refined (the launch test's view: 0.009 m)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: ros2 run and the node both get it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(5)
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "Traceback" not in log, log
    assert "]: SIGINT: shutting down" in log, log
