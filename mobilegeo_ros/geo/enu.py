"""Local East-North-Up frame anchored at a WGS84 origin (REP-103 ``map`` frame of the node).

All transforms go through a pyproj pipeline: geodetic -> geocentric (``+proj=cart``) -> topocentric
(``+proj=topocentric``, exact rotation about the origin, no map projection distortion).
"""

from __future__ import annotations

import numpy as np
from pyproj import Transformer



class LocalENU:
    """ENU tangent plane at ``(origin_lat, origin_lon, origin_h)`` (degrees, degrees, metres above the WGS84
    ellipsoid). ``e`` points east, ``n`` north, ``u`` up, all in metres."""

    def __init__(self, origin_lat: float, origin_lon: float, origin_h: float = 0.0):
        if not (np.isfinite(origin_lat) and np.isfinite(origin_lon) and np.isfinite(origin_h)):
            raise ValueError(f"LocalENU: origin must be finite, got ({origin_lat}, {origin_lon}, {origin_h})")
        if not -90.0 <= origin_lat <= 90.0:
            raise ValueError(f"LocalENU: origin_lat {origin_lat} is outside [-90, 90] degrees")
        self.origin_lat = float(origin_lat)
        self.origin_lon = float(origin_lon)
        self.origin_h = float(origin_h)
        pipeline = (
            "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
            "+step +proj=cart +ellps=WGS84 "
            f"+step +proj=topocentric +ellps=WGS84 +lat_0={self.origin_lat!r} +lon_0={self.origin_lon!r} "
            f"+h_0={self.origin_h!r}"
        )
        # Coordinate order of the pipeline input is (lon, lat, h): unitconvert/cart take longitude first.
        self._fwd = Transformer.from_pipeline(pipeline)

    def to_enu(self, lat, lon, h=0.0):
        """WGS84 ``lat, lon`` (degrees) and ellipsoidal height ``h`` (m) -> ``(e, n, u)`` metres.

        Scalars give floats; arrays (any broadcastable shapes) give arrays of the broadcast shape.
        """
        lat, lon, h = np.broadcast_arrays(np.asarray(lat, float), np.asarray(lon, float), np.asarray(h, float))
        e, n, u = self._fwd.transform(lon.ravel(), lat.ravel(), h.ravel())
        return self._shape(e, n, u, lat.shape)

    def to_wgs84(self, e, n, u=0.0):
        """``(e, n, u)`` metres -> WGS84 ``(lat, lon, h)`` (degrees, degrees, metres above the ellipsoid)."""
        e, n, u = np.broadcast_arrays(np.asarray(e, float), np.asarray(n, float), np.asarray(u, float))
        lon, lat, h = self._fwd.transform(e.ravel(), n.ravel(), u.ravel(), direction="INVERSE")
        return self._shape(lat, lon, h, e.shape)

    @staticmethod
    def _shape(a, b, c, shape):
        a, b, c = (np.asarray(x, float).reshape(shape) for x in (a, b, c))
        if shape == ():
            return float(a), float(b), float(c)
        return a, b, c

    def __repr__(self) -> str:
        return f"LocalENU(origin_lat={self.origin_lat}, origin_lon={self.origin_lon}, origin_h={self.origin_h})"


__all__ = ["LocalENU"]
