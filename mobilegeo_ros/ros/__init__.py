"""ROS 2 adapter: the ``localize_node`` (:mod:`.node`, the only rclpy user) over the pure :mod:`.pipeline`."""
