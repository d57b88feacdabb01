"""Ground height above the WGS84 ellipsoid at a WGS84 position: the drone's published altitude is this plus its
height above ground (``sensor_msgs/NavSatFix.altitude`` is an ellipsoidal height).

Sources, first that knows: a DEM GeoTIFF (``node.dem_file``: heights above the WGS84 ellipsoid in metres, band 1, any
CRS; sampled through rasterio, the position transformed with pyproj; bilinear between the four pixel centres around
the point, the containing pixel's value where a neighbour is nodata), then a constant (``node.ground_alt_m``), else
unknown (NaN). A point outside the DEM or on a nodata pixel falls back to the constant.

The DEM must hold ellipsoidal heights: most public DEMs (SRTM, Copernicus GLO-30, ...) are heights above mean sea level
(EGM96/EGM2008); convert them first, e.g. ``gdalwarp -t_srs "EPSG:4326+4979"`` from the compound CRS, or add the geoid
height with PROJ's ``+geoidgrids``.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import rasterio.errors
from pyproj import CRS, Transformer
from rasterio.windows import Window

from mobilegeo_ros.geo.raster import GeoError, _is_georeferenced, _open

#: Band units accepted as metres (an empty unit is taken as metres, the GeoTIFF default).
_METRE_UNITS = {"", "m", "metre", "metres", "meter", "meters"}


class DemFile:
    """Band 1 of a DEM GeoTIFF, sampled at WGS84 points (metres above the WGS84 ellipsoid, NaN where it has none).

    Raises :class:`GeoError` naming the file when it is missing, unreadable, not georeferenced or not in metres.
    Reads a 2×2 window per sample (the file stays open; call :meth:`close`); thread-safe.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._src = src = _open(self.path, "DEM")
        try:
            if not _is_georeferenced(src.transform, src.crs):
                raise GeoError(f"DEM {str(self.path)!r} is not georeferenced (no CRS or no geotransform)")
            units = (src.units[0] or "").strip().lower() if src.units else ""
            if units not in _METRE_UNITS:
                raise GeoError(f"DEM {str(self.path)!r}: heights in {src.units[0]!r}, expected metres")
            self._to_dem = Transformer.from_crs("EPSG:4326", CRS.from_wkt(src.crs.to_wkt()), always_xy=True)
        except Exception:
            src.close()
            raise
        self._inverse = ~src.transform
        self._scale = float(src.scales[0]) if src.scales else 1.0
        self._offset = float(src.offsets[0]) if src.offsets else 0.0
        self.width, self.height = src.width, src.height
        self._lock = threading.Lock()

    def height_at(self, lat: float, lon: float) -> float:
        """Ground height above the WGS84 ellipsoid at ``lat, lon`` (degrees), metres; NaN outside the DEM or on
        nodata."""
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return math.nan
        x, y = self._to_dem.transform(lon, lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            return math.nan
        col, row = self._inverse @ (x, y)  # continuous pixel coordinates: pixel (0, 0)'s centre is (0.5, 0.5)
        if not (0.0 <= col <= self.width and 0.0 <= row <= self.height):
            return math.nan
        u, v = col - 0.5, row - 0.5
        i0, j0 = math.floor(u), math.floor(v)
        fu, fv = u - i0, v - j0
        ci = np.clip([i0, i0 + 1], 0, self.width - 1)
        cj = np.clip([j0, j0 + 1], 0, self.height - 1)
        window = Window(int(ci[0]), int(cj[0]), int(ci[1] - ci[0] + 1), int(cj[1] - cj[0] + 1))
        try:
            with self._lock:
                block = self._src.read(1, window=window, masked=True, out_dtype="float64")
        except rasterio.errors.RasterioError:
            return math.nan  # a damaged block: unknown here, not a failed frame
        values = np.ma.filled(block, np.nan)
        values = values[np.ix_(cj - cj[0], ci - ci[0])]  # 2×2: rows j0, j0+1; columns i0, i0+1 (edges repeated)
        if np.all(np.isfinite(values)):
            top = values[0, 0] * (1 - fu) + values[0, 1] * fu
            bottom = values[1, 0] * (1 - fu) + values[1, 1] * fu
            h = top * (1 - fv) + bottom * fv
        else:
            h = values[int(round(fv)), int(round(fu))]  # the containing pixel (or NaN when it is nodata)
        return float(h * self._scale + self._offset) if math.isfinite(h) else math.nan

    def close(self) -> None:
        with self._lock:
            self._src.close()


class GroundElevation:
    """Ground height above the WGS84 ellipsoid: the DEM where it has a value, else ``constant_m``, else NaN."""

    def __init__(self, dem_path: str | Path | None = None, constant_m: float = math.nan):
        self.dem = DemFile(dem_path) if dem_path else None
        self.constant_m = float(constant_m)

    @classmethod
    def from_config(cls, node_cfg) -> GroundElevation:
        """From ``node.dem_file`` and ``node.ground_alt_m`` (:class:`mobilegeo_ros.config.NodeConfig`)."""
        return cls(node_cfg.dem_file or None, node_cfg.ground_alt_m)

    @property
    def configured(self) -> bool:
        """A DEM or a constant is configured (without either every height is unknown)."""
        return self.dem is not None or math.isfinite(self.constant_m)

    def height_at(self, lat: float, lon: float) -> float:
        """Metres above the WGS84 ellipsoid at ``lat, lon`` (degrees); NaN when unknown."""
        if self.dem is not None:
            h = self.dem.height_at(lat, lon)
            if math.isfinite(h):
                return h
        return self.constant_m

    def close(self) -> None:
        if self.dem is not None:
            self.dem.close()


__all__ = ["DemFile", "GroundElevation"]
