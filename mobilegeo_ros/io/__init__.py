"""Input/output adapters of the pure core: camera image decoding (:mod:`.images`) and flight-stack encoders
(:mod:`.nmea` NMEA 0183, :mod:`.mavlink` MAVLink GPS_INPUT). No rclpy here; submodules are imported on demand so that
optional dependencies (pymavlink, pyserial) are only needed by the bridge that uses them."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class FlightStackFix:
    """What the NMEA and MAVLink bridges send for one localizer output.

    ``stamp_s``: UTC seconds since the Unix epoch (the image stamp). ``valid``: a usable position (else the bridges
    send "no fix"). ``lat, lon``: WGS84 degrees. ``alt_m``: altitude above mean sea level (the geoid), metres, or
    ``None`` when unknown (NMEA GGA and MAVLink GPS_INPUT carry MSL altitudes; the node never sends an ellipsoidal
    height as MSL). ``geoid_separation_m``: height of the geoid above the WGS84 ellipsoid (GGA field 11), metres, or
    ``None`` when unknown. ``sigma_east_m, sigma_north_m``: 1-sigma horizontal errors.
    ``sigma_alt_m``: 1-sigma vertical error or ``None``. ``vel_east_mps, vel_north_mps``: ENU velocity or ``None``;
    ``sigma_vel_mps`` its 1-sigma. ``heading_deg``: compass heading (clockwise from north) or ``None``.
    ``satellites``: the satellite count reported to the flight stack (a camera fix has none; autopilots refuse
    a position with too few, so a fixed plausible number is sent while valid).
    """

    stamp_s: float
    valid: bool
    lat: float = 0.0
    lon: float = 0.0
    alt_m: float | None = None
    geoid_separation_m: float | None = None
    sigma_east_m: float = 0.0
    sigma_north_m: float = 0.0
    sigma_alt_m: float | None = None
    vel_east_mps: float | None = None
    vel_north_mps: float | None = None
    sigma_vel_mps: float | None = None
    heading_deg: float | None = None
    satellites: int = 12

    @property
    def sigma_h_m(self) -> float:
        """1-sigma horizontal error (root mean square of the two axes), metres."""
        return float(((self.sigma_east_m**2 + self.sigma_north_m**2) / 2.0) ** 0.5)


class UdpSender:
    """Sends datagrams to one configured ``host:port`` only (never broadcasts, never replies elsewhere)."""

    def __init__(self, host: str, port: int):
        if not 0 < int(port) < 65536:
            raise ValueError(f"port: {port} is not a UDP port (1..65535)")
        self.address = (socket.gethostbyname(host), int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def close(self) -> None:
        self.sock.close()


class SerialSender:
    """Writes to a serial port (needs the optional ``pyserial`` package)."""

    def __init__(self, device: str, baud: int):
        try:
            import serial  # type: ignore[import-not-found]
        except ImportError:
            raise ValueError(f"serial output to {device!r} needs pyserial (pip install pyserial)") from None
        try:
            self.port = serial.Serial(device, int(baud), timeout=0, write_timeout=0.1)
        except (OSError, ValueError) as e:  # serial.SerialException is an OSError
            raise ValueError(f"cannot open serial port {device!r} at {baud} baud: {e}") from None

    def send(self, data: bytes) -> None:
        self.port.write(data)

    def close(self) -> None:
        self.port.close()


__all__ = ["FlightStackFix", "SerialSender", "UdpSender"]
