"""Several files, one map: a UTM GeoTIFF and a geographic one at another resolution become one index whose tiles
carry their source; the overlap is indexed once; a view over the second file is registered on that file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pyproj import Transformer

from mobilegeo_ros.config import from_dict
from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.geo.tiles import tile_grid
from mobilegeo_ros.index import TileIndex
from mobilegeo_ros.index.build import build_index, map_files
from mobilegeo_ros.localizer import Localizer, Priors

CFG = {"map": {"tile_sizes_m": [60.0], "overlap": 0.5, "tile_px": 96}, "model": {"input_px": 96},
       "index": {"heading": "none"}, "estimator": {"min_cluster_weight": 0.0}}
CAM = CameraModel(320, 240, 70.0)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_files")
    folder = root / "maps"
    # A: UTM 13N, 0.5 m, 300 m × 250 m from (487000, 4444000) at the top-left corner
    a = write_synthetic_geotiff(folder / "a_utm.tif", 600, 500, 0.5, origin_e=487000.0, origin_n=4444000.0, seed=1)
    # B: WGS84 degrees, ~0.6 m, its west edge 60 m inside A (an overlap), reaching 300 m further east
    to_ll = Transformer.from_crs("EPSG:32613", "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(487240.0, 4444000.0)
    b = write_synthetic_geotiff(folder / "b_wgs84.tif", 620, 460, 7e-6, crs="EPSG:4326", origin_e=lon0,
                                origin_n=lat0, seed=2)
    cfg = from_dict(CFG)
    index_dir = build_index(folder, root / "index", cfg, progress=False)  # a folder of files
    return root, a, b, cfg, index_dir


def test_two_files_make_one_index_with_sources(two_files):
    root, a, b, cfg, index_dir = two_files
    assert map_files(a.parent) == [a, b]
    index = TileIndex.load(index_dir)
    meta = json.loads((index_dir / "index.json").read_text())
    sources = meta["map"]["sources"]
    assert [s["name"] for s in sources] == ["a_utm.tif", "b_wgs84.tif"] and meta["map"]["name"] == "a_utm.tif"
    assert "32613" in index.crs_wkt or "UTM zone 13N" in index.crs_wkt
    src = index.columns["source"]
    assert set(src.tolist()) == {0, 1}
    # tile ids consecutive over both files, file by file
    tid = index.columns["tile_id"]
    np.testing.assert_array_equal(np.unique(tid), np.arange(meta["counts"]["tiles"]))
    assert (np.diff(src) >= 0).all()
    # A's tiles are A's whole grid; B's are its grid (on the UTM grid) minus those centred inside A
    ortho_a = read_orthophoto(a, cfg.map)
    assert int((src == 0).sum()) == len(tile_grid(ortho_a, [60.0], 0.5))
    left, bottom, right, top = sources[0]["bounds"]
    e, n = index.columns["center_e"][src == 1], index.columns["center_n"][src == 1]
    assert not ((e >= left) & (e <= right) & (n >= bottom) & (n <= top)).any()
    ortho_b = read_orthophoto(b, cfg.map)  # reprojected to UTM 13N by the whole-raster reader
    all_b = tile_grid(ortho_b, [60.0], 0.5)
    assert 0 < int((src == 1).sum()) < len(all_b)  # the overlap was dropped, the rest kept
    assert sources[1]["gsd_m"] != pytest.approx(sources[0]["gsd_m"], abs=0.01)


def test_view_over_the_second_file_registers_on_it(two_files):
    root, a, b, cfg, index_dir = two_files
    ortho_b = read_orthophoto(b, cfg.map)
    left, bottom, right, top = ortho_b.bounds
    pose = CameraPose(left + 0.7 * (right - left), bottom + 0.5 * (top - bottom), 60.0, 0.0, 0.0, 0.0)
    image = render_view(ortho_b, pose, CAM)
    loc = Localizer.from_files(index_dir, cfg)
    fix = loc.localize([image], Priors(hfov_deg=CAM.hfov_deg))
    assert fix.status == "verified", fix.reason
    assert math.hypot(fix.easting - pose.easting, fix.northing - pose.northing) < 3.0
    assert loc.index.columns["source"][fix.registration.candidate] == 1
    assert loc.source_at(pose.easting, pose.northing) == 1
    assert (index_dir / "map_features" / "source-1").is_dir()  # its map features are cached apart


def test_bad_map_lists_are_refused(tmp_path, two_files):
    _, a, _, cfg, _ = two_files
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeoError, match="holds no raster"):
        build_index(tmp_path / "empty", tmp_path / "i", cfg, progress=False)
    with pytest.raises(GeoError, match="given twice"):
        build_index([a, a], tmp_path / "i", cfg, progress=False)
    assert not (tmp_path / "i").exists()
