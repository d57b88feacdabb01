"""Local ENU frame: origin, known offsets against geodesic distances, round trips, vectorisation."""

import numpy as np
import pytest
from pyproj import Geod

from mobilegeo_ros.geo.enu import LocalENU

GEOD = Geod(ellps="WGS84")


def test_origin_maps_to_zero():
    f = LocalENU(48.137, 11.575, 520.0)
    e, n, u = f.to_enu(48.137, 11.575, 520.0)
    assert abs(e) < 1e-6 and abs(n) < 1e-6 and abs(u) < 1e-6


@pytest.mark.parametrize("az,dist", [(0, 100.0), (90, 250.0), (45, 500.0), (200, 1000.0)])
def test_known_offset_matches_geodesic(az, dist):
    lat0, lon0 = -33.86, 151.21
    lon1, lat1, _ = GEOD.fwd(lon0, lat0, az, dist)
    e, n, u = LocalENU(lat0, lon0).to_enu(lat1, lon1, 0.0)
    # on the tangent plane, horizontal distance and azimuth match the geodesic to mm/cm over a kilometre;
    # the point lies below the plane by about d^2 / (2R)
    assert np.hypot(e, n) == pytest.approx(dist, abs=0.01)
    d_az = (np.degrees(np.arctan2(e, n)) - az + 180.0) % 360.0 - 180.0
    assert abs(d_az) < 1e-4
    assert u == pytest.approx(-dist**2 / (2 * 6.37e6), rel=0.02)


def test_round_trip_vectorised():
    f = LocalENU(35.0, -120.0, 100.0)
    rng = np.random.default_rng(1)
    e, n, u = rng.uniform(-3000, 3000, (2, 50)), rng.uniform(-3000, 3000, (2, 50)), rng.uniform(-50, 300, (2, 50))
    lat, lon, h = f.to_wgs84(e, n, u)
    assert lat.shape == (2, 50)
    e2, n2, u2 = f.to_enu(lat, lon, h)
    np.testing.assert_allclose(e2, e, atol=1e-6)
    np.testing.assert_allclose(n2, n, atol=1e-6)
    np.testing.assert_allclose(u2, u, atol=1e-6)


def test_north_and_east_axes_and_broadcasting():
    f = LocalENU(0.0, 0.0)
    # one microdegree of latitude ~ 0.1106 m north at the equator, of longitude ~ 0.1113 m east
    e, n, _ = f.to_enu(np.array([1e-6, 0.0]), np.array([0.0, 1e-6]))
    assert e[0] == pytest.approx(0.0, abs=1e-6) and n[0] == pytest.approx(0.11057, abs=1e-4)
    assert e[1] == pytest.approx(0.11132, abs=1e-4) and n[1] == pytest.approx(0.0, abs=1e-6)
    lat, lon, h = f.to_wgs84(10.0, 20.0)
    assert isinstance(lat, float) and lat > 0 and lon > 0


def test_bad_origin():
    with pytest.raises(ValueError, match="origin_lat"):
        LocalENU(91.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        LocalENU(float("nan"), 0.0)
