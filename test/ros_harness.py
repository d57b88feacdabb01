"""What the tests that run localize_node (or ros2 launch / ros2 run) in a process of its own share: the command and
environment that start the node, a bounded wait that fails with the process's output as soon as it dies, signals
reset in a child before exec, and a client node spun in a background thread."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def node_command() -> list[str]:
    """The installed console script when present (as users run it), else the module."""
    script = Path(sys.executable).parent / "localize_node"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mobilegeo_ros.ros.node"]


def node_env(domain_id: int) -> dict:
    """The environment of a node process on ROS domain ``domain_id``; the working tree wins over an installed (possibly
    older) copy of the package."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def wait_for(pred: Callable, timeout: float, what: str, proc=None, output: Callable[[], str] = lambda: "",
             name: str = "the node"):
    """``pred()``'s first truthy value, polled every 50 ms for at most ``timeout`` seconds; AssertionError naming
    ``what`` on timeout, or as soon as ``proc`` (a Popen, optional) has exited, with ``output()`` appended."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{output()}")
        time.sleep(0.05)
    out = output()
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f":\n{out}" if out else ""))


def default_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM unblocked and at their default action. A blocked mask or an ignored
    SIGINT is inherited across exec, and threads started by earlier tests in this pytest process (executors, torch)
    can leave the spawning thread with SIGINT blocked: ros2 launch then never sees the test's Ctrl-C."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def spinning_client(name: str, domain_id: int) -> Iterator:
    """An rclpy node ``name`` in its own context on ``domain_id``, spun by a daemon thread until the block ends."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        thread.join(5)
