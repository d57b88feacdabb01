"""Big maps read window by window: the grid of a map file without its pixels, and the windows that tiles are cut from.

:class:`WindowedMap` opens a GeoTIFF (or any raster GDAL reads: a VRT, a COG) and describes the same north-up,
square-pixel, metric grid that :func:`~mobilegeo_ros.geo.raster.read_orthophoto` would return, without reading its
pixels. :meth:`WindowedMap.read_window` reads one rectangle of that grid as an
:class:`~mobilegeo_ros.geo.raster.Orthophoto` whose ``transform`` places it on the map, so
:func:`~mobilegeo_ros.geo.tiles.cut_tile` works on it unchanged. :func:`tile_windows` groups a tile grid into windows
in the grid's own order (level, row, column), each padded so that every rotated copy of its tiles, and the Gaussian
pyramid level it is sampled from, is the same as on the whole raster: a tile cut from its window equals the tile cut
from the whole map (test/test_windowed.py). Memory: one window (about a tile row's height × ``block_px``), whatever
the map's size.

Differences from the whole-raster read: a map in a CRS that is not metric or not north-up is resampled through a GDAL
``WarpedVRT`` (bilinear, on the same grid :func:`~mobilegeo_ros.geo.raster.north_up_metric_grid` gives) before the
8-bit stretch instead of after it; the stretch percentiles of non-8-bit maps come from a decimated read of the whole
map (at most ~1 M pixels) instead of a strided subsample of all of them. Registration reads the map the same way:
:meth:`WindowedMap.level_window` gives the pixels of a pyramid level in a window, equal to the whole map's
(test/test_windowed_registration.py). Pansharpening (``map.pansharpen_with``) is not done window by window:
:func:`opens_windowed` says so and the build reads such maps whole.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
import rasterio.env
import rasterio.errors
import rasterio.windows
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from mobilegeo_ros.config import MapConfig
from mobilegeo_ros.geo.raster import (
    MIN_SIZE_PX,
    GeoError,
    MapGeometry,
    Orthophoto,
    _check_georef,
    _guess_rgb_bands,
    _open,
    north_up_metric_grid,
    stretch_limits,
    stretch_to_uint8,
)
from mobilegeo_ros.geo.tiles import TileSpec, pick_level

#: Window origins are multiples of this many pixels, so the ``cv2.pyrDown`` pyramid of a window lines up with the
#: whole raster's (pixel ``2i`` of a level is pixel ``i`` of the next) up to level 6.
ALIGN_PX = 64
#: Side (pixels) of the decimated read that the stretch percentiles of a non-8-bit map are taken from.
_STATS_SIDE_PX = 1024
#: GDAL's raster block cache, MiB, when ``GDAL_CACHEMAX`` is not set in the environment. GDAL's own default is 5 % of
#: the machine's RAM (1.2 GB on a 24 GB machine), which window-by-window reads fill without needing it: measured on the
#: 100 km² benchmark mosaic, reading it in windows peaked at 1147 MiB RSS with the default and 255 MiB with 128 MiB,
#: in the same time.
GDAL_CACHE_MIB = 128


def _gdal_options() -> dict[str, Any]:
    """GDAL options the reads run under: the block cache capped at :data:`GDAL_CACHE_MIB` unless the user set
    ``GDAL_CACHEMAX`` (then GDAL's own handling applies)."""
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MIB * 2**20}


def opens_windowed(map_cfg: MapConfig) -> bool:
    """Whether maps read with ``map_cfg`` can be read window by window (everything but pansharpening)."""
    return not map_cfg.pansharpen_with


class WindowedMap(MapGeometry):
    """A map file on its north-up metric grid, read one window at a time (see the module docstring).

    Attributes: ``path``, ``width``/``height`` (pixels of the grid), ``transform`` (continuous ``(col, row)`` ->
    ``(easting, northing)`` metres), ``crs`` (projected, metres), ``gsd_m`` (metres per pixel). ``target_crs``: read
    the file on a grid of this metric CRS (at its own resolution) instead of its own, e.g. the CRS of the first
    file of a map made of several. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, map_cfg: MapConfig | None = None, target_crs: CRS | None = None) -> None:
        cfg = map_cfg if map_cfg is not None else MapConfig()
        if not opens_windowed(cfg):
            raise GeoError("map.pansharpen_with: pansharpened maps are read whole (read_orthophoto), not window by "
                           "window")
        self.path = Path(path)
        self._cache: dict[str, Any] = {}
        self._gdal = _gdal_options()
        self._src = _open(self.path)
        self._vrt: WarpedVRT | None = None
        try:
            _check_georef(self._src, self.path, "orthophoto")
            name = f"orthophoto {str(self.path)!r}"
            self.bands = list(cfg.rgb_bands) if cfg.rgb_bands else _guess_rgb_bands(self._src, name)
            if any(b < 1 or b > self._src.count for b in self.bands):
                raise GeoError(f"{name} has {self._src.count} bands; map.rgb_bands {self.bands} is out of range")
            crs = CRS.from_user_input(self._src.crs)
            grid = north_up_metric_grid(self._src.transform, crs, self._src.width, self._src.height, target_crs)
            if grid is None:
                self.transform, self.crs = self._src.transform, crs
                self.width, self.height = self._src.width, self._src.height
                self._reader = self._src
            else:
                self.transform, self.crs, self.width, self.height = grid
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PendingDeprecationWarning)
                    self._vrt = WarpedVRT(self._src, crs=self.crs.to_wkt(), transform=self.transform,
                                          width=self.width, height=self.height, resampling=Resampling.bilinear)
                self._reader = self._vrt
            if self.width < MIN_SIZE_PX or self.height < MIN_SIZE_PX:
                raise GeoError(f"{name} is {self.width}×{self.height} pixels after reprojection; at least "
                               f"{MIN_SIZE_PX}×{MIN_SIZE_PX} is needed")
            self.gsd_m = float(abs(self.transform.a))
            self.dtype = np.dtype(self._src.dtypes[self.bands[0] - 1])
            self._limits = None if self.dtype == np.uint8 else self._stretch_limits(cfg)
        except BaseException:
            self.close()
            raise

    # -- life cycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._vrt is not None:
            self._vrt.close()
            self._vrt = None
        self._src.close()

    def __enter__(self) -> WindowedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------------------
    def _read(self, window: rasterio.windows.Window | None, out_shape: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(3×h×w data in the file's dtype, h×w bool valid mask)`` of a window (None: all, decimated to
        ``out_shape`` with nearest neighbour)."""
        try:
            with rasterio.Env(**self._gdal):
                if out_shape is None:
                    data = self._reader.read(self.bands, window=window)
                    valid = self._reader.dataset_mask(window=window) > 0
                else:
                    data = self._reader.read(self.bands, window=window, out_shape=(3, *out_shape),
                                             resampling=Resampling.nearest)
                    valid = self._reader.dataset_mask(window=window, out_shape=out_shape) > 0
        except rasterio.errors.RasterioError as e:
            raise GeoError(f"orthophoto {str(self.path)!r} could not be read: {e}") from None
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.isfinite(data).all(axis=0)
        return data, valid

    def _stretch_limits(self, cfg: MapConfig) -> list[tuple[float, float]] | None:
        scale = max(1.0, max(self.width, self.height) / _STATS_SIDE_PX)
        shape = (max(1, int(round(self.height / scale))), max(1, int(round(self.width / scale))))
        data, valid = self._read(None, shape)
        lo, hi = cfg.stretch_percentiles
        return stretch_limits(data, valid, (float(lo), float(hi)))

    def read_window(self, col0: int, row0: int, width: int, height: int) -> Orthophoto:
        """Pixels ``[col0, col0+width) × [row0, row0+height)`` of the grid (clipped to it) as an :class:`Orthophoto`
        (8-bit RGB, stretched like the whole map) whose ``transform`` places them on the map."""
        c0, r0 = max(0, int(col0)), max(0, int(row0))
        c1, r1 = min(self.width, int(col0) + int(width)), min(self.height, int(row0) + int(height))
        if c1 <= c0 or r1 <= r0:
            raise GeoError(f"window ({col0}, {row0}, {width}×{height}) px lies outside the map "
                           f"{str(self.path)!r} ({self.width}×{self.height} px)")
        data, valid = self._read(rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0))
        if data.dtype == np.uint8:
            rgb = np.ascontiguousarray(np.moveaxis(data, 0, 2))
            rgb[~valid] = 0
        elif self._limits is None:
            rgb = np.zeros(data.shape[1:] + (3,), np.uint8)
        else:
            rgb = stretch_to_uint8(data, valid, (0.0, 100.0), limits=self._limits)
        return Orthophoto(rgb=rgb, transform=self.transform @ Affine.translation(c0, r0), crs=self.crs,
                          gsd_m=self.gsd_m, path=self.path)

    def level_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[x0, x1) × [y0, y1)`` of pyramid ``level`` (clipped to it): ``h×w×3 uint8``, equal to the same
        pixels of :meth:`~mobilegeo_ros.geo.raster.Orthophoto.pyramid` on the whole map.

        Reads the level-0 window under them, padded by the support of ``level`` repeated ``cv2.pyrDown`` steps
        (each output pixel depends on 5 input pixels, so ``2·(2**level - 1)`` level-0 pixels each side; padded
        more) with its origin on a multiple of ``2**level`` (so pixel ``i`` of a level of the window is pixel
        ``i + origin / 2**level`` of the map's), reduces it ``level`` times and crops. Memory: the level-0 window,
        ``4**level`` times the output's pixels.
        """
        h, w = self.level_shape(level)
        x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))
        if x1 <= x0 or y1 <= y0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        s = 2**level
        pad = 4 * s + 4
        c0, r0 = max(0, (x0 * s - pad) // s * s), max(0, (y0 * s - pad) // s * s)
        c1, r1 = min(self.width, x1 * s + pad), min(self.height, y1 * s + pad)
        rgb = self.read_window(c0, r0, c1 - c0, r1 - r0).rgb
        for _ in range(level):
            rgb = cv2.pyrDown(rgb)
        ox, oy = c0 // s, r0 // s
        return np.ascontiguousarray(rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox])


@dataclass(frozen=True)
class TileWindow:
    """A window of the map grid and the tiles cut from it: ``col0, row0, width, height`` in pixels of the grid;
    ``tiles`` the indices into the spec list given to :func:`tile_windows` (consecutive, in grid order)."""

    col0: int
    row0: int
    width: int
    height: int
    tiles: tuple[int, ...]


def tile_windows(grid: MapGeometry, specs: Sequence[TileSpec], tile_px: int, block_px: int = 2048
                 ) -> list[TileWindow]:
    """Group ``specs`` (from :func:`~mobilegeo_ros.geo.tiles.tile_grid` on ``grid``) into windows to read.

    Consecutive tiles of one level and one tile row share a window while their centres span at most ``block_px``
    pixels; the window holds every rotated copy's footprint (the circumscribed circle) plus the support of the
    pyramid level :func:`~mobilegeo_ros.geo.tiles.cut_tile` samples, and its origin is aligned to
    :data:`ALIGN_PX`. Windows come in the order of ``specs``, so the tiles cut window by window are in grid order.
    """
    if block_px < 1:
        raise GeoError(f"block_px must be positive, got {block_px}")
    windows: list[TileWindow] = []
    group: list[int] = []

    def flush() -> None:
        if not group:
            return
        cols, rows = grid.map_to_pixel([specs[i].center_e for i in group], [specs[i].center_n for i in group])
        spec = specs[group[0]]
        radius = spec.size_m / grid.gsd_m * math.sqrt(0.5)
        level = pick_level(grid, spec.size_m / tile_px / grid.gsd_m)
        pad = radius + 8.0 * 2**level + 4.0  # pyramid support: ~3 px per level of blur plus bilinear, doubled
        align = max(ALIGN_PX, 2**level)
        c0 = max(0, int(math.floor((float(np.min(cols)) - pad) / align)) * align)
        r0 = max(0, int(math.floor((float(np.min(rows)) - pad) / align)) * align)
        c1 = min(grid.width, int(math.ceil(float(np.max(cols)) + pad)))
        r1 = min(grid.height, int(math.ceil(float(np.max(rows)) + pad)))
        windows.append(TileWindow(c0, r0, c1 - c0, r1 - r0, tuple(group)))
        group.clear()

    first_col = 0.0
    for i, spec in enumerate(specs):
        col, _ = grid.map_to_pixel(spec.center_e, spec.center_n)
        if group:
            prev = specs[group[-1]]
            same_row = prev.level == spec.level and abs(prev.center_n - spec.center_n) < 1e-6 * max(1.0, spec.size_m)
            if not same_row or float(col) - first_col > block_px:
                flush()
        if not group:
            first_col = float(col)
        group.append(i)
    flush()
    return windows


__all__ = ["ALIGN_PX", "TileWindow", "WindowedMap", "opens_windowed", "tile_windows"]
