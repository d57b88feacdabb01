"""NMEA 0183 output (GGA, RMC, GST) for autopilot NMEA GPS drivers (ArduPilot GPS_TYPE 5, PX4 NMEA).

Field choices: quality 1 (GPS fix) when valid else 0; the satellite count and ``HDOP = sigma_h / uere_m`` are
synthetic (a camera fix has neither); GST carries the real 1-sigma latitude/longitude errors (metres) that modern
drivers use as horizontal accuracy. GGA's altitude is above mean sea level and its geoid separation the geoid's height
above the WGS84 ellipsoid (:class:`mobilegeo_ros.io.FlightStackFix`); each field is empty when unknown, never a made-up
0. Latitude/longitude use 7 decimal minutes (~0.2 mm). Times are UTC from the image stamp.
"""

from __future__ import annotations

import datetime as dt
import math

from . import FlightStackFix


def checksum(body: str) -> str:
    """Two hex digits: XOR of the characters between ``$`` and ``*``."""
    c = 0
    for ch in body.encode("ascii"):
        c ^= ch
    return f"{c:02X}"


def _sentence(body: str) -> str:
    return f"${body}*{checksum(body)}\r\n"


def _utc(stamp_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp_s, tz=dt.timezone.utc)


def _hms(t: dt.datetime) -> str:
    return f"{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond // 10000:02d}"


def _latlon(lat: float, lon: float) -> tuple[str, str, str, str]:
    def dm(value: float, deg_digits: int) -> str:
        a = abs(value)
        d = int(a)
        m = (a - d) * 60.0
        if round(m, 7) >= 60.0:  # 59.99999999 rounds up into the next degree
            d, m = d + 1, 0.0
        return f"{d:0{deg_digits}d}{m:010.7f}"

    return dm(lat, 2), ("N" if lat >= 0 else "S"), dm(lon, 3), ("E" if lon >= 0 else "W")


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None or not math.isfinite(x) else format(x, fmt)


def gga(fix: FlightStackFix, talker: str = "GP", uere_m: float = 5.0) -> str:
    t = _utc(fix.stamp_s)
    if not fix.valid:
        return _sentence(f"{talker}GGA,{_hms(t)},,,,,0,00,,,M,,M,,")
    la, ns, lo, ew = _latlon(fix.lat, fix.lon)
    hdop = min(max(fix.sigma_h_m / uere_m, 0.1), 99.9)
    alt = _num(fix.alt_m, ".2f")  # above mean sea level
    sep = _num(fix.geoid_separation_m, ".2f")  # geoid above the WGS84 ellipsoid
    return _sentence(f"{talker}GGA,{_hms(t)},{la},{ns},{lo},{ew},1,{fix.satellites:02d},{hdop:.1f},{alt},M,"
                     f"{sep},M,,")


def rmc(fix: FlightStackFix, talker: str = "GP") -> str:
    t = _utc(fix.stamp_s)
    date = f"{t.day:02d}{t.month:02d}{t.year % 100:02d}"
    if not fix.valid:
        return _sentence(f"{talker}RMC,{_hms(t)},V,,,,,,,{date},,,N")
    la, ns, lo, ew = _latlon(fix.lat, fix.lon)
    speed = course = ""
    if fix.vel_east_mps is not None and fix.vel_north_mps is not None:
        v = math.hypot(fix.vel_east_mps, fix.vel_north_mps)
        speed = f"{v / 0.514444:.2f}"  # knots
        course = f"{math.degrees(math.atan2(fix.vel_east_mps, fix.vel_north_mps)) % 360.0:.1f}"
    return _sentence(f"{talker}RMC,{_hms(t)},A,{la},{ns},{lo},{ew},{speed},{course},{date},,,A")


def gst(fix: FlightStackFix, talker: str = "GP") -> str:
    """GST: RMS, error ellipse (semi-major, semi-minor, orientation) and 1-sigma lat/lon/alt errors, metres."""
    t = _utc(fix.stamp_s)
    if not fix.valid:
        return _sentence(f"{talker}GST,{_hms(t)},,,,,,,")
    se, sn = fix.sigma_east_m, fix.sigma_north_m
    major, minor = max(se, sn), min(se, sn)
    orient = 90.0 if se > sn else 0.0  # orientation of the semi-major axis, degrees from true north
    return _sentence(f"{talker}GST,{_hms(t)},{fix.sigma_h_m:.2f},{major:.2f},{minor:.2f},{orient:.1f},"
                     f"{sn:.2f},{se:.2f},{_num(fix.sigma_alt_m, '.2f')}")


def sentences(fix: FlightStackFix, talker: str = "GP", uere_m: float = 5.0) -> bytes:
    """GGA + RMC + GST for one fix, as the bytes of one datagram / serial write."""
    return (gga(fix, talker, uere_m) + rmc(fix, talker) + gst(fix, talker)).encode("ascii")


class NmeaBridge:
    """Sends :func:`sentences` to one UDP ``host:port`` or, when ``serial_device`` is set, to that serial port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 25100, serial_device: str = "", baud: int = 115200,
                 talker: str = "GP", uere_m: float = 5.0):
        from . import SerialSender, UdpSender

        if len(talker) != 2 or not talker.isalpha():
            raise ValueError(f"nmea talker: {talker!r} must be two letters (GP, GN)")
        self.talker, self.uere_m = talker.upper(), float(uere_m)
        self.sender = SerialSender(serial_device, baud) if serial_device else UdpSender(host, port)
        self.sent = 0

    def send(self, fix: FlightStackFix) -> None:
        self.sender.send(sentences(fix, self.talker, self.uere_m))
        self.sent += 1

    def close(self) -> None:
        self.sender.close()


__all__ = ["NmeaBridge", "checksum", "gga", "gst", "rmc", "sentences"]
