"""Synthetic georeferenced test maps: a textured, non-repetitive "town" written as a real GeoTIFF.

Every test in the project that needs an orthophoto writes one with :func:`write_synthetic_geotiff`. The pattern is
built in metres (feature sizes do not depend on ``gsd_m``): multi-scale colour noise (terrain), coloured blobs
(fields, ponds), roads (thick polylines), rotated rectangles (buildings with shadows) and small dark dots (trees), so
that image retrieval and local feature matching have distinctive structure at every tile size.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine

from mobilegeo_ros.geo.raster import GeoError
from mobilegeo_ros.util.files import atomic_path

_BANDS = (1, 3, 4, 8)
_DTYPES = ("uint8", "uint16", "float32")


def synthetic_rgb(width_px: int, height_px: int, gsd_m: float, seed: int = 0) -> np.ndarray:
    """The synthetic scene as ``H×W×3 float32`` RGB reflectance in [0, 1] (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    w, h = int(width_px), int(height_px)
    px_per_m = 1.0 / gsd_m
    area_m2 = w * h * gsd_m * gsd_m

    # Terrain: colour noise summed over octaves from 300 m to 2 m; coarse octaves carry colour, fine ones texture.
    img = np.zeros((h, w, 3), np.float32)
    base = np.array([0.42, 0.40, 0.30], np.float32)
    for scale_m, amp in ((300.0, 0.16), (90.0, 0.10), (30.0, 0.07), (8.0, 0.05), (2.0, 0.04)):
        gw = max(2, int(math.ceil(w * gsd_m / scale_m)) + 2)
        gh = max(2, int(math.ceil(h * gsd_m / scale_m)) + 2)
        grid = rng.normal(0.0, 1.0, (gh, gw, 3)).astype(np.float32)
        grid[..., :] = 0.6 * grid[..., :1] + 0.4 * grid  # mostly luminance, some hue variation
        up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC if min(gw, gh) >= 4 else cv2.INTER_LINEAR)
        img += amp * up
    img += base

    # Fields and ponds: soft-edged coloured ellipses.
    layer = np.zeros_like(img)
    alpha = np.zeros((h, w), np.float32)
    for _ in range(max(3, int(area_m2 / 70.0**2))):
        center = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (max(1, int(rng.uniform(10, 60) * px_per_m)), max(1, int(rng.uniform(10, 60) * px_per_m)))
        colour = rng.choice(np.array([[0.25, 0.45, 0.20], [0.55, 0.50, 0.30], [0.20, 0.30, 0.45],
                                      [0.60, 0.55, 0.45], [0.35, 0.30, 0.20]], np.float32))
        colour = np.clip(colour + rng.normal(0, 0.05, 3), 0, 1)
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(layer, center, axes, angle, 0, 360, tuple(float(c) for c in colour), -1, cv2.LINE_AA)
        cv2.ellipse(alpha, center, axes, angle, 0, 360, 0.8, -1, cv2.LINE_AA)
    k = max(1, int(3 * px_per_m)) | 1
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)[..., None]
    img = img * (1 - alpha) + layer * alpha

    # Roads: polylines with a few bends, light grey with a darker edge.
    for _ in range(max(2, int(area_m2 / 160.0**2))):
        n_pts = int(rng.integers(2, 5))
        pts = np.stack([rng.uniform(-0.1 * w, 1.1 * w, n_pts), rng.uniform(-0.1 * h, 1.1 * h, n_pts)], 1)
        pts = pts.astype(np.int32).reshape(-1, 1, 2)
        width = max(1, int(rng.uniform(4, 10) * px_per_m))
        grey = float(rng.uniform(0.45, 0.7))
        cv2.polylines(img, [pts], False, (grey * 0.7,) * 3, width + max(1, int(1.5 * px_per_m)), cv2.LINE_AA)
        cv2.polylines(img, [pts], False, (grey, grey, grey * 0.95), width, cv2.LINE_AA)

    # Buildings: rotated rectangles with random roof colours, a cast shadow to the south-east, a ridge line.
    shadow = np.array([0.08, 0.08, 0.10], np.float32)
    for _ in range(max(5, int(area_m2 / 22.0**2))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        bw, bh = rng.uniform(6, 30) * px_per_m, rng.uniform(6, 22) * px_per_m
        angle = float(rng.uniform(0, 180))
        box = cv2.boxPoints(((cx, cy), (bw, bh), angle))
        off = np.array([2.0, 2.0]) * px_per_m
        cv2.fillConvexPoly(img, (box + off).astype(np.int32), tuple(float(c) for c in shadow), cv2.LINE_AA)
        roof = np.clip(rng.choice(np.array([[0.65, 0.30, 0.25], [0.55, 0.55, 0.58], [0.85, 0.85, 0.80],
                                            [0.30, 0.30, 0.35], [0.45, 0.35, 0.25]], np.float32))
                       + rng.normal(0, 0.06, 3), 0, 1)
        cv2.fillConvexPoly(img, box.astype(np.int32), tuple(float(c) for c in roof), cv2.LINE_AA)
        mid_a, mid_b = (box[0] + box[1]) / 2, (box[2] + box[3]) / 2
        cv2.line(img, tuple(int(v) for v in mid_a), tuple(int(v) for v in mid_b),
                 tuple(float(c) * 0.8 for c in roof), max(1, int(0.5 * px_per_m)), cv2.LINE_AA)

    # Trees: small dark-green dots.
    n_trees = max(5, int(area_m2 / 12.0**2))
    xs, ys = rng.uniform(0, w, n_trees), rng.uniform(0, h, n_trees)
    radii = np.maximum(1, (rng.uniform(1.5, 4.0, n_trees) * px_per_m)).astype(int)
    for x, y, r in zip(xs, ys, radii, strict=True):
        g = float(rng.uniform(0.18, 0.32))
        cv2.circle(img, (int(x), int(y)), int(r), (g * 0.6, g, g * 0.5), -1, cv2.LINE_AA)

    return np.clip(img, 0.0, 1.0)


def season_shift(rgb: np.ndarray, amount: float, seed: int = 0) -> np.ndarray:
    """The same scene on "another date": ``H×W×3`` reflectance in [0, 1] → same shape, for domain-shift tests.

    ``amount`` in [0, 1]: green areas turn yellow-brown (vegetation senescence), a global gamma and per-channel
    gain change (sun elevation, sensor), and a low-frequency brightness field (haze, thin clouds) of relative
    amplitude 0.15·amount. Geometry is unchanged, so ground truth positions still hold. 0 returns the input.
    """
    if amount <= 0:
        return rgb
    rng = np.random.default_rng(seed)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    veg = np.clip((g - 0.5 * (r + b)) * 4.0, 0.0, 1.0) * amount
    out = rgb.copy()
    out[..., 0] = r + veg * 0.6 * g
    out[..., 1] = g - veg * 0.15 * g
    out[..., 2] = b - veg * 0.3 * b
    out = np.power(np.clip(out, 0.0, 1.0), 1.0 + 0.3 * amount)
    out = out * (1.0 + amount * rng.uniform(-0.12, 0.12, 3)).astype(np.float32)
    h, w = rgb.shape[:2]
    field = cv2.resize(rng.normal(0.0, 1.0, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    out = out * (1.0 + 0.15 * amount * field[..., None])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _to_bands(rgb: np.ndarray, bands: int) -> np.ndarray:
    """``H×W×3`` reflectance -> ``bands×H×W`` in a realistic sensor band order (see raster._guess_rgb_bands)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    veg = np.clip(g - 0.5 * (r + b) + 0.3, 0, 1)  # a plausible near-infrared: bright over green areas
    if bands == 1:
        return (0.299 * r + 0.587 * g + 0.114 * b)[None]
    if bands == 3:
        return np.stack([r, g, b])
    if bands == 4:  # B, G, R, NIR
        return np.stack([b, g, r, veg])
    # 8-band WorldView: coastal, blue, green, yellow, red, red edge, NIR1, NIR2
    return np.stack([0.8 * b + 0.1, b, g, 0.5 * (r + g), r, 0.5 * (r + veg), veg, 0.9 * veg])


def write_synthetic_geotiff(path: str | Path, width_px: int = 1024, height_px: int = 1024, gsd_m: float = 0.5,
                            crs: str = "EPSG:32613", origin_e: float = 487000.0, origin_n: float = 4444000.0,
                            seed: int = 0, bands: int = 3, dtype: str = "uint8", season: float = 0.0) -> Path:
    """Write a synthetic textured orthophoto GeoTIFF and return its path.

    Args:
        path: output file (written atomically: a temporary file next to it, then renamed).
        width_px, height_px: raster size in pixels.
        gsd_m: pixel size in CRS units (metres for a projected CRS; degrees if ``crs`` is geographic).
        crs: any pyproj/rasterio CRS string; the default is UTM 13N (Longmont, CO).
        origin_e, origin_n: map coordinates of the raster's top-left corner (north-up grid).
        seed: the pattern is a deterministic function of ``seed`` and the size/gsd.
        bands: 1 (grey), 3 (R, G, B), 4 (B, G, R, NIR) or 8 (WorldView order; R, G, B = bands 5, 3, 2).
        dtype: "uint8" (0..255), "uint16" (11-bit DNs 0..2047 like WorldView) or "float32" (reflectance 0..1).
        season: :func:`season_shift` amount: the same scene (same ``seed``) as on another date; 0 = none.
    """
    if bands not in _BANDS:
        raise GeoError(f"write_synthetic_geotiff: bands must be one of {_BANDS}, got {bands}")
    if dtype not in _DTYPES:
        raise GeoError(f"write_synthetic_geotiff: dtype must be one of {_DTYPES}, got {dtype!r}")
    if width_px < 1 or height_px < 1 or gsd_m <= 0:
        raise GeoError(f"write_synthetic_geotiff: bad size {width_px}×{height_px} px or gsd {gsd_m}")
    path = Path(path)
    # For a geographic CRS, gsd_m is in degrees: draw the pattern as if a degree were ~1e5 m of ground.
    pattern_gsd = gsd_m if gsd_m > 1e-3 else gsd_m * 1e5
    data = _to_bands(season_shift(synthetic_rgb(width_px, height_px, pattern_gsd, seed), season, seed + 1), bands)
    if dtype == "uint8":
        out = np.clip(data * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif dtype == "uint16":
        out = np.clip(data * 2047.0 + 0.5, 0, 2047).astype(np.uint16)
    else:
        out = data.astype(np.float32)
    transform = Affine(gsd_m, 0.0, origin_e, 0.0, -gsd_m, origin_n)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=width_px, height=height_px, count=bands, dtype=dtype,
                           crs=crs, transform=transform, compress="deflate", tiled=True) as dst:
            dst.write(out)
    return path


__all__ = ["season_shift", "synthetic_rgb", "write_synthetic_geotiff"]
