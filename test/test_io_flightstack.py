"""NMEA and MAVLink bridges: datagrams received on a real 127.0.0.1 UDP socket decode (pynmea2 / pymavlink) to the
values that were sent."""

import calendar
import math
import socket

import pynmea2
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2

from mobilegeo_ros.io import FlightStackFix
from mobilegeo_ros.io.mavlink import MavlinkBridge, gps_week
from mobilegeo_ros.io.nmea import NmeaBridge, checksum, sentences

STAMP = calendar.timegm((2024, 6, 30, 13, 45, 7)) + 0.25


@pytest.fixture
def receiver():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    yield s
    s.close()


def _fix(**kw):
    base = dict(stamp_s=STAMP, valid=True, lat=-33.8567891, lon=151.2153456, alt_m=123.4, sigma_east_m=6.0,
                sigma_north_m=8.0, sigma_alt_m=None, vel_east_mps=3.0, vel_north_mps=4.0, sigma_vel_mps=0.5,
                heading_deg=0.0)
    base.update(kw)
    return FlightStackFix(**base)


def _parse_nmea(data):
    lines = data.decode("ascii").split("\r\n")
    assert lines[-1] == ""
    return {m.sentence_type: m for m in (pynmea2.parse(line, check=True) for line in lines[:-1])}


def test_checksum_known_sentence():
    # the classic example from the NMEA documentation
    assert checksum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == "47"


def test_nmea_over_udp_decodes_to_the_fix(receiver):
    bridge = NmeaBridge("127.0.0.1", receiver.getsockname()[1])
    fix = _fix()
    bridge.send(fix)
    data, _ = receiver.recvfrom(4096)
    bridge.close()
    m = _parse_nmea(data)
    assert set(m) == {"GGA", "RMC", "GST"}
    gga, rmc, gst = m["GGA"], m["RMC"], m["GST"]
    assert gga.latitude == pytest.approx(fix.lat, abs=1e-8) and gga.longitude == pytest.approx(fix.lon, abs=1e-8)
    assert gga.gps_qual == 1 and float(gga.altitude) == pytest.approx(123.4) and int(gga.num_sats) == 12
    assert gga.timestamp.strftime("%H%M%S") == "134507" and gga.timestamp.microsecond == 250000
    assert rmc.status == "A" and rmc.datestamp.isoformat() == "2024-06-30"
    assert rmc.latitude == pytest.approx(fix.lat, abs=1e-8)
    assert float(rmc.spd_over_grnd) * 0.514444 == pytest.approx(5.0, abs=0.01)
    assert float(rmc.true_course) == pytest.approx(math.degrees(math.atan2(3, 4)), abs=0.1)
    assert float(gst.std_dev_latitude) == pytest.approx(8.0) and float(gst.std_dev_longitude) == pytest.approx(6.0)
    assert gst.std_dev_altitude in ("", None)


def test_nmea_unknown_altitude_and_no_fix():
    m = _parse_nmea(sentences(_fix(alt_m=None, vel_east_mps=None, vel_north_mps=None)))
    assert m["GGA"].altitude is None and m["GGA"].gps_qual == 1
    assert m["RMC"].spd_over_grnd in (None, "")
    m = _parse_nmea(sentences(FlightStackFix(stamp_s=STAMP, valid=False)))
    assert m["GGA"].gps_qual == 0 and m["RMC"].status == "V" and m["GGA"].lat == ""


def test_nmea_degree_rollover_and_hemispheres():
    m = _parse_nmea(sentences(_fix(lat=47.99999999999, lon=-0.5)))
    assert m["GGA"].latitude == pytest.approx(48.0, abs=1e-8) and m["GGA"].lat_dir == "N"
    assert m["GGA"].longitude == pytest.approx(-0.5, abs=1e-8) and m["GGA"].lon_dir == "W"


def test_gps_week():
    # GPS week 2048 began on Sunday 2019-04-07 (the second rollover); 2024-06-30 is 1911 days = 273 weeks later,
    # and GPS time runs 18 s ahead of UTC
    week, ms = gps_week(calendar.timegm((2024, 6, 30, 0, 0, 0)))
    assert (week, ms) == (2048 + 273, 18000)
    assert gps_week(315964800.0 - 18) == (0, 0)
    assert gps_week(1040.0) == (0, 0)  # simulated clocks start near 0


def _recv_gps_input(receiver):
    data, _ = receiver.recvfrom(4096)
    assert data[0] == 0xFD  # MAVLink 2 frame
    parser = mav2.MAVLink(None)
    msgs = parser.parse_buffer(data)
    assert len(msgs) == 1 and msgs[0].get_type() == "GPS_INPUT"
    return msgs[0]


def test_mavlink_gps_input_over_udp(receiver):
    bridge = MavlinkBridge("127.0.0.1", receiver.getsockname()[1], system_id=7, gps_id=1)
    bridge.send(_fix())
    msg = _recv_gps_input(receiver)
    assert msg.get_srcSystem() == 7
    assert msg.lat == round(-33.8567891e7) and msg.lon == round(151.2153456e7)
    assert msg.fix_type == 3 and msg.gps_id == 1 and msg.satellites_visible == 12
    assert msg.alt == pytest.approx(123.4, abs=1e-4)
    assert msg.horiz_accuracy == pytest.approx(math.sqrt((36 + 64) / 2), abs=1e-4)
    assert (msg.vn, msg.ve, msg.vd) == pytest.approx((4.0, 3.0, 0.0))
    assert msg.yaw == 36000  # north, since 0 means unknown
    week, ms = gps_week(STAMP)
    assert (msg.time_week, msg.time_week_ms) == (week, ms) and msg.time_usec == round(STAMP * 1e6)
    f = msg.ignore_flags
    assert not f & mav2.GPS_INPUT_IGNORE_FLAG_ALT and not f & mav2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
    assert f & mav2.GPS_INPUT_IGNORE_FLAG_VEL_VERT and f & mav2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    # unknown altitude, velocity and heading; then no fix
    bridge.send(_fix(alt_m=None, vel_east_mps=None, vel_north_mps=None, heading_deg=None))
    msg = _recv_gps_input(receiver)
    assert msg.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_ALT and msg.ignore_flags & mav2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
    assert msg.yaw == 0
    bridge.send(_fix(heading_deg=271.237))
    assert _recv_gps_input(receiver).yaw == 27124
    bridge.send(FlightStackFix(stamp_s=STAMP, valid=False))
    msg = _recv_gps_input(receiver)
    assert msg.fix_type == 0 and msg.lat == 0 and msg.satellites_visible == 0
    bridge.close()


def test_bridge_argument_errors():
    with pytest.raises(ValueError, match="port"):
        NmeaBridge("127.0.0.1", 0)
    with pytest.raises(ValueError, match="system_id"):
        MavlinkBridge("127.0.0.1", 14550, system_id=300)
    with pytest.raises(ValueError, match="talker"):
        NmeaBridge("127.0.0.1", 9999, talker="GPS")
