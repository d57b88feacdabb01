"""MAVLink2 ``GPS_INPUT`` output for ArduPilot (``GPS_TYPE`` = 14, "MAVLink"), sent over UDP with pymavlink.

Units (MAVLink common.xml): ``lat/lon`` degE7, ``alt`` m (MSL), velocities NED m/s (``vn, ve, vd``; the only NED in
the project, converted from ENU here), accuracies m and m/s, ``yaw`` centidegrees clockwise from north with 0 meaning
"unknown" (north is sent as 36000). ``time_week/time_week_ms`` are GPS time from the UTC stamp (GPS = UTC + 18 leap
seconds since 2017). An unknown altitude (the MSL altitude needs the ground height and the geoid separation, see
:class:`mobilegeo_ros.io.FlightStackFix`) or velocity sets the matching ``ignore_flags`` bits. ``fix_type`` is 3 (3D)
for a fix, even with the altitude ignored (ArduPilot's EKF uses no fix below 3D), and 0 otherwise.
"""

from __future__ import annotations

import math

from . import FlightStackFix, UdpSender

GPS_EPOCH_UNIX_S = 315964800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18  # GPS - UTC since 2017-01-01
WEEK_S = 604800


def gps_week(stamp_s: float) -> tuple[int, int]:
    """UTC Unix seconds -> (GPS week, milliseconds into the week); stamps before the GPS epoch (simulated clocks
    starting at 0) give (0, 0)."""
    gps_ms = max(0, int(round((stamp_s - GPS_EPOCH_UNIX_S + GPS_LEAP_SECONDS) * 1000.0)))
    return gps_ms // (WEEK_S * 1000), gps_ms % (WEEK_S * 1000)


def _dialect():
    from pymavlink.dialects.v20 import ardupilotmega  # MAVLink 2: GPS_INPUT.yaw is an extension field

    return ardupilotmega


def gps_input_fields(fix: FlightStackFix, gps_id: int = 0, uere_m: float = 5.0) -> dict:
    """The ``GPS_INPUT`` field values for a fix (plain dict, for tests and the encoder)."""
    m = _dialect()
    week, week_ms = gps_week(fix.stamp_s)
    flags = m.GPS_INPUT_IGNORE_FLAG_VDOP
    alt = 0.0
    if fix.alt_m is None or not math.isfinite(fix.alt_m):
        flags |= m.GPS_INPUT_IGNORE_FLAG_ALT | m.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    else:
        alt = float(fix.alt_m)
        if fix.sigma_alt_m is None:
            flags |= m.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    vn = ve = 0.0
    if fix.vel_east_mps is None or fix.vel_north_mps is None:
        flags |= m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ | m.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY
    else:
        vn, ve = float(fix.vel_north_mps), float(fix.vel_east_mps)
        if fix.sigma_vel_mps is None:
            flags |= m.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY
    # a camera fix measures no vertical speed
    flags |= m.GPS_INPUT_IGNORE_FLAG_VEL_VERT
    yaw = 0
    if fix.heading_deg is not None and math.isfinite(fix.heading_deg):
        yaw = int(round(fix.heading_deg * 100.0)) % 36000 or 36000
    valid = bool(fix.valid)
    return dict(
        time_usec=max(0, int(round(fix.stamp_s * 1e6))), gps_id=int(gps_id), ignore_flags=int(flags),
        time_week_ms=int(week_ms), time_week=min(int(week), 65535), fix_type=3 if valid else 0,
        lat=int(round(fix.lat * 1e7)) if valid else 0, lon=int(round(fix.lon * 1e7)) if valid else 0,
        alt=alt, hdop=min(max(fix.sigma_h_m / uere_m, 0.1), 99.9) if valid else 99.99, vdop=0.0,
        vn=vn, ve=ve, vd=0.0, speed_accuracy=float(fix.sigma_vel_mps or 0.0),
        horiz_accuracy=float(fix.sigma_h_m) if valid else 0.0, vert_accuracy=float(fix.sigma_alt_m or 0.0),
        satellites_visible=int(fix.satellites) if valid else 0, yaw=yaw,
    )


class MavlinkBridge:
    """Encodes ``GPS_INPUT`` (MAVLink 2) and sends it to one UDP ``host:port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 14550, system_id: int = 1, component_id: int = 220,
                 gps_id: int = 0, uere_m: float = 5.0):
        m = _dialect()
        for name, v, hi in (("system_id", system_id, 255), ("component_id", component_id, 255), ("gps_id", gps_id, 9)):
            if not 0 <= int(v) <= hi:
                raise ValueError(f"mavlink {name}: {v} is outside [0, {hi}]")
        self.mav = m.MAVLink(None, srcSystem=int(system_id), srcComponent=int(component_id))
        self.gps_id, self.uere_m = int(gps_id), float(uere_m)
        self.sender = UdpSender(host, port)
        self.sent = 0

    def encode(self, fix: FlightStackFix) -> bytes:
        msg = self.mav.gps_input_encode(**gps_input_fields(fix, self.gps_id, self.uere_m))
        return bytes(msg.pack(self.mav))

    def send(self, fix: FlightStackFix) -> None:
        self.sender.send(self.encode(fix))
        self.sent += 1

    def close(self) -> None:
        self.sender.close()


__all__ = ["MavlinkBridge", "gps_input_fields", "gps_week"]
