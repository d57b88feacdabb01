"""Satellite tiles: a multi-size regular grid of square ground footprints and their (rotated) images.

A tile "rotated by r degrees" is what a nadir camera with yaw r sees over the tile centre: the top edge of the tile
image points at compass heading r (clockwise from north), see docs/architecture.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mobilegeo_ros.config import IndexConfig
from mobilegeo_ros.geo.raster import GeoError, MapGeometry, Orthophoto


@dataclass(frozen=True)
class TileSpec:
    """One square ground footprint.

    Attributes:
        tile_id: consecutive from 0 over the whole grid (all levels).
        level: index into the ``sizes_m`` given to :func:`tile_grid`.
        size_m: side of the square footprint, metres.
        center_e, center_n: centre in the orthophoto's map CRS, metres.
        lat, lon: centre in WGS84 degrees.
    """

    tile_id: int
    level: int
    size_m: float
    center_e: float
    center_n: float
    lat: float
    lon: float


def _axis_centres(extent_px: float, size_px: float, stride_px: float) -> np.ndarray:
    """Centres (continuous pixel coordinate) of a regular 1-D grid of windows fully inside [0, extent_px]."""
    count = int(math.floor((extent_px - size_px) / stride_px + 1e-9)) + 1
    span = size_px + (count - 1) * stride_px
    margin = (extent_px - span) / 2.0
    return margin + size_px / 2.0 + stride_px * np.arange(count)


def tile_grid(ortho: MapGeometry, sizes_m: Sequence[float], overlap: float) -> list[TileSpec]:
    """Regular grids of square tiles, one per footprint size, fully inside the orthophoto.

    For each size ``s`` (metres) the stride is ``s * (1 - overlap)``; the grid is centred so that the margins left
    on opposite sides are equal. Tiles are ordered by level, then row (north to south), then column (west to east).
    Sizes larger than the raster are skipped.

    Raises:
        GeoError: bad ``overlap`` or sizes, or no size fits inside the image.
    """
    if not 0.0 <= overlap < 1.0:
        raise GeoError(f"tile overlap must be in [0, 1), got {overlap}")
    if not sizes_m or any(s <= 0 for s in sizes_m):
        raise GeoError(f"tile sizes must be positive metres, got {list(sizes_m)}")
    specs: list[TileSpec] = []
    for level, size_m in enumerate(sizes_m):
        size_px = size_m / ortho.gsd_m
        if size_px > ortho.width + 1e-6 or size_px > ortho.height + 1e-6:
            continue
        stride_px = size_px * (1.0 - overlap)
        cols = _axis_centres(ortho.width, size_px, stride_px)
        rows = _axis_centres(ortho.height, size_px, stride_px)
        cc, rr = np.meshgrid(cols, rows)
        e, n = ortho.pixel_to_map(cc.ravel(), rr.ravel())
        lat, lon = ortho.map_to_wgs84(e, n)
        start = len(specs)
        specs.extend(TileSpec(tile_id=start + i, level=level, size_m=float(size_m), center_e=float(e[i]),
                              center_n=float(n[i]), lat=float(lat[i]), lon=float(lon[i])) for i in range(e.size))
    if not specs:
        raise GeoError(f"the image {ortho.path or '(in memory)'} ({ortho.width * ortho.gsd_m:.0f} × "
                       f"{ortho.height * ortho.gsd_m:.0f} m) is smaller than a tile (smallest size "
                       f"{min(sizes_m):g} m)")
    return specs


def pick_level(ortho: MapGeometry, scale: float) -> int:
    """Pyramid level for sampling the map at ``scale`` map pixels per output pixel.

    ``floor(log2(scale) + 0.25)``: the residual bilinear downscale stays below ~1.7x on a Gaussian-prefiltered level,
    which keeps aliasing negligible while not blurring more than needed.
    """
    if scale <= 1.0:
        return 0
    return int(min(ortho.max_pyramid_level, max(0, math.floor(math.log2(scale) + 0.25))))


def cut_tile(ortho: Orthophoto, spec: TileSpec, out_px: int, rotation_deg: float = 0.0) -> np.ndarray:
    """The ``out_px×out_px×3 uint8`` image of tile ``spec`` seen by a nadir camera with yaw ``rotation_deg``.

    Output pixel ``(u, v)`` (continuous, centre of the image at ``(out_px/2, out_px/2)``) shows the ground point
    ``centre + m*(u - c)*right + m*(c - v)*up`` with ``m = size_m/out_px`` metres per pixel, ``up`` the compass unit
    vector at heading ``rotation_deg`` (east, north) = (sin r, cos r) and ``right`` = (cos r, -sin r). Sampled
    bilinearly from the pyramid level of the orthophoto that matches the scale (anti-aliased); map borders reflect.
    """
    if out_px < 1:
        raise GeoError(f"tile size in pixels must be positive, got {out_px}")
    m = spec.size_m / out_px
    r = math.radians(rotation_deg)
    c = out_px / 2.0
    # output continuous pixel (u, v, 1) -> map (e, n, 1)
    out_to_map = np.array([[m * math.cos(r), -m * math.sin(r), 0.0],
                           [-m * math.sin(r), -m * math.cos(r), 0.0],
                           [0.0, 0.0, 1.0]])
    out_to_map[0, 2] = spec.center_e - c * (out_to_map[0, 0] + out_to_map[0, 1])
    out_to_map[1, 2] = spec.center_n - c * (out_to_map[1, 0] + out_to_map[1, 1])
    level = pick_level(ortho, m / ortho.gsd_m)
    base_to_level = np.linalg.inv(Orthophoto.pyramid_to_base(level))
    map_to_base = np.linalg.inv(ortho.pixel_to_map_matrix())
    # OpenCV indexes pixel centres at integers, the project convention at +0.5: shift on both sides.
    dst_idx_to_src_idx = (_shift(-0.5) @ base_to_level @ map_to_base @ out_to_map @ _shift(0.5))
    return cv2.warpAffine(ortho.pyramid(level), dst_idx_to_src_idx[:2], (out_px, out_px),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)


def gallery_rotations(index_cfg: IndexConfig) -> list[float]:
    """Rotations (degrees clockwise from north) of the gallery copies of every tile: ``index_cfg.rotations``
    evenly spaced headings from 0 for ``heading == "gallery_rotations"``, else just 0 (north-up tiles)."""
    if index_cfg.heading == "gallery_rotations":
        return [360.0 * i / index_cfg.rotations for i in range(index_cfg.rotations)]
    return [0.0]


def _shift(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


__all__ = ["TileSpec", "cut_tile", "gallery_rotations", "pick_level", "tile_grid"]
