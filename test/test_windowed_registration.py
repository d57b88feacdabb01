"""Registration on a map read window by window: the same pixels, keypoints and fix as on the map in memory, with the
map-feature memory bounded by ``refine.map_cache_mib`` and the map file never read whole."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from mobilegeo_ros.config import RefineConfig
from mobilegeo_ros.estimator.refine import CHUNK_BLOCKS, MapFeatures, Refiner
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, image_to_ground, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.geo.windowed import WindowedMap

CAM = CameraModel(320, 240, 60.0)


@pytest.fixture(scope="module")
def map_path(tmp_path_factory):
    # odd sizes: every pyramid level rounds up, so the right and bottom borders are exercised
    return write_synthetic_geotiff(tmp_path_factory.mktemp("wmap") / "map.tif", width_px=1217, height_px=1031,
                                   gsd_m=0.5, seed=4)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_level_window_equals_the_whole_map_pyramid(map_path, level):
    whole = read_orthophoto(map_path)
    with WindowedMap(map_path) as wm:
        assert wm.level_shape(level) == whole.pyramid(level).shape[:2]
        h, w = wm.level_shape(level)
        boxes = [(0, 0, 37, 29), (w // 3, h // 4, w // 3 + 61, h // 4 + 45), (w - 50, h - 40, w, h),
                 (w // 2 + 1, 3, w + 10, 17), (-5, h - 9, 13, h + 4)]
        for x0, y0, x1, y1 in boxes:
            got = wm.level_window(level, x0, y0, x1, y1)
            want = whole.level_window(level, x0, y0, x1, y1)
            assert got.shape == want.shape and got.size > 0
            np.testing.assert_array_equal(got, want, err_msg=f"level {level} box {(x0, y0, x1, y1)}")


def test_windowed_and_in_memory_maps_give_the_same_keypoints(map_path):
    cfg = RefineConfig(matcher="sift", block_features=300)
    whole = MapFeatures(read_orthophoto(map_path), cfg)
    with WindowedMap(map_path) as wm:
        windowed = MapFeatures(wm, cfg)
        for level in (0, 1, 2):
            box = [(0.0, 0.0, 1e6, 1e6)]
            a, b = whole.gather(level, box), windowed.gather(level, box)
            assert len(a) > 200
            np.testing.assert_array_equal(a.xy, b.xy)
            np.testing.assert_array_equal(a.desc, b.desc)


def test_memory_budget_drops_chunks_and_reads_them_back_from_disk(tmp_path):
    path = write_synthetic_geotiff(tmp_path / "big.tif", width_px=2600, height_px=2600, gsd_m=0.5, seed=8)
    cfg = RefineConfig(matcher="orb", block_px=64, block_features=200, map_cache_mib=1.0)
    with WindowedMap(path) as wm:
        mf = MapFeatures(wm, cfg, cache_dir=tmp_path / "cache", map_identity={"sha256": "test"})
        assert mf.chunk_grid(0) == (6, 6)  # 2600 px / (64 px × 8 blocks)
        first = mf.window(0, *wm.pixel_to_map(300, 300), 100.0)
        for col, row in [(1300, 300), (2300, 2300), (300, 2300), (1300, 1300)]:  # walk across the map
            mf.window(0, *wm.pixel_to_map(col, row), 100.0)
            # at most the chunks of the last window (≤ 4 chunks of ≤ 64 blocks) beyond the budget
            assert mf.nbytes <= cfg.map_cache_mib * 2**20 + 4 * CHUNK_BLOCKS**2 * 200 * 60
        computed, loaded = mf.blocks_computed, mf.chunks_loaded
        assert (0, 0, 0) not in mf._chunks  # the first window's chunk was dropped ...
        again = mf.window(0, *wm.pixel_to_map(300, 300), 100.0)
        assert mf.blocks_computed == computed and mf.chunks_loaded == loaded + 1  # ... and read back, not detected
        np.testing.assert_array_equal(first.xy, again.xy)
        np.testing.assert_array_equal(first.desc, again.desc)


def test_registration_on_a_windowed_map_matches_the_in_memory_map_without_reading_it_whole(tmp_path):
    path = write_synthetic_geotiff(tmp_path / "map.tif", width_px=4096, height_px=4096, gsd_m=0.25, seed=11)
    whole = read_orthophoto(path)
    pose = CameraPose(*whole.pixel_to_map(2100, 1900), 120.0, 35.0, 3.0, -2.0)
    image = render_view(whole, pose, CAM)
    e, n = image_to_ground(pose, CAM, np.array([CAM.width_px / 2]), np.array([CAM.height_px / 2]))
    gsd = pose.altitude_m / CAM.focal_px
    map_bytes = whole.rgb.nbytes
    reg_whole = _register(Refiner(whole, RefineConfig()), image, gsd, float(e[0]), float(n[0]))
    del whole
    with WindowedMap(path) as wm:
        refiner = Refiner(wm, RefineConfig())
        tracemalloc.start()
        reg = _register(refiner, image, gsd, float(e[0]), float(n[0]))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert reg.ok, reg.reason
    assert math.hypot(reg.center_e - e[0], reg.center_n - n[0]) < 1.0
    # the same keypoints; FLANN's and MAGSAC's randomness moves a few matches
    assert abs(reg.inliers - reg_whole.inliers) <= 0.05 * reg_whole.inliers
    assert math.hypot(reg.center_e - reg_whole.center_e, reg.center_n - reg_whole.center_n) < 0.1
    # the windows read for the blocks (~3.4 MB each here, at level 1) and the view's work, far below the map itself
    assert peak < map_bytes / 3, f"peak {peak / 2**20:.0f} MiB for a {map_bytes / 2**20:.0f} MiB map"


def _register(refiner, image, gsd, e, n):
    q = refiner.prepare(image, gsd, True, heading_deg=35.0)
    return refiner.register(q, e, n, refiner.window_half_m(q, 60.0))
