"""geo.raster: reading GeoTIFFs (bands, dtypes, CRS handling, pansharpening) and the Orthophoto coordinate helpers."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from mobilegeo_ros.config import MapConfig
from mobilegeo_ros.geo.raster import GeoError, Orthophoto, read_orthophoto
from mobilegeo_ros.geo.synthetic import synthetic_rgb, write_synthetic_geotiff

E0, N0 = 487000.0, 4444000.0


@pytest.fixture(scope="module")
def rgb_tif(tmp_path_factory):
    return write_synthetic_geotiff(tmp_path_factory.mktemp("raster") / "map.tif", width_px=256, height_px=192,
                                   gsd_m=0.5, origin_e=E0, origin_n=N0, seed=3)


def _write(path, data, transform, crs="EPSG:32613", nodata=None):
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


def _grey(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)


def test_read_synthetic_geotiff(rgb_tif):
    o = read_orthophoto(rgb_tif)
    assert o.rgb.shape == (192, 256, 3) and o.rgb.dtype == np.uint8
    assert (o.width, o.height) == (256, 192)
    assert o.crs.to_epsg() == 32613
    assert o.gsd_m == pytest.approx(0.5)
    assert o.bounds == pytest.approx((E0, N0 - 96.0, E0 + 128.0, N0))
    assert o.path == rgb_tif
    with rasterio.open(rgb_tif) as src:  # uint8 RGB is used as is, no stretch
        np.testing.assert_array_equal(o.rgb, np.moveaxis(src.read(), 0, 2))
    assert o.rgb.std() > 20  # textured, not flat


def test_pixel_map_round_trip(rgb_tif):
    o = read_orthophoto(rgb_tif)
    e, n = o.pixel_to_map(0.5, 0.5)  # centre of the top-left pixel
    assert (float(e), float(n)) == pytest.approx((E0 + 0.25, N0 - 0.25))
    rng = np.random.default_rng(0)
    cols, rows = rng.uniform(-10, 300, 100), rng.uniform(-10, 200, 100)
    e, n = o.pixel_to_map(cols, rows)
    assert e.shape == (100,)
    c2, r2 = o.map_to_pixel(e, n)
    np.testing.assert_allclose(c2, cols, atol=1e-9)
    np.testing.assert_allclose(r2, rows, atol=1e-9)


def test_wgs84_against_independent_pyproj(rgb_tif):
    o = read_orthophoto(rgb_tif)
    e = np.array([E0, E0 + 64.0, E0 + 128.0])
    n = np.array([N0, N0 - 50.0, N0 - 96.0])
    lat, lon = o.map_to_wgs84(e, n)
    ref_lon, ref_lat = Transformer.from_crs("EPSG:32613", "EPSG:4326", always_xy=True).transform(e, n)
    np.testing.assert_allclose(lat, ref_lat, atol=1e-10)
    np.testing.assert_allclose(lon, ref_lon, atol=1e-10)
    assert 40.1 < lat[0] < 40.2 and -105.2 < lon[0] < -105.1  # Longmont, CO
    e2, n2 = o.wgs84_to_map(lat, lon)
    np.testing.assert_allclose(e2, e, atol=1e-6)
    np.testing.assert_allclose(n2, n, atol=1e-6)


def test_uint16_single_band_is_stretched_grey(tmp_path):
    p = write_synthetic_geotiff(tmp_path / "pan.tif", 200, 160, 0.5, bands=1, dtype="uint16", seed=1)
    o = read_orthophoto(p)
    assert o.rgb.shape == (160, 200, 3)
    np.testing.assert_array_equal(o.rgb[..., 0], o.rgb[..., 1])
    np.testing.assert_array_equal(o.rgb[..., 0], o.rgb[..., 2])
    with rasterio.open(p) as src:
        raw = src.read(1).astype(np.float64)
    # 1%..99% stretch: linear between the percentiles of the raw values, clipped outside.
    lo, hi = np.percentile(raw, [1, 99])
    expected = np.clip((raw - lo) * 255.0 / (hi - lo), 0, 255)
    assert np.abs(o.rgb[..., 0] - expected).max() <= 1.0
    assert o.rgb.min() == 0 and o.rgb.max() == 255


def test_stretch_ignores_nodata(tmp_path):
    data = (synthetic_rgb(128, 128, 0.5, seed=2).mean(axis=2) * 2000).astype(np.uint16)
    data[:, :40] = 60000  # a nodata stripe (31 % of the pixels) far above the real values
    p = _write(tmp_path / "nodata.tif", data, Affine(0.5, 0, E0, 0, -0.5, N0), nodata=60000)
    o = read_orthophoto(p)
    assert (o.rgb[:, :40] == 0).all()
    valid = o.rgb[:, 40:, 0]
    # Were the stripe used, the high percentile would be 60000 and the valid pixels would all be near black.
    assert valid.max() == 255 and valid.mean() > 60


def test_eight_band_worldview_uses_bands_5_3_2(tmp_path):
    rgb3 = read_orthophoto(write_synthetic_geotiff(tmp_path / "rgb.tif", 128, 96, 0.5, bands=3, dtype="uint16"))
    p8 = write_synthetic_geotiff(tmp_path / "mul.tif", 128, 96, 0.5, bands=8, dtype="uint16")
    np.testing.assert_array_equal(read_orthophoto(p8).rgb, rgb3.rgb)
    swapped = read_orthophoto(p8, MapConfig(rgb_bands=[2, 3, 5])).rgb
    np.testing.assert_array_equal(swapped, rgb3.rgb[..., ::-1])
    p4 = write_synthetic_geotiff(tmp_path / "bgrn.tif", 128, 96, 0.5, bands=4, dtype="float32")
    assert np.abs(read_orthophoto(p4).rgb.astype(int) - rgb3.rgb).max() <= 2  # float vs 11-bit quantisation


def test_bad_band_selection(tmp_path):
    p8 = write_synthetic_geotiff(tmp_path / "mul.tif", 64, 64, 0.5, bands=8, dtype="uint16")
    with pytest.raises(GeoError, match="rgb_bands"):
        read_orthophoto(p8, MapConfig(rgb_bands=[9, 3, 2]))
    data = np.zeros((5, 64, 64), np.uint16)
    p5 = _write(tmp_path / "five.tif", data, Affine(0.5, 0, E0, 0, -0.5, N0))
    with pytest.raises(GeoError, match="five.tif.*map.rgb_bands"):
        read_orthophoto(p5)


def test_geographic_crs_is_reprojected_to_utm(tmp_path):
    lon0, lat0, step = -105.145, 40.140, 5e-6  # ~0.43 m east-west, ~0.56 m north-south per pixel
    src_path = write_synthetic_geotiff(tmp_path / "ll.tif", 300, 240, step, crs="EPSG:4326", origin_e=lon0,
                                       origin_n=lat0, seed=4)
    o = read_orthophoto(src_path)
    assert o.crs.to_epsg() == 32613  # UTM 13N for Longmont
    assert 0.4 < o.gsd_m < 0.6
    assert o.transform.b == 0 and o.transform.d == 0 and o.transform.a == pytest.approx(-o.transform.e)
    with rasterio.open(src_path) as src:
        src_rgb = np.moveaxis(src.read(), 0, 2)
    # The same WGS84 positions show the same content in the source and in the reprojected map.
    cols, rows = np.meshgrid(np.arange(20, 280, 7) + 0.5, np.arange(20, 220, 7) + 0.5)
    lon, lat = lon0 + cols * step, lat0 - rows * step
    pc, pr = o.map_to_pixel(*o.wgs84_to_map(lat, lon))
    assert (pc > 0).all() and (pc < o.width).all() and (pr > 0).all() and (pr < o.height).all()
    a = _grey(src_rgb)[rows.astype(int), cols.astype(int)]
    b = _grey(o.rgb)[pr.astype(int), pc.astype(int)]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_web_mercator_is_reprojected_to_true_scale(tmp_path):
    # Web Mercator metres are 1/cos(lat) too long: 0.65 "m" at lat 40.14 is ~0.50 m on the ground.
    e0, n0 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-105.14, 40.14)
    p = write_synthetic_geotiff(tmp_path / "merc.tif", 200, 200, 0.65, crs="EPSG:3857", origin_e=e0, origin_n=n0)
    o = read_orthophoto(p)
    assert o.crs.to_epsg() == 32613
    assert o.gsd_m == pytest.approx(0.65 * np.cos(np.radians(40.14)), rel=0.02)


def test_brovey_pansharpening_recovers_detail(tmp_path):
    truth = synthetic_rgb(256, 256, 0.5, seed=5)  # the "real" scene at 0.5 m
    pan = (truth.mean(axis=2) * 2000).astype(np.uint16)
    ms = cv2.resize(truth, (64, 64), interpolation=cv2.INTER_AREA)  # 2 m multispectral, B,G,R,NIR order
    ms4 = np.stack([ms[..., 2], ms[..., 1], ms[..., 0], ms[..., 1]]) * 2000
    pan_p = _write(tmp_path / "pan.tif", pan, Affine(0.5, 0, E0, 0, -0.5, N0))
    ms_p = _write(tmp_path / "ms.tif", ms4.astype(np.uint16), Affine(2.0, 0, E0, 0, -2.0, N0))
    plain = read_orthophoto(ms_p)
    sharp = read_orthophoto(ms_p, MapConfig(pansharpen_with=str(pan_p)))
    assert sharp.rgb.shape == (256, 256, 3) and sharp.gsd_m == pytest.approx(0.5)
    assert sharp.transform == Affine(0.5, 0, E0, 0, -0.5, N0)
    upsampled = cv2.resize(plain.rgb, (256, 256), interpolation=cv2.INTER_LINEAR)
    t = _grey((truth * 255).astype(np.uint8)).ravel()
    corr_sharp = np.corrcoef(_grey(sharp.rgb).ravel(), t)[0, 1]
    corr_plain = np.corrcoef(_grey(upsampled).ravel(), t)[0, 1]
    assert corr_sharp > 0.95 and corr_sharp > corr_plain + 0.05
    red = np.corrcoef(sharp.rgb[..., 0].ravel().astype(float), truth[..., 0].ravel())[0, 1]
    assert red > 0.8  # colour comes from the multispectral bands


def test_missing_file():
    with pytest.raises(GeoError, match="nope/map.tif.*does not exist"):
        read_orthophoto("/tmp/nope/map.tif")


def test_missing_pansharpen_file(rgb_tif):
    with pytest.raises(GeoError, match="panchromatic image.*missing_pan.tif.*does not exist"):
        read_orthophoto(rgb_tif, MapConfig(pansharpen_with="/tmp/missing_pan.tif"))


def test_not_a_raster(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_text("this is not a GeoTIFF\n")
    with pytest.raises(GeoError, match="notes.tif.*not a readable raster"):
        read_orthophoto(p)


def test_not_georeferenced(tmp_path):
    p = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(p, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
            dst.write(np.full((3, 64, 64), 100, np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the GeoError is the only report, no rasterio warning on top
        with pytest.raises(GeoError, match="plain.tif.*not georeferenced"):
            read_orthophoto(p)
    # A transform but no CRS is not enough either.
    p2 = _write(tmp_path / "nocrs.tif", np.zeros((3, 64, 64), np.uint8), Affine(0.5, 0, E0, 0, -0.5, N0), crs=None)
    with pytest.raises(GeoError, match="nocrs.tif.*not georeferenced.*no CRS"):
        read_orthophoto(p2)


def test_too_small(tmp_path):
    p = write_synthetic_geotiff(tmp_path / "tiny.tif", 20, 40, 0.5)
    with pytest.raises(GeoError, match="tiny.tif.*20×40"):
        read_orthophoto(p)


def test_orthophoto_rejects_bad_array():
    with pytest.raises(GeoError, match="H×W×3 uint8"):
        Orthophoto(np.zeros((10, 10), np.uint8), Affine(1, 0, 0, 0, -1, 0), "EPSG:32613", 1.0)


def test_pyramid_levels_are_cached_and_aligned():
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[100:104, 60:64] = 255  # a 4×4 px square centred at continuous (62, 102)
    o = Orthophoto(rgb, Affine(0.5, 0, E0, 0, -0.5, N0), "EPSG:32613", 0.5)
    assert o.pyramid(0) is o.rgb
    lvl2 = o.pyramid(2)
    assert lvl2.shape == (64, 64, 3) and o.pyramid(2) is lvl2
    w = lvl2[..., 0].astype(float)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    base = Orthophoto.pyramid_to_base(2) @ np.array([cx, cy, 1.0])
    assert base[:2] == pytest.approx((62.0, 102.0), abs=0.05)
    with pytest.raises(GeoError, match="pyramid level"):
        o.pyramid(o.max_pyramid_level + 1)
