"""geo.tiles: the multi-size tile grid and (rotated, anti-aliased) tile images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from affine import Affine

from mobilegeo_ros.geo.raster import GeoError, Orthophoto, read_orthophoto
from mobilegeo_ros.geo.synthetic import synthetic_rgb, write_synthetic_geotiff
from mobilegeo_ros.geo.tiles import TileSpec, cut_tile, tile_grid

E0, N0 = 487000.0, 4444000.0


def _ortho(rgb, gsd=0.5):
    return Orthophoto(np.ascontiguousarray(rgb), Affine(gsd, 0, E0, 0, -gsd, N0), "EPSG:32613", gsd)


@pytest.fixture(scope="module")
def town():
    """1000×600 px at 0.5 m = 500 m × 300 m."""
    return _ortho((synthetic_rgb(1000, 600, 0.5, seed=7) * 255).astype(np.uint8))


def _spec_at(o, col, row, size_m):
    e, n = o.pixel_to_map(col, row)
    lat, lon = o.map_to_wgs84(e, n)
    return TileSpec(0, 0, size_m, float(e), float(n), float(lat), float(lon))


def test_grid_counts_ids_and_levels(town):
    specs = tile_grid(town, [100.0, 200.0], 0.5)
    # 100 m, stride 50: (500-100)/50+1 = 9 columns, (300-100)/50+1 = 5 rows; 200 m, stride 100: 4 × 2.
    assert len(specs) == 9 * 5 + 4 * 2
    assert [s.tile_id for s in specs] == list(range(len(specs)))
    assert [s.level for s in specs] == [0] * 45 + [1] * 8
    assert {s.size_m for s in specs[:45]} == {100.0} and {s.size_m for s in specs[45:]} == {200.0}
    no_overlap = tile_grid(town, [100.0], 0.0)
    assert len(no_overlap) == 5 * 3


def test_grid_is_centred_with_symmetric_margins(town):
    left, bottom, right, top = town.bounds
    specs = tile_grid(town, [120.0], 0.5)  # stride 60: 7 columns span 480 m (10 m margins), 4 rows span 300 m
    es = sorted({round(s.center_e, 6) for s in specs})
    ns = sorted({round(s.center_n, 6) for s in specs}, reverse=True)
    assert len(es) == 7 and len(ns) == 4 and len(specs) == 28
    assert es[0] - 60 - left == pytest.approx(10.0) and right - (es[-1] + 60) == pytest.approx(10.0)
    assert top - (ns[0] + 60) == pytest.approx(0.0) and (ns[-1] - 60) - bottom == pytest.approx(0.0)
    np.testing.assert_allclose(np.diff(es), 60.0)
    # Row-major from the north-west corner.
    assert specs[0].center_e == pytest.approx(es[0]) and specs[0].center_n == pytest.approx(ns[0])
    assert specs[1].center_e == pytest.approx(es[1]) and specs[7].center_n == pytest.approx(ns[1])
    lat, lon = town.map_to_wgs84(specs[5].center_e, specs[5].center_n)
    assert (specs[5].lat, specs[5].lon) == pytest.approx((float(lat), float(lon)), abs=1e-12)


def test_grid_overlap_fraction(town):
    specs = tile_grid(town, [80.0], 0.25)
    row = [s for s in specs if s.center_n == specs[0].center_n]
    shared = 80.0 - (row[1].center_e - row[0].center_e)
    assert shared / 80.0 == pytest.approx(0.25)


def test_grid_skips_sizes_larger_than_the_map(town):
    specs = tile_grid(town, [100.0, 400.0], 0.5)  # 400 m does not fit in 300 m of height
    assert {s.level for s in specs} == {0} and len(specs) == 45
    with pytest.raises(GeoError, match="smaller than a tile"):
        tile_grid(town, [350.0, 600.0], 0.5)
    with pytest.raises(GeoError, match="overlap"):
        tile_grid(town, [100.0], 1.0)


def test_grid_from_a_geotiff_file(tmp_path):
    o = read_orthophoto(write_synthetic_geotiff(tmp_path / "m.tif", 512, 512, 0.5))
    specs = tile_grid(o, [64.0], 0.5)
    assert len(specs) == 7 * 7
    left, bottom, right, top = o.bounds
    assert all(left + 32 <= s.center_e <= right - 32 and bottom + 32 <= s.center_n <= top - 32 for s in specs)


def test_cut_tile_rotation_0_is_the_crop_at_native_scale(town):
    spec = _spec_at(town, 300.0, 200.0, 64 * 0.5)  # 64 px square centred on a pixel corner
    tile = cut_tile(town, spec, 64)
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    np.testing.assert_array_equal(tile, town.rgb[168:232, 268:332])


def test_cut_tile_downscaled_matches_area_resize(town):
    spec = _spec_at(town, 500.0, 300.0, 256 * 0.5)  # 256 px of map into 64 px
    tile = cut_tile(town, spec, 64).astype(float)
    ref = cv2.resize(town.rgb[172:428, 372:628], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(tile.ravel(), ref.ravel())[0, 1] > 0.95
    assert np.abs(tile - ref).mean() < 10.0  # the Gaussian pyramid low-passes a little more than a box filter


@pytest.mark.parametrize("out_px", [256, 128, 64, 32])
def test_cut_tile_downscaling_keeps_positions(out_px):
    rgb = np.zeros((512, 512, 3), np.uint8)
    rgb[254:258, 300:304] = 255  # a 4 px square centred at continuous (302, 256)
    o = _ortho(rgb)
    tile = cut_tile(o, _spec_at(o, 256.0, 256.0, 256.0), out_px)[..., 0].astype(float)
    ys, xs = np.mgrid[0:out_px, 0:out_px] + 0.5
    cx, cy = (tile * xs).sum() / tile.sum(), (tile * ys).sum() / tile.sum()
    scale = out_px / 512  # tile pixels per map pixel
    assert (cx, cy) == pytest.approx((302 * scale, 256 * scale), abs=0.15)


def test_cut_tile_does_not_alias():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::2] = 255  # period 2 px: any decimation without low-pass gives solid black/white or moiré
    o = _ortho(stripes)
    spec = _spec_at(o, 256.0, 256.0, 400 * 0.5)
    for rotation in (0.0, 30.0):
        tile = cut_tile(o, spec, 50, rotation).astype(float)
        assert abs(tile.mean() - 127.5) < 6 and tile.std() < 6


def test_rotation_puts_the_mark_where_the_top_points():
    rgb = np.full((400, 400, 3), 60, np.uint8)
    rgb[195:205, 255:265] = (255, 0, 0)  # red mark 60 px = 30 m east of the centre (200, 200)
    o = _ortho(rgb)
    spec = _spec_at(o, 200.0, 200.0, 100.0)  # 100 m tile into 100 px: 1 m per tile pixel

    def mark(rotation):
        red = cut_tile(o, spec, 100, rotation)[..., 0].astype(float) - 60
        ys, xs = np.nonzero(red > 100)
        return xs.mean() + 0.5 - 50, ys.mean() + 0.5 - 50  # offset (right, down) from the tile centre, metres

    assert mark(0.0) == pytest.approx((30, 0), abs=1.0)    # north up: east is right
    assert mark(90.0) == pytest.approx((0, -30), abs=1.0)  # top points east: the mark is straight up
    assert mark(180.0) == pytest.approx((-30, 0), abs=1.0)  # top points south: east is left
    assert mark(-90.0) == pytest.approx((0, 30), abs=1.0)  # top points west: east is down
    x, y = mark(45.0)  # top points north-east: east is up-right
    assert (x, y) == pytest.approx((30 / np.sqrt(2), -30 / np.sqrt(2)), abs=1.0)


def test_rotation_90_is_the_rotated_crop(town):
    spec = _spec_at(town, 300.0, 200.0, 64 * 0.5)
    np.testing.assert_array_equal(cut_tile(town, spec, 64, 90.0), np.rot90(cut_tile(town, spec, 64, 0.0)))


def test_border_reflects(town):
    spec = _spec_at(town, 10.0, 10.0, 64 * 0.5)  # hangs 22 px over the north-west corner
    tile = cut_tile(town, spec, 64)
    assert tile[:22, :22].std() > 10  # reflected texture, not a constant fill
    np.testing.assert_array_equal(tile[22:, 22:], town.rgb[0:42, 0:42])
