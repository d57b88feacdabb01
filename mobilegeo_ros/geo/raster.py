"""Reading a GeoTIFF orthophoto into an 8-bit RGB image on a north-up, square-pixel, metric grid.

Whatever the input (1-band grey, 3/4-band RGB, 8-band WorldView, uint8/uint16/float, geographic or Web Mercator CRS,
optionally a separate panchromatic band for pansharpening), :func:`read_orthophoto` returns an :class:`Orthophoto`
whose ``rgb`` is ``H×W×3 uint8`` and whose ``crs`` is projected in metres, with an affine ``transform`` that has no
rotation and square pixels of side ``gsd_m`` metres.

Pixel convention (see docs/architecture.md): continuous ``(col, row)``; the centre of pixel (0, 0) is (0.5, 0.5);
``transform * (col, row)`` is the map position ``(easting, northing)`` of that continuous pixel coordinate.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio
import rasterio.errors
import rasterio.transform
import rasterio.warp
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.enums import ColorInterp, Resampling

from mobilegeo_ros.config import MapConfig

MIN_SIZE_PX = 32
"""Rasters smaller than this (either side, pixels) are refused: no tile or view could be cut from them."""

_MAX_STAT_SAMPLES = 1_000_000
"""Valid pixels per channel used to compute the stretch percentiles (a strided subsample of large rasters)."""


class GeoError(ValueError):
    """A map file or geometric request is invalid; the message names the file (or value) and the problem."""


class MapGeometry:
    """Pixel <-> map <-> WGS84 conversions of a north-up raster grid; a subclass provides ``transform`` (affine),
    ``crs`` (pyproj CRS), ``width``/``height`` (pixels) and a ``_cache`` dict. Shared by :class:`Orthophoto` (pixels
    in memory) and :class:`~mobilegeo_ros.geo.windowed.WindowedMap` (pixels read block by block)."""

    transform: Affine
    crs: CRS
    _cache: dict[str, Any]

    @property
    def max_pyramid_level(self) -> int:
        """Deepest pyramid level whose image is still at least 16 pixels on its short side."""
        return max(0, int(math.floor(math.log2(min(self.width, self.height) / 16))))

    def level_shape(self, level: int) -> tuple[int, int]:
        """``(H, W)`` in pixels of pyramid ``level`` (each ``cv2.pyrDown`` halves a side, rounding up)."""
        h, w = self.height, self.width
        for _ in range(level):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    @staticmethod
    def pyramid_to_base(level: int) -> np.ndarray:
        """3×3 matrix: continuous pixel ``(col, row, 1)`` of pyramid ``level`` -> continuous pixel of level 0.

        ``cv2.pyrDown`` keeps source pixel ``2i`` as output pixel ``i`` (pixel centres), so with centres at +0.5 a
        level-1 coordinate ``x1`` is the level-0 coordinate ``2*x1 - 0.5``; composed over levels this is
        ``s*x - (s-1)/2`` with ``s = 2**level``.
        """
        s = float(2**level)
        off = -(s - 1.0) / 2.0
        return np.array([[s, 0.0, off], [0.0, s, off], [0.0, 0.0, 1.0]])

    def pixel_to_map_matrix(self) -> np.ndarray:
        """3×3 matrix of :attr:`transform` (continuous pixel ``(col, row, 1)`` -> ``(easting, northing, 1)``)."""
        t = self.transform
        return np.array([[t.a, t.b, t.c], [t.d, t.e, t.f], [0.0, 0.0, 1.0]])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in map coordinates (metres)."""
        e, n = self.pixel_to_map(np.array([0.0, self.width, self.width, 0.0]),
                                 np.array([0.0, 0.0, self.height, self.height]))
        return float(e.min()), float(n.min()), float(e.max()), float(n.max())

    def pixel_to_map(self, cols: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel ``(col, row)`` -> map ``(easting, northing)`` in metres; vectorised over arrays."""
        t = self.transform
        c = np.asarray(cols, dtype=np.float64)
        r = np.asarray(rows, dtype=np.float64)
        return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f

    def map_to_pixel(self, e: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map ``(easting, northing)`` in metres -> continuous pixel ``(col, row)``; vectorised over arrays."""
        t = ~self.transform
        x = np.asarray(e, dtype=np.float64)
        y = np.asarray(n, dtype=np.float64)
        return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f

    def _transformer(self, direction: str) -> Transformer:
        key = f"transformer_{direction}"
        if key not in self._cache:
            wgs84 = CRS.from_epsg(4326)
            src, dst = (self.crs, wgs84) if direction == "to_wgs84" else (wgs84, self.crs)
            self._cache[key] = Transformer.from_crs(src, dst, always_xy=True)
        return self._cache[key]

    def map_to_wgs84(self, e: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map ``(easting, northing)`` (metres) -> WGS84 ``(lat, lon)`` in degrees; vectorised over arrays."""
        lon, lat = self._transformer("to_wgs84").transform(np.asarray(e, dtype=np.float64),
                                                           np.asarray(n, dtype=np.float64))
        return np.asarray(lat), np.asarray(lon)

    def wgs84_to_map(self, lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 ``(lat, lon)`` in degrees -> map ``(easting, northing)`` in metres; vectorised over arrays."""
        e, n = self._transformer("from_wgs84").transform(np.asarray(lon, dtype=np.float64),
                                                         np.asarray(lat, dtype=np.float64))
        return np.asarray(e), np.asarray(n)


@dataclass(eq=False)
class Orthophoto(MapGeometry):
    """An RGB orthophoto on a north-up, square-pixel grid of a projected metric CRS.

    Attributes:
        rgb: ``H×W×3 uint8`` image, row 0 is the northern edge.
        transform: affine pixel -> map transform (continuous ``(col, row)`` -> ``(easting, northing)``, metres).
        crs: the projected CRS of the map coordinates (unit: metre).
        gsd_m: ground sample distance, metres per pixel.
        path: the file it was read from (``None`` for in-memory images).
    """

    rgb: np.ndarray
    transform: Affine
    crs: CRS
    gsd_m: float
    path: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise GeoError(f"Orthophoto.rgb must be an H×W×3 uint8 array, got {self.rgb.shape} {self.rgb.dtype}")
        self.crs = CRS.from_user_input(self.crs)
        self.path = Path(self.path) if self.path is not None else None

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.rgb.shape[0])

    # ----------------------------------------------------------------------------------------------------------------
    # Anti-aliased downscaled copies, shared by tiles.cut_tile and render.render_view.

    def pyramid(self, level: int) -> np.ndarray:
        """The image downscaled ``2**level`` times by repeated ``cv2.pyrDown`` (Gaussian 5-tap low-pass + decimation).

        Computed once per level and cached on this object. Level 0 is ``rgb`` itself. Map the continuous pixel
        coordinates of a level to level 0 with :meth:`pyramid_to_base`.
        """
        if level < 0 or level > self.max_pyramid_level:
            raise GeoError(f"pyramid level {level} is outside [0, {self.max_pyramid_level}]")
        levels: list[np.ndarray] = self._cache.setdefault("pyramid", [self.rgb])
        while len(levels) <= level:
            levels.append(cv2.pyrDown(levels[-1]))
        return levels[level]

    def level_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[x0, x1) × [y0, y1)`` of pyramid ``level`` (clipped to it): ``h×w×3 uint8``, a view into
        :meth:`pyramid` (the same pixels :meth:`~mobilegeo_ros.geo.windowed.WindowedMap.level_window` computes from
        a window of the file)."""
        h, w = self.level_shape(level)
        return self.pyramid(level)[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]

# --------------------------------------------------------------------------------------------------------------------
# Reading


def _is_georeferenced(transform: Affine, crs: Any) -> bool:
    return crs is not None and transform is not None and not transform.almost_equals(Affine.identity())


def _is_metric_projected(crs: CRS) -> bool:
    """True for a projected CRS in metres that is (close to) true scale; Web Mercator is not (scale 1/cos(lat))."""
    if not crs.is_projected:
        return False
    if crs.to_epsg() in (3857, 3785, 900913) or "pseudo-mercator" in crs.name.lower():
        return False
    units = {(a.unit_name or "").lower() for a in crs.axis_info[:2]}
    return units <= {"metre", "meter", "m"}


def _utm_crs_for(lon: float, lat: float) -> CRS:
    infos = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    if not infos:
        raise GeoError(f"no UTM zone found for lon={lon:.5f}, lat={lat:.5f}")
    return CRS.from_authority(infos[0].auth_name, infos[0].code)


def _guess_rgb_bands(src: rasterio.io.DatasetReader, name: str) -> list[int]:
    """1-based band numbers to use as R, G, B (a single band repeated for grey)."""
    interp = list(src.colorinterp)
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    count = src.count
    if count in (1, 2):  # grey, or grey + alpha
        return [1, 1, 1]
    if count == 3:
        return [1, 2, 3]
    if count == 4:  # 4-band multispectral (WorldView/GeoEye/Pleiades order: B, G, R, NIR)
        return [3, 2, 1]
    if count == 8:  # WorldView-2/3: coastal, blue, green, yellow, red, red-edge, NIR1, NIR2
        return [5, 3, 2]
    raise GeoError(f"{name}: cannot guess which of its {count} bands are red, green and blue; "
                   "set map.rgb_bands, e.g. [3, 2, 1]")


def _open(path: Path, role: str = "orthophoto") -> rasterio.io.DatasetReader:
    if not path.exists():
        raise GeoError(f"{role} {str(path)!r} does not exist")
    if not path.is_file():
        raise GeoError(f"{role} {str(path)!r} is not a file")
    try:
        with warnings.catch_warnings():
            # A missing geotransform is reported by _check_georef as a GeoError naming the file; rasterio's own
            # warning would only duplicate it on stderr.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioError as e:
        raise GeoError(f"{role} {str(path)!r} is not a readable raster (GeoTIFF expected): {e}") from None


def _check_georef(src: rasterio.io.DatasetReader, path: Path, role: str) -> None:
    if not _is_georeferenced(src.transform, src.crs):
        what = "no CRS" if src.crs is None else "no geotransform"
        raise GeoError(f"{role} {str(path)!r} is not georeferenced ({what}); a GeoTIFF with a CRS and an affine "
                       "geotransform is required (e.g. gdalwarp it first)")
    if src.width < MIN_SIZE_PX or src.height < MIN_SIZE_PX:
        raise GeoError(f"{role} {str(path)!r} is {src.width}×{src.height} pixels; at least "
                       f"{MIN_SIZE_PX}×{MIN_SIZE_PX} is needed")


def _read_bands(src: rasterio.io.DatasetReader, bands: list[int], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(3×H×W array in the file's dtype, H×W bool valid mask)``; invalid = nodata, alpha 0 or non-finite."""
    if any(b < 1 or b > src.count for b in bands):
        raise GeoError(f"orthophoto {str(path)!r} has {src.count} bands; map.rgb_bands {bands} is out of range")
    try:
        data = src.read(bands)
        valid = src.dataset_mask() > 0
    except rasterio.errors.RasterioError as e:
        raise GeoError(f"orthophoto {str(path)!r} could not be read: {e}") from None
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def stretch_limits(data: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]
                   ) -> list[tuple[float, float]] | None:
    """Per-channel ``(low, high)`` values of ``C×H×W`` data at the low/high ``percentiles`` of its valid pixels (a
    strided subsample of at most ~1 M per channel); None when no pixel is valid."""
    lo_p, hi_p = percentiles
    flat_valid = valid.ravel()
    n_valid = int(flat_valid.sum())
    if n_valid == 0:
        return None
    step = max(1, n_valid // _MAX_STAT_SAMPLES)
    limits = []
    for c in range(data.shape[0]):
        samples = data[c].ravel()[flat_valid][::step].astype(np.float64)
        lo, hi = np.percentile(samples, [lo_p, hi_p])
        limits.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return limits


def stretch_to_uint8(data: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float],
                     limits: list[tuple[float, float]] | None = None) -> np.ndarray:
    """Per-channel linear stretch of ``C×H×W`` data so the low/high percentiles of valid pixels map to 0/255.

    ``limits``: per-channel ``(low, high)`` values to use instead (:func:`stretch_limits` of the whole map when
    ``data`` is one window of it). Returns ``H×W×C uint8``; invalid pixels are 0.
    """
    out = np.zeros(data.shape[1:] + (data.shape[0],), dtype=np.uint8)
    if limits is None:
        limits = stretch_limits(data, valid, percentiles)
        if limits is None:
            return out
    for c in range(data.shape[0]):
        chan = data[c]
        lo, hi = limits[c]
        scaled = (chan.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        np.clip(scaled, 0, 255, out=scaled)
        scaled[~valid] = 0
        out[..., c] = (scaled + 0.5).astype(np.uint8)
    return out


def _outside(src_transform: Affine, src_w: int, src_h: int, dst_transform: Affine, dst_shape: tuple[int, int]
             ) -> np.ndarray:
    """Mask of destination pixels whose centre falls outside the source raster (same CRS)."""
    h, w = dst_shape
    t = ~src_transform @ dst_transform
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5, sparse=True)
    sc = t.a * cols + t.b * rows + t.c
    sr = t.d * cols + t.e * rows + t.f
    return (sc < 0) | (sc > src_w) | (sr < 0) | (sr > src_h)


def _brovey(ms: np.ndarray, ms_valid: np.ndarray, src: rasterio.io.DatasetReader, pan_path: Path
            ) -> tuple[np.ndarray, np.ndarray, Affine, CRS]:
    """Brovey pansharpening: resample the 3 MS bands bilinearly onto the PAN grid, multiply by PAN / mean(MS).

    Returns ``(3×Hp×Wp float32, Hp×Wp valid mask, PAN transform, PAN crs)``.
    """
    with _open(pan_path, "panchromatic image") as pan_src:
        _check_georef(pan_src, pan_path, "panchromatic image")
        try:
            pan = pan_src.read(1).astype(np.float32)
            pan_valid = pan_src.dataset_mask() > 0
        except rasterio.errors.RasterioError as e:
            raise GeoError(f"panchromatic image {str(pan_path)!r} could not be read: {e}") from None
        dst_transform, dst_crs, shape = pan_src.transform, pan_src.crs, (pan_src.height, pan_src.width)
    ms_f = ms.astype(np.float32)
    ms_f[:, ~ms_valid] = np.nan
    sharp = np.full((3,) + shape, np.nan, dtype=np.float32)
    if CRS.from_user_input(src.crs) == CRS.from_user_input(dst_crs):
        # Same CRS (the usual PAN/MS bundle): the resampling is one affine map, ~10x faster in OpenCV than GDAL.
        # PAN pixel index -> MS pixel index, with the project's +0.5 pixel-centre convention on both sides.
        t = ~src.transform @ dst_transform
        m = np.array([[t.a, t.b, t.c], [t.d, t.e, t.f], [0.0, 0.0, 1.0]])
        shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
        idx = (np.linalg.inv(shift) @ m @ shift)[:2]
        for c in range(3):
            cv2.warpAffine(ms_f[c], idx, (shape[1], shape[0]), dst=sharp[c],
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        outside = _outside(src.transform, src.width, src.height, dst_transform, shape)
        sharp[:, outside] = np.nan
    else:
        for c in range(3):
            rasterio.warp.reproject(ms_f[c], sharp[c], src_transform=src.transform, src_crs=src.crs,
                                    dst_transform=dst_transform, dst_crs=dst_crs, resampling=Resampling.bilinear,
                                    src_nodata=np.nan, dst_nodata=np.nan)
    mean = sharp.mean(axis=0)
    valid = pan_valid & np.isfinite(pan) & np.isfinite(mean) & (mean > 0)
    ratio = np.where(valid, pan / np.where(valid, mean, 1.0), 0.0).astype(np.float32)
    sharp *= ratio[None]
    sharp[:, ~valid] = 0.0
    return sharp, valid, dst_transform, CRS.from_user_input(dst_crs)


def north_up_metric_grid(transform: Affine, crs: CRS, width: int, height: int, target_crs: CRS | None = None
                         ) -> tuple[Affine, CRS, int, int] | None:
    """The north-up, square-pixel grid of a metric CRS that a ``width×height`` raster on ``transform``/``crs`` is
    resampled onto: ``(transform, crs, width, height)``, or None when the raster already is on such a grid. A
    non-metric CRS (geographic, Web Mercator) becomes the local UTM zone, or ``target_crs`` when given (a metric CRS:
    the other files of a map of several files); the pixel area is kept."""
    crs = CRS.from_user_input(crs)
    target = CRS.from_user_input(target_crs) if target_crs is not None else None
    if target is not None and not _is_metric_projected(target):
        raise GeoError(f"target CRS {target.name!r} is not a projected CRS in metres")
    north_up_square = (abs(transform.b) < 1e-12 and abs(transform.d) < 1e-12 and transform.a > 0 and transform.e < 0
                       and abs(abs(transform.a) - abs(transform.e)) <= 1e-6 * abs(transform.a))
    if _is_metric_projected(crs) and north_up_square and (target is None or target == crs):
        return None
    dst_crs = crs if target is None else target
    if target is None and not _is_metric_projected(crs):
        to_ll = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
        cx, cy = transform @ (width / 2.0, height / 2.0)
        lon, lat = to_ll.transform(cx, cy)
        dst_crs = _utm_crs_for(float(lon), float(lat))
    left, bottom, right, top = rasterio.transform.array_bounds(height, width, transform)
    with warnings.catch_warnings():
        # rasterio 1.4 still uses affine's deprecated `*` internally; not actionable here.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        dst_t, _, _ = rasterio.warp.calculate_default_transform(crs, dst_crs, width, height, left, bottom, right,
                                                                top)
        res = math.sqrt(abs(dst_t.a * dst_t.e - dst_t.b * dst_t.d))  # square pixels of the same area
        dst_t, dst_w, dst_h = rasterio.warp.calculate_default_transform(crs, dst_crs, width, height, left, bottom,
                                                                        right, top, resolution=res)
    return dst_t, CRS.from_user_input(dst_crs), int(dst_w), int(dst_h)


def _to_north_up_metric(rgb: np.ndarray, valid: np.ndarray, transform: Affine, crs: CRS
                        ) -> tuple[np.ndarray, Affine, CRS]:
    """Reproject to the local UTM zone (non-metric CRS) and/or resample to a north-up square-pixel grid."""
    h, w = rgb.shape[:2]
    grid = north_up_metric_grid(transform, crs, w, h)
    if grid is None:
        return rgb, transform, crs
    dst_t, dst_crs, dst_w, dst_h = grid
    src = np.moveaxis(rgb, 2, 0).copy()
    src[:, ~valid] = 0
    out = np.zeros((3, dst_h, dst_w), dtype=np.uint8)
    for c in range(3):
        rasterio.warp.reproject(src[c], out[c], src_transform=transform, src_crs=crs, dst_transform=dst_t,
                                dst_crs=dst_crs, resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0)
    return np.ascontiguousarray(np.moveaxis(out, 0, 2)), dst_t, dst_crs


def read_orthophoto(path: str | Path, map_cfg: MapConfig | None = None) -> Orthophoto:
    """Read a GeoTIFF orthophoto as an :class:`Orthophoto` (RGB uint8, north-up, square pixels, metric CRS).

    Band choice: ``map_cfg.rgb_bands`` (1-based) if set, else the file's red/green/blue colour interpretation, else
    by band count (1: grey, 3: 1,2,3, 4: 3,2,1, 8-band WorldView: 5,3,2). Non-uint8 data is stretched per channel
    to uint8 between the ``map_cfg.stretch_percentiles`` of its valid (not nodata) pixels. With
    ``map_cfg.pansharpen_with`` the selected bands are Brovey-pansharpened onto that panchromatic GeoTIFF's grid
    first. Geographic and Web Mercator rasters are reprojected to the local UTM zone.

    Raises:
        GeoError: missing, unreadable or non-georeferenced file, too small (< 32×32 px), bad band selection.
    """
    cfg = map_cfg if map_cfg is not None else MapConfig()
    path = Path(path)
    with _open(path) as src:
        _check_georef(src, path, "orthophoto")
        bands = list(cfg.rgb_bands) if cfg.rgb_bands else _guess_rgb_bands(src, f"orthophoto {str(path)!r}")
        data, valid = _read_bands(src, bands, path)
        transform, crs = src.transform, CRS.from_user_input(src.crs)
        if cfg.pansharpen_with:
            data, valid, transform, crs = _brovey(data, valid, src, Path(cfg.pansharpen_with))
    lo, hi = cfg.stretch_percentiles
    if data.dtype == np.uint8:
        rgb = np.ascontiguousarray(np.moveaxis(data, 0, 2))
        rgb[~valid] = 0
    else:
        rgb = stretch_to_uint8(data, valid, (float(lo), float(hi)))
    rgb, transform, crs = _to_north_up_metric(rgb, valid, transform, crs)
    if rgb.shape[0] < MIN_SIZE_PX or rgb.shape[1] < MIN_SIZE_PX:
        raise GeoError(f"orthophoto {str(path)!r} is {rgb.shape[1]}×{rgb.shape[0]} pixels after reprojection; "
                       f"at least {MIN_SIZE_PX}×{MIN_SIZE_PX} is needed")
    return Orthophoto(rgb=rgb, transform=transform, crs=crs, gsd_m=float(abs(transform.a)), path=path)


def resample_to(ortho: Orthophoto, target: Orthophoto) -> Orthophoto:
    """``ortho`` resampled bilinearly onto ``target``'s grid (CRS, transform, size); uncovered pixels are black."""
    src = np.moveaxis(ortho.rgb, 2, 0)
    out = np.zeros((3, target.height, target.width), dtype=np.uint8)
    for c in range(3):
        rasterio.warp.reproject(np.ascontiguousarray(src[c]), out[c], src_transform=ortho.transform,
                                src_crs=ortho.crs, dst_transform=target.transform, dst_crs=target.crs,
                                resampling=Resampling.bilinear, src_nodata=None, dst_nodata=0)
    return dataclasses.replace(ortho, rgb=np.ascontiguousarray(np.moveaxis(out, 0, 2)), transform=target.transform,
                               crs=target.crs, gsd_m=target.gsd_m)


__all__ = ["GeoError", "MIN_SIZE_PX", "MapGeometry", "Orthophoto", "north_up_metric_grid", "read_orthophoto", "resample_to",
           "stretch_limits", "stretch_to_uint8"]
