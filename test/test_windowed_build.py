"""Big maps: tiles cut window by window equal whole-raster tiles; the streamed build resumes from its shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobilegeo_ros.config import MapConfig, from_dict
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.geo.tiles import cut_tile, tile_grid
from mobilegeo_ros.geo.windowed import ALIGN_PX, WindowedMap, tile_windows
from mobilegeo_ros.index import TileIndex
from mobilegeo_ros.index.build import build_index, partial_dir
from mobilegeo_ros.model import load_model
from mobilegeo_ros.model.weights import shipped_mobilenetv2_path

SIZES_M = [60.0, 90.0]
TILE_PX = 64


def _compare_tiles(map_path, block_px: int, map_cfg: MapConfig | None = None):
    """Every tile at three rotations, cut from the whole raster and from its window: (max |diff|, share of values
    that differ, the windows, the map's width and height)."""
    whole = read_orthophoto(map_path, map_cfg)
    specs = tile_grid(whole, SIZES_M, 0.5)
    with WindowedMap(map_path, map_cfg) as grid:
        assert (grid.width, grid.height, grid.crs) == (whole.width, whole.height, whole.crs)
        assert grid.transform.almost_equals(whole.transform, 1e-9)
        assert tile_grid(grid, SIZES_M, 0.5) == specs
        windows = tile_windows(grid, specs, TILE_PX, block_px)
        assert [i for w in windows for i in w.tiles] == list(range(len(specs)))  # grid order, each tile once
        worst, differ, total = 0, 0, 0
        for w in windows:
            part = grid.read_window(w.col0, w.row0, w.width, w.height)
            assert part.rgb.shape == (min(w.height, grid.height - w.row0), min(w.width, grid.width - w.col0), 3)
            for i in w.tiles:
                for r in (0.0, 45.0, 137.0):
                    a = cut_tile(whole, specs[i], TILE_PX, r).astype(np.int16)
                    b = cut_tile(part, specs[i], TILE_PX, r).astype(np.int16)
                    worst = max(worst, int(np.abs(a - b).max()))
                    differ += int((a != b).sum())
                    total += a.size
    return worst, differ / total, windows, whole.width, whole.height


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_windowed_tiles_equal_whole_raster_tiles(tmp_path, dtype):
    map_path = write_synthetic_geotiff(tmp_path / "map.tif", 1100, 800, 0.5, seed=4, dtype=dtype)
    worst, share, windows, w, h = _compare_tiles(map_path, block_px=200)
    # Equal up to warpAffine's fixed-point rounding of a shifted affine: at most one grey level, in a few
    # pixels in 10^5 (a window that missed part of a rotated tile or of the pyramid's support differs by
    # hundreds of levels in ~1 % of the values).
    assert worst <= 1 and share < 1e-3
    # Memory: no window holds more than a tile row's band of block_px columns, far less than the map.
    assert len(windows) > 10
    assert all(win.col0 % ALIGN_PX == 0 and win.row0 % ALIGN_PX == 0 for win in windows)
    # pad: the 90 m tile's circumscribed radius (127 px) + the pyramid support; + the origin's alignment
    pad = 90.0 / 0.5 * np.sqrt(0.5) + 8 * 2 + 4
    assert max(win.width for win in windows) <= 200 + 2 * pad + ALIGN_PX
    assert max(win.height for win in windows) <= 2 * pad + ALIGN_PX
    assert max(win.width * win.height for win in windows) < 0.25 * w * h


def test_windowed_geographic_map_is_read_on_the_same_utm_grid(tmp_path):
    # 0.5 m-ish pixels in degrees: reprojected to UTM (a WarpedVRT window by window, rasterio.warp whole)
    map_path = write_synthetic_geotiff(tmp_path / "geo.tif", 500, 400, 5e-6, crs="EPSG:4326", origin_e=-105.1,
                                       origin_n=40.17, seed=2)
    whole = read_orthophoto(map_path)
    specs = tile_grid(whole, SIZES_M, 0.5)
    with WindowedMap(map_path) as grid:
        assert grid.crs == whole.crs and grid.crs.to_epsg() == 32613
        assert (grid.width, grid.height) == (whole.width, whole.height)
        windows = tile_windows(grid, specs, TILE_PX, 150)
        diffs = []
        for w in windows:
            part = grid.read_window(w.col0, w.row0, w.width, w.height)
            for i in w.tiles:
                a = cut_tile(whole, specs[i], TILE_PX, 30.0).astype(np.float32)
                diffs.append(np.abs(a - cut_tile(part, specs[i], TILE_PX, 30.0)).mean())
    # the same bilinear resampling of the same grid, done by GDAL on the window instead of the whole raster
    assert max(diffs) < 2.0


def test_windowed_map_refuses_bad_input(tmp_path):
    from mobilegeo_ros.geo.raster import GeoError

    with pytest.raises(GeoError, match="does not exist"):
        WindowedMap(tmp_path / "missing.tif")
    map_path = write_synthetic_geotiff(tmp_path / "m.tif", 100, 100, 1.0)
    with pytest.raises(GeoError, match="rgb_bands"):
        WindowedMap(map_path, MapConfig(rgb_bands=[1, 2, 9]))
    with WindowedMap(map_path) as grid, pytest.raises(GeoError, match="outside the map"):
        grid.read_window(500, 0, 10, 10)


class CountingModel:
    """The real embedding model, counting the images it embeds."""

    def __init__(self, model):
        self.model, self.images = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def embed(self, images):
        self.images += len(images)
        return self.model.embed(images)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    map_path = write_synthetic_geotiff(root / "map.tif", 360, 300, 1.0, seed=6)  # 5 × 6 tiles of 100 m
    cfg = from_dict({"map": {"tile_sizes_m": [100.0], "overlap": 0.5, "tile_px": TILE_PX},
                     "model": {"input_px": TILE_PX, "weights": str(shipped_mobilenetv2_path()), "batch_size": 8},
                     "index": {"kind": "flat", "rotations": 2}})
    model = load_model(cfg.model)
    whole = TileIndex.load(build_index(map_path, root / "whole", cfg, model, progress=False, block_px=4096))
    return root, map_path, cfg, model, whole


def test_interrupted_build_resumes_from_its_shards(small_build):
    root, map_path, cfg, model, whole = small_build
    out = root / "resumed"
    counting = CountingModel(model)
    # "interrupted" after two shards of ~8 tiles (block_px 100: a window per one or two tiles)
    assert build_index(map_path, out, cfg, counting, progress=False, block_px=100, shard_tiles=8,
                       max_shards=2) is None
    work = partial_dir(out)
    shards = sorted(p.name for p in work.glob("shard-*.npz"))
    assert shards == ["shard-000000.npz", "shard-000001.npz"] and not out.exists()
    plan = json.loads((work / "plan.json").read_text())
    done_tiles = sum(plan["tiles_per_shard"][:2])
    assert counting.images == done_tiles * 2 and plan["shards"] >= 3

    counting.images = 0
    assert build_index(map_path, out, cfg, counting, progress=False, block_px=100, shard_tiles=8) == out
    assert counting.images == (plan["tiles"] - done_tiles) * 2  # only the shards that were missing
    assert not work.exists()
    resumed = TileIndex.load(out, model.identity())
    assert resumed.ntotal == whole.ntotal == 30 * 2
    for name in whole.columns:
        np.testing.assert_array_equal(resumed.columns[name], whole.columns[name], err_msg=name)
    # windows of 100 px instead of one window: the same tiles up to one grey level, so nearly the same vectors
    v_whole = whole.index.reconstruct_n(0, whole.ntotal)
    v_resumed = resumed.index.reconstruct_n(0, resumed.ntotal)
    assert np.min(np.sum(v_whole * v_resumed, axis=1)) > 0.999
    assert resumed.fingerprint == whole.fingerprint


def test_shards_of_another_build_are_discarded(small_build):
    root, map_path, cfg, model, _ = small_build
    out = root / "changed"
    assert build_index(map_path, out, cfg, model, progress=False, block_px=100, shard_tiles=8, max_shards=1) is None
    other = from_dict({**json.loads(json.dumps({"map": vars(cfg.map), "model": vars(cfg.model)})),
                       "index": {"kind": "flat", "rotations": 3}})
    counting = CountingModel(load_model(other.model))
    build_index(map_path, out, other, counting, progress=False, block_px=100, shard_tiles=8)
    assert counting.images == 30 * 3  # nothing reused: the rotations changed
    assert TileIndex.load(out).rotations_per_tile == 3 and not partial_dir(out).exists()
