"""Start the mobilegeo_ros localize_node.

    ros2 launch mobilegeo_ros localize.launch.py index_dir:=/path/to/index [config_file:=my.yaml] [model:=w.safetensors]
        [backend:=auto|torch|onnxruntime|tensorrt] [namespace:=drone1] [image_topic:=/camera/image_raw]
        [image_transport:=raw|compressed] [use_sim_time:=true]

config_file defaults to the installed share/mobilegeo_ros/config/localize.yaml; the node loads it with the same loader
as the CLI and the other arguments override it. Empty model/backend/image_transport keep the config file's values.
image_topic remaps the node's ``image`` input; the node derives ``<image_topic>/compressed`` (compressed transport)
and the sibling ``camera_info`` from it, as image_transport camera subscribers do.

When the node exits with a non-zero code (2: start-up refused, e.g. a missing index) the launch shuts down and exits
non-zero with one line naming the reason (the node's ``start-up refused: ...`` line, else its last stderr line):
``[ERROR] [launch]: Caught exception in launch (see debug for traceback): localize_node-1 exited with code 2:
start-up refused: ...``. (LaunchService turns an exception raised by an event handler into its return code 1; a
Shutdown action alone would exit 0.) A clean exit (0, e.g. on Ctrl-C) ends the launch with 0.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGS = {
    "config_file": ("", "YAML config (ROS parameter file or nested layout); empty = the installed localize.yaml"),
    "index_dir": ("", "tile index directory (mobilegeo build-index output); required"),
    "model": ("", "model weights file (model.weights); empty = keep the config file's value"),
    "backend": ("", "inference backend auto | torch | onnxruntime | tensorrt (model.backend); empty = keep the "
                    "config's"),
    "namespace": ("", "ROS namespace of the node"),
    "image_topic": ("image", "camera topic remapped to the node's image input (camera_info: its sibling)"),
    "image_transport": ("", "raw | compressed (node.image_transport); empty = keep the config's"),
    "use_sim_time": ("false", "use /clock (rosbag replay)"),
}
#: What the node writes before it exits with code 2 (mobilegeo_ros.ros.node.main).
REFUSED = "start-up refused:"


class NodeExitError(RuntimeError):
    """The node exited with a non-zero code; the message is the one line ros2 launch prints."""


class _ExitReason:
    """Follows the node's stderr: its ``start-up refused: ...`` line, else its last non-empty line."""

    def __init__(self) -> None:
        self.refused = self.last = ""
        self._partial = ""

    def on_stderr(self, event) -> None:
        text = self._partial + event.text.decode("utf-8", errors="replace")
        *lines, self._partial = text.split("\n")
        for line in (ln.strip() for ln in lines):
            if REFUSED in line:
                self.refused = line[line.index(REFUSED):]
            if line:
                self.last = line

    def on_exit(self, event, context) -> None:
        if event.returncode == 0:
            return
        reason = self.refused or self.last or self._partial.strip() or "no output on stderr"
        raise NodeExitError(f"{event.process_name} exited with code {event.returncode}: {reason}")


def _node(context, *args, **kwargs):
    value = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    config_file = value["config_file"] or os.path.join(
        get_package_share_directory("mobilegeo_ros"), "config", "localize.yaml")
    params = {"config_file": config_file,
              "use_sim_time": value["use_sim_time"].strip().lower() in ("true", "1", "yes")}
    if value["index_dir"]:
        params["index_dir"] = value["index_dir"]
    if value["model"]:
        params["model.weights"] = value["model"]
    if value["backend"]:
        params["model.backend"] = value["backend"]
    if value["image_transport"]:
        params["node.image_transport"] = value["image_transport"]
    image = value["image_topic"]
    node = Node(
        package="mobilegeo_ros", executable="localize_node", name="localize_node", namespace=value["namespace"],
        output="screen", emulate_tty=False, parameters=[params],
        remappings=[("image", image)],
    )
    reason = _ExitReason()
    return [node,
            RegisterEventHandler(OnProcessIO(target_action=node, on_stderr=reason.on_stderr)),
            RegisterEventHandler(OnProcessExit(target_action=node, on_exit=reason.on_exit))]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGS.items()]
        + [OpaqueFunction(function=_node)]
    )
