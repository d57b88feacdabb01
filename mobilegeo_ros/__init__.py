"""mobilegeo_ros: camera-only GNSS substitute for drones by cross-view geo-localization.

Pure core subpackages (``geo``, ``model``, ``index``, ``estimator``, ``io``, ``train``, ``eval``) never import rclpy;
the ROS 2 adapter lives in :mod:`mobilegeo_ros.ros`. See docs/architecture.md.
"""

__version__ = "0.1.0"
