"""Start the mobilegeo_ros localize_node.

    ros2 launch mobilegeo_ros localize.launch.py index_dir:=/path/to/index [config_file:=my.yaml] [model:=w.safetensors]
        [backend:=torch|onnxruntime] [namespace:=drone1] [image_topic:=/camera/image_raw]
        [image_transport:=raw|compressed] [use_sim_time:=true]

config_file defaults to the installed share/mobilegeo_ros/config/localize.yaml; the node loads it with the same loader
as the CLI and the other arguments override it. Empty model/backend/image_transport keep the config file's values.
image_topic remaps the node's ``image`` input; the node derives ``<image_topic>/compressed`` (compressed transport)
and the sibling ``camera_info`` from it, as image_transport camera subscribers do.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGS = {
    "config_file": ("", "YAML config (ROS parameter file or nested layout); empty = the installed localize.yaml"),
    "index_dir": ("", "tile index directory (mobilegeo build-index output); required"),
    "model": ("", "model weights file (model.weights); empty = keep the config file's value"),
    "backend": ("", "inference backend torch | onnxruntime | tensorrt (model.backend); empty = keep the config's"),
    "namespace": ("", "ROS namespace of the node"),
    "image_topic": ("image", "camera topic remapped to the node's image input (camera_info: its sibling)"),
    "image_transport": ("", "raw | compressed (node.image_transport); empty = keep the config's"),
    "use_sim_time": ("false", "use /clock (rosbag replay)"),
}


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
    return [Node(
        package="mobilegeo_ros", executable="localize_node", name="localize_node", namespace=value["namespace"],
        output="screen", emulate_tty=False, parameters=[params],
        remappings=[("image", image)],
    )]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(k, default_value=d, description=h) for k, (d, h) in ARGS.items()]
        + [OpaqueFunction(function=_node)]
    )
