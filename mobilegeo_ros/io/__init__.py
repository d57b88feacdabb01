"""Input/output adapters of the pure core: camera image decoding (:mod:`.images`) and flight-stack encoders
(:mod:`.nmea` NMEA 0183, :mod:`.mavlink` MAVLink GPS_INPUT). No rclpy here; submodules are imported on demand so that
optional dependencies (pymavlink, pyserial) are only needed by the bridge that uses them."""
