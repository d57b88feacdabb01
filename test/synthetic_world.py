"""Test support for the node (no rclpy): a small synthetic map, its tile index (cached on disk) and rendered views.

The index is cached under the system temp directory, keyed by the configuration and the source of the modules that
produce it (geo, model, index), so the ROS test modules share one build and a code change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilegeo_ros import config as config_mod

PKG = Path(__file__).resolve().parents[1] / "mobilegeo_ros"

#: A 200 m × 200 m map at 0.5 m, 60 m tiles, 4 gallery rotations, 128 px model input: about 100 vectors.
SMALL_MAP = {"width_px": 400, "height_px": 400, "gsd_m": 0.5, "seed": 3}
SMALL_CONFIG = {"map": {"tile_sizes_m": [60.0], "overlap": 0.5, "tile_px": 128}, "model": {"input_px": 128},
                "index": {"rotations": 4}}


@dataclass
class SyntheticSetup:
    map_path: Path
    index_dir: Path
    cfg: config_mod.Config
    overrides: dict  # the nested config dict (also valid as a config_file)


def _source_digest() -> str:
    h = hashlib.sha256()
    for sub in ("geo", "model", "index"):
        for p in sorted((PKG / sub).glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def synthetic_setup(cache_root: str | Path | None = None, map_kw: dict | None = None,
                    overrides: dict | None = None) -> SyntheticSetup:
    """Write (or reuse) a synthetic GeoTIFF and its tile index; returns paths and the matching config."""
    from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
    from mobilegeo_ros.index.build import build_index
    from mobilegeo_ros.model.weights import file_sha256, resolve_default_weights

    map_kw = dict(SMALL_MAP if map_kw is None else map_kw)
    overrides = json.loads(json.dumps(SMALL_CONFIG if overrides is None else overrides))
    cfg = config_mod.from_dict(overrides)
    weights = file_sha256(resolve_default_weights(cfg.model.weights))  # the default model may change (models/)
    key = hashlib.sha256(json.dumps([map_kw, config_mod.to_dict(cfg), _source_digest(), weights], sort_keys=True)
                         .encode()).hexdigest()[:16]
    root = Path(cache_root or tempfile.gettempdir()) / f"mobilegeo_ros_test_{key}"
    map_path, index_dir = root / "map.tif", root / "index"
    if not (index_dir / "index.json").is_file():
        work = root.with_name(f"{root.name}.{uuid.uuid4().hex[:8]}.tmp")
        work.mkdir(parents=True)
        try:
            write_synthetic_geotiff(work / "map.tif", **map_kw)
            build_index(work / "map.tif", work / "index", cfg, progress=False)
            try:
                os.rename(work, root)  # atomic; another process may have won the race
            except OSError:
                pass
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return SyntheticSetup(map_path, index_dir, cfg, overrides)


def render_views(setup: SyntheticSetup, positions_frac: list[tuple[float, float]], altitude_m: float = 60.0,
                 yaw_deg: float = 0.0, size_px: tuple[int, int] = (160, 120), hfov_deg: float = 70.0):
    """Nadir views over the map at fractional positions (0..1 of the map's width/height from the bottom-left).

    Returns ``[(rgb H×W×3 uint8, (easting, northing), (lat, lon))]``.
    """
    from mobilegeo_ros.geo.raster import read_orthophoto
    from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view

    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    left, bottom, right, top = ortho.bounds
    cam = CameraModel(size_px[0], size_px[1], hfov_deg)
    out = []
    for fe, fn in positions_frac:
        e, n = left + fe * (right - left), bottom + fn * (top - bottom)
        img = render_view(ortho, CameraPose(e, n, altitude_m, yaw_deg), cam)
        lat, lon = ortho.map_to_wgs84(e, n)
        out.append((np.ascontiguousarray(img), (e, n), (float(lat), float(lon))))
    return out


__all__ = ["SMALL_CONFIG", "SMALL_MAP", "SyntheticSetup", "render_views", "synthetic_setup"]
