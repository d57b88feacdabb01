"""The published altitude (row 6 of issue 13): ground heights sampled from a real DEM GeoTIFF written here with rasterio
(projected and geographic CRSs, nodata, scale/offset, bad files), "unknown" as an explicit NaN in the config, the
tracker's ellipsoidal altitude and map-frame up coordinate, and the MSL altitude + geoid separation of NMEA and MAVLink.
Expected heights are computed here from the planes the DEMs were written from, through pyproj."""

import math

import numpy as np
import pynmea2
import pytest
import rasterio
from pymavlink.dialects.v20 import ardupilotmega as mav2
from pyproj import Transformer
from rasterio.transform import from_origin

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.geo.elevation import DemFile, GroundElevation
from mobilegeo_ros.geo.raster import GeoError
from mobilegeo_ros.io.mavlink import gps_input_fields
from mobilegeo_ros.io.nmea import gga
from mobilegeo_ros.tracker import TrackResult

# A 2 km x 2 km DEM at 10 m in UTM 13N (EPSG:32613) near Longmont, Colorado, whose heights are a plane in the UTM
# coordinates: bilinear sampling must reproduce the plane exactly between pixel centres.
X0, Y0, RES, N_PX = 487000.0, 4443000.0, 10.0, 200


def _plane_utm(x, y):
    return 1520.0 + 0.03 * (x - X0) - 0.02 * (y - Y0)


def _write_dem(path, crs, transform, heights, **profile):
    with rasterio.open(path, "w", driver="GTiff", width=heights.shape[1], height=heights.shape[0], count=1,
                       dtype=profile.pop("dtype", "float32"), crs=crs, transform=transform, **profile) as dst:
        dst.write(heights.astype(dst.dtypes[0]), 1)
    return path


def _utm_dem(path, nodata_at=None):
    transform = from_origin(X0, Y0 + N_PX * RES, RES, RES)
    cols, rows = np.meshgrid(np.arange(N_PX) + 0.5, np.arange(N_PX) + 0.5)
    xs, ys = transform @ (cols, rows)
    h = _plane_utm(xs, ys)
    kw = {}
    if nodata_at is not None:
        h[nodata_at] = -9999.0
        kw["nodata"] = -9999.0
    return _write_dem(path, "EPSG:32613", transform, h, **kw), transform


TO_WGS84 = Transformer.from_crs("EPSG:32613", "EPSG:4326", always_xy=True)


def _latlon(x, y):
    lon, lat = TO_WGS84.transform(x, y)
    return lat, lon


def test_projected_dem_sampled_at_wgs84_points(tmp_path):
    path, _ = _utm_dem(tmp_path / "dem_utm.tif")
    dem = DemFile(path)
    rng = np.random.default_rng(0)
    for x, y in zip(X0 + rng.uniform(10, 1990, 25), Y0 + rng.uniform(10, 1990, 25)):
        lat, lon = _latlon(x, y)
        assert dem.height_at(lat, lon) == pytest.approx(_plane_utm(x, y), abs=1e-3)
    # between the last pixel centre and the edge: the edge pixels' values (clamped), still inside the DEM
    lat, lon = _latlon(X0 + 2, Y0 + 1000)
    assert dem.height_at(lat, lon) == pytest.approx(_plane_utm(X0 + 5, Y0 + 1000), abs=1e-3)
    # outside, or no position: unknown
    assert math.isnan(dem.height_at(*_latlon(X0 - 50, Y0 + 1000)))
    assert math.isnan(dem.height_at(math.nan, -105.0))
    dem.close()


def test_geographic_dem_and_scale_offset(tmp_path):
    # EPSG:4326, int16 heights stored as (h - 1000) / 0.5: the GeoTIFF's scale and offset give metres back
    lon0, lat0, step = -105.2, 40.2, 0.001
    transform = from_origin(lon0, lat0 + 100 * step, step, step)
    cols, rows = np.meshgrid(np.arange(100) + 0.5, np.arange(100) + 0.5)
    lons, lats = transform @ (cols, rows)
    h = 1600.0 + 5000.0 * (lons - lon0) + 2000.0 * (lats - lat0)
    path = tmp_path / "dem_4326.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="int16", crs="EPSG:4326",
                       transform=transform) as dst:
        dst.write(np.round((h - 1000.0) / 0.5).astype("int16"), 1)
        dst.scales, dst.offsets = (0.5,), (1000.0,)
    dem = DemFile(path)
    lat, lon = lat0 + 0.0503, lon0 + 0.0271
    assert dem.height_at(lat, lon) == pytest.approx(1600.0 + 5000.0 * 0.0271 + 2000.0 * 0.0503, abs=0.3)
    dem.close()


def test_nodata_pixel_and_fallback_to_the_constant(tmp_path):
    path, transform = _utm_dem(tmp_path / "dem_hole.tif", nodata_at=(100, 100))
    ground = GroundElevation(path, constant_m=1234.0)
    # in the nodata pixel (row 100, column 100): unknown in the DEM -> the configured constant
    x, y = transform @ (100.5, 100.5)
    assert math.isnan(ground.dem.height_at(*_latlon(x, y)))
    assert ground.height_at(*_latlon(x, y)) == 1234.0
    # in the valid pixel next to it, whose bilinear neighbourhood holds the hole: that pixel's own value
    x, y = transform @ (99.8, 100.6)  # (col, row) in pixel (99, 100); its 4 nearest centres include (100, 100)
    assert ground.height_at(*_latlon(x, y)) == pytest.approx(_plane_utm(*(transform @ (99.5, 100.5))), abs=1e-3)
    # outside the DEM: the constant; no DEM and no constant: unknown
    assert ground.height_at(*_latlon(X0 - 500, Y0)) == 1234.0
    assert math.isnan(GroundElevation().height_at(40.0, -105.0)) and not GroundElevation().configured
    assert GroundElevation(None, 12.5).height_at(40.0, -105.0) == 12.5
    ground.close()


def test_unusable_dem_files_fail_naming_the_file(tmp_path):
    with pytest.raises(GeoError, match="no_such.tif.*does not exist"):
        DemFile(tmp_path / "no_such.tif")
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(GeoError, match="text.tif.*not a readable raster"):
        DemFile(tmp_path / "text.tif")
    _write_dem(tmp_path / "nocrs.tif", None, from_origin(0, 10, 1, 1), np.zeros((10, 10)))
    with pytest.raises(GeoError, match="nocrs.tif.*not georeferenced"):
        DemFile(tmp_path / "nocrs.tif")
    path = _write_dem(tmp_path / "feet.tif", "EPSG:32613", from_origin(X0, Y0, 10, 10), np.zeros((10, 10)))
    with rasterio.open(path, "r+") as dst:
        dst.units = ("ft",)
    with pytest.raises(GeoError, match="feet.tif.*'ft', expected metres"):
        DemFile(path)


# -- config: "unknown" is an explicit NaN ----------------------------------------------------------------------------

def test_unknown_ground_and_geoid_are_nan_by_default_and_in_yaml(tmp_path):
    cfg = config_mod.Config().validate()
    assert math.isnan(cfg.node.ground_alt_m) and math.isnan(cfg.node.geoid_separation_m) and cfg.node.dem_file == ""
    for text in (".nan", "nan", "NaN", ".NaN"):  # PyYAML reads only .nan as a float; ROS reads all as doubles
        p = tmp_path / "c.yaml"
        p.write_text(f"node:\n  ground_alt_m: {text}\n  geoid_separation_m: 21.5\n")
        loaded = config_mod.load_config(p)
        assert math.isnan(loaded.node.ground_alt_m) and loaded.node.geoid_separation_m == 21.5
        assert loaded == config_mod.from_dict({"node": {"geoid_separation_m": 21.5}})  # NaN configs compare equal
    assert config_mod.from_flat({"node.ground_alt_m": 1500}).node.ground_alt_m == 1500.0
    # NaN only where it means "unknown": elsewhere it is refused like any bad value
    with pytest.raises(config_mod.ConfigError, match="node.prior_timeout_s: NaN"):
        config_mod.from_dict({"node": {"prior_timeout_s": float("nan")}})
    with pytest.raises(config_mod.ConfigError, match="node.window_s: NaN"):
        config_mod.from_dict({"node": {"window_s": "nan"}})
    with pytest.raises(config_mod.ConfigError, match="node.ground_alt_m: expected a number"):
        config_mod.from_dict({"node": {"ground_alt_m": "unknown"}})


# -- flight stack: MSL altitude and geoid separation -----------------------------------------------------------------

def _result(alt_m, sigma=1.0):
    return TrackResult(status=FixStatus.VERIFIED, reason="", stamp_s=1_700_000_000.0, lat=40.1, lon=-105.1,
                       alt_m=alt_m, altitude_m=60.0, altitude_sigma_m=sigma, cov_en=np.eye(2) * 4.0)


def _cfg(**node):
    return config_mod.from_dict({"node": node})


@pytest.mark.parametrize("alt_m,geoid_m,msl,sep", [
    (1580.25, 17.5, "1562.75", "17.50"),  # both known: MSL = ellipsoidal - N, N in field 11
    (1580.25, math.nan, "", ""),  # geoid unknown: no MSL altitude (never the ellipsoidal height as MSL)
    (math.nan, 17.5, "", "17.50"),  # ground unknown: no altitude, the separation is still a fact
    (math.nan, math.nan, "", ""),
])
def test_gga_altitude_is_msl_with_the_geoid_separation_or_empty(alt_m, geoid_m, msl, sep):
    fix = _result(alt_m).flight_stack_fix(_cfg(geoid_separation_m=geoid_m))
    sentence = gga(fix)
    fields = sentence.split("*")[0].split(",")
    assert (fields[9], fields[10], fields[11], fields[12]) == (msl, "M", sep, "M")
    parsed = pynmea2.parse(sentence.strip(), check=True)
    assert parsed.gps_qual == 1
    if msl:
        assert float(parsed.altitude) + float(parsed.geo_sep) == pytest.approx(alt_m, abs=0.01)


def test_mavlink_alt_is_msl_or_ignored():
    fields = gps_input_fields(_result(1580.25, sigma=1.0).flight_stack_fix(_cfg(geoid_separation_m=17.5)))
    assert fields["alt"] == pytest.approx(1562.75)
    assert not fields["ignore_flags"] & mav2.GPS_INPUT_IGNORE_FLAG_ALT
    assert not fields["ignore_flags"] & mav2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY
    assert fields["vert_accuracy"] == pytest.approx(1.0)
    for alt_m, geoid_m in ((1580.25, math.nan), (math.nan, 17.5)):
        fields = gps_input_fields(_result(alt_m).flight_stack_fix(_cfg(geoid_separation_m=geoid_m)))
        assert fields["ignore_flags"] & mav2.GPS_INPUT_IGNORE_FLAG_ALT and fields["alt"] == 0.0
        assert fields["fix_type"] == 3  # the horizontal fix is still sent


# -- the tracker (the one path of every frame): ellipsoidal altitude and the map frame's up -------------------------

@pytest.fixture(scope="module")
def synthetic():
    from synthetic_world import render_views, synthetic_setup

    setup = synthetic_setup()
    return setup, render_views(setup, [(0.3, 0.3), (0.7, 0.7)])


def _pipeline(setup, **node):
    from mobilegeo_ros.localizer import Localizer
    from mobilegeo_ros.ros.pipeline import LocalizationPipeline

    cfg = config_mod.from_dict({**setup.overrides, "node": {"keyframes_in_background": False, **node}})
    return LocalizationPipeline(Localizer.from_files(setup.index_dir, cfg), cfg)


def _map_dem(setup, path):
    """A DEM over the synthetic map (UTM 13N) in EPSG:4326 whose heights rise 0.2 m per metre to the north-east."""
    with rasterio.open(setup.map_path) as src:
        left, bottom, right, top = src.bounds
        to_wgs84 = Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon0, lat0 = to_wgs84.transform(left - 100, bottom - 100)
    lon1, lat1 = to_wgs84.transform(right + 100, top + 100)
    n = 60
    transform = from_origin(lon0, lat1, (lon1 - lon0) / n, (lat1 - lat0) / n)
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    lons, lats = transform @ (cols, rows)

    def plane(lat, lon):
        return 1700.0 + 0.2 * 111_320.0 * ((lat - lat0) + (lon - lon0) * math.cos(math.radians(lat0)))
    _write_dem(path, "EPSG:4326", transform, plane(lats, lons), dtype="float64")
    return plane


def test_tracker_altitude_from_the_dem_and_up_in_the_map_frame(synthetic, tmp_path):
    from mobilegeo_ros.io.images import encode_image
    from mobilegeo_ros.localizer import Priors
    from mobilegeo_ros.ros.pipeline import Frame

    setup, views = synthetic
    plane = _map_dem(setup, tmp_path / "dem.tif")
    pipe = _pipeline(setup, dem_file=str(tmp_path / "dem.tif"))
    outs = [pipe.process(Frame("raw", encode_image(rgb, "rgb8"), stamp_s=100.0 + 50 * k), Priors(altitude_m=60.0))
            for k, (rgb, _, _) in enumerate(views)]
    pipe.close()
    assert all(o.status is FixStatus.VERIFIED for o in outs), [o.reason for o in outs]
    for o in outs:
        assert o.altitude_m == 60.0 and o.alt_m == pytest.approx(plane(o.lat, o.lon) + 60.0, abs=1e-3)
    # map frame z: up from the ground at the index origin, so it follows the ground (the two places are ~113 m apart
    # on a 0.2 slope: ~32 m of height between them); the flat-ground z would be 60 m at both
    rise = outs[1].alt_m - outs[0].alt_m
    assert rise > 20.0 and outs[1].u - outs[0].u == pytest.approx(rise, abs=0.01)
    assert pipe.tracker.enu.origin_h == pytest.approx(plane(pipe.loc.origin_lat, pipe.loc.origin_lon), abs=1e-3)


def test_tracker_altitude_unknown_without_ground(synthetic):
    from mobilegeo_ros.io.images import encode_image
    from mobilegeo_ros.localizer import Priors
    from mobilegeo_ros.ros.pipeline import Frame

    setup, views = synthetic
    pipe = _pipeline(setup)
    out = pipe.process(Frame("raw", encode_image(views[0][0], "rgb8"), stamp_s=100.0), Priors(altitude_m=60.0))
    pipe.close()
    assert out.status is FixStatus.VERIFIED and out.altitude_m == 60.0
    assert math.isnan(out.alt_m) and out.u == 60.0  # flat ground at the origin's level: z = height above ground
    assert out.flight_stack_fix(pipe.cfg).alt_m is None
