"""geo.render: pinhole geometry, rendered views against predicted pixel positions, poses and the dataset step."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from mobilegeo_ros.config import Config, RenderConfig
from mobilegeo_ros.geo.raster import GeoError, Orthophoto, read_orthophoto
from mobilegeo_ros.geo.render import (
    POSES_CSV_COLUMNS,
    CameraModel,
    CameraPose,
    attitude_from_rotation,
    camera_rotation,
    footprint,
    ground_to_image_homography,
    image_to_ground,
    photometric,
    project_ground_point,
    random_poses,
    read_poses_csv,
    render_dataset,
    render_view,
)
from mobilegeo_ros.geo.synthetic import synthetic_rgb, write_synthetic_geotiff
from mobilegeo_ros.geo.tiles import TileSpec, cut_tile

E0, N0 = 487000.0, 4444000.0
CAM = CameraModel(640, 480, 70.0)


def _ortho(rgb, gsd):
    return Orthophoto(np.ascontiguousarray(rgb), Affine(gsd, 0, E0, 0, -gsd, N0), "EPSG:32613", gsd)


def _dots_map(points_en, size_px=1600, gsd=0.25, sigma_px=2.0):
    """Black map with Gaussian bright dots (one colour channel each) at ground points (e, n)."""
    rgb = np.zeros((size_px, size_px, 3), np.float32)
    ys, xs = np.mgrid[0:size_px, 0:size_px] + 0.5
    o = _ortho(np.zeros((size_px, size_px, 3), np.uint8), gsd)
    for ch, (e, n) in enumerate(points_en):
        c, r = o.map_to_pixel(e, n)
        win = (np.abs(xs - c) < 8 * sigma_px) & (np.abs(ys - r) < 8 * sigma_px)
        rgb[..., ch][win] = np.exp(-((xs[win] - c) ** 2 + (ys[win] - r) ** 2) / (2 * sigma_px**2))
    return _ortho((rgb * 255).astype(np.uint8), gsd)


def _centroid(channel):
    w = channel.astype(np.float64)
    w[w < 0.1 * w.max()] = 0
    ys, xs = np.mgrid[0:channel.shape[0], 0:channel.shape[1]] + 0.5
    return (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()


def test_intrinsics():
    k = CAM.K
    f = 320 / math.tan(math.radians(35))
    np.testing.assert_allclose(k, [[f, 0, 320], [0, f, 240], [0, 0, 1]])


def test_nadir_camera_sees_its_nadir_at_the_image_centre():
    pose = CameraPose(E0 + 100, N0 - 100, 120.0, 33.0)
    u, v = project_ground_point(pose, CAM, pose.easting, pose.northing)
    assert (float(u), float(v)) == pytest.approx((320, 240))


@pytest.mark.parametrize("yaw, north_dir, east_dir", [
    (0.0, (0, -1), (1, 0)),     # north up, east right
    (90.0, (-1, 0), (0, -1)),   # east up, north left
    (180.0, (0, 1), (-1, 0)),   # south up
    (-90.0, (1, 0), (0, 1)),    # west up, north right
])
def test_compass_directions_in_the_image(yaw, north_dir, east_dir):
    pose = CameraPose(E0, N0, 100.0, yaw)
    for (de, dn), expected in (((0, 20), north_dir), ((20, 0), east_dir)):
        u, v = project_ground_point(pose, CAM, E0 + de, N0 + dn)
        d = np.array([float(u) - 320, float(v) - 240])
        np.testing.assert_allclose(d / np.linalg.norm(d), expected, atol=1e-9)


def test_pitch_and_roll_directions():
    # Pitch forward: the nadir point moves towards the image bottom; roll right: it moves to the left.
    below = (E0, N0)
    u, v = project_ground_point(CameraPose(E0, N0, 100.0, 0.0, pitch_deg=10.0), CAM, *below)
    assert float(v) > 240 + 50 and float(u) == pytest.approx(320)
    u, v = project_ground_point(CameraPose(E0, N0, 100.0, 0.0, roll_deg=10.0), CAM, *below)
    assert float(u) < 320 - 50 and float(v) == pytest.approx(240)
    # The optical axis of a forward-pitched camera with yaw 90 hits the ground east of the camera.
    e, n = image_to_ground(CameraPose(E0, N0, 100.0, 90.0, pitch_deg=30.0), CAM, 320, 240)
    assert (float(e) - E0, float(n) - N0) == pytest.approx((100 * math.tan(math.radians(30)), 0), abs=1e-6)


def test_attitude_from_rotation_inverts_camera_rotation():
    rng = np.random.default_rng(7)
    for _ in range(500):
        yaw, pitch, roll = rng.uniform(0, 360), rng.uniform(-89, 89), rng.uniform(-89, 89)
        pose = CameraPose(E0, N0, 100.0, yaw, pitch, roll)
        assert attitude_from_rotation(camera_rotation(pose)) == pytest.approx((yaw, pitch, roll), abs=1e-9)
    assert attitude_from_rotation(camera_rotation(CameraPose(E0, N0, 1.0, -30.0)))[0] == pytest.approx(330.0)


def test_homography_matches_projection_and_inverse():
    rng = np.random.default_rng(1)
    for _ in range(10):
        pose = CameraPose(E0 + rng.uniform(-50, 50), N0 + rng.uniform(-50, 50), rng.uniform(50, 300),
                          rng.uniform(-180, 180), rng.uniform(-20, 20), rng.uniform(-20, 20))
        u = rng.uniform(0, 640, 50)
        v = rng.uniform(0, 480, 50)
        e, n = image_to_ground(pose, CAM, u, v)
        u2, v2 = project_ground_point(pose, CAM, e, n)
        np.testing.assert_allclose(u2, u, atol=1e-6)
        np.testing.assert_allclose(v2, v, atol=1e-6)
        h = ground_to_image_homography(pose, CAM)
        p = h @ np.stack([e, n, np.ones_like(e)])
        np.testing.assert_allclose(p[0] / p[2], u, atol=1e-6)
        np.testing.assert_allclose(p[1] / p[2], v, atol=1e-6)


def test_footprint_at_nadir():
    alt = 150.0
    fp = footprint(CameraPose(E0, N0, alt, 0.0), CAM)
    width = 2 * alt * math.tan(math.radians(35))
    height = width * 480 / 640
    np.testing.assert_allclose(fp, [[E0 - width / 2, N0 + height / 2], [E0 + width / 2, N0 + height / 2],
                                    [E0 + width / 2, N0 - height / 2], [E0 - width / 2, N0 - height / 2]],
                               atol=1e-6)
    rotated = footprint(CameraPose(E0, N0, alt, 90.0), CAM)  # top points east, left points north
    np.testing.assert_allclose(rotated[0], [E0 + height / 2, N0 + width / 2], atol=1e-6)


def test_horizon_is_refused_and_rendered_black():
    wide = CameraModel(640, 480, 100.0)
    pose = CameraPose(E0 + 200, N0 - 200, 100.0, 0.0, pitch_deg=60.0)  # top edge 60 + 41.8 deg: above horizon
    with pytest.raises(GeoError, match="horizon"):
        image_to_ground(pose, wide, 320, 0)
    with pytest.raises(GeoError, match="horizon"):
        footprint(pose, wide)
    o = _ortho(np.full((1600, 1600, 3), 200, np.uint8), 0.25)
    img = render_view(o, pose, wide)
    assert (img[:20] == 0).all() and (img[-20:] == 200).all()


@pytest.mark.parametrize("yaw, pitch, roll, alt", [
    (0.0, 0.0, 0.0, 80.0),
    (37.0, 10.0, -5.0, 80.0),
    (90.0, -15.0, 8.0, 120.0),
    (-135.0, 5.0, 12.0, 60.0),
    (170.0, -8.0, -12.0, 240.0),  # a coarse view: rendered from a downscaled pyramid level
])
def test_rendered_dots_land_at_projected_pixels(yaw, pitch, roll, alt):
    dots = [(E0 + 190.0, N0 - 210.0), (E0 + 215.0, N0 - 190.0), (E0 + 185.0, N0 - 185.0)]
    o = _dots_map(dots)
    pose = CameraPose(E0 + 198.0, N0 - 202.0, alt, yaw, pitch, roll)
    img = render_view(o, pose, CAM)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    for ch, (e, n) in enumerate(dots):
        u, v = project_ground_point(pose, CAM, e, n)
        assert 10 < float(u) < 630 and 10 < float(v) < 470
        assert _centroid(img[..., ch]) == pytest.approx((float(u), float(v)), abs=0.5)  # measured: < 0.06 px


def test_nadir_render_matches_the_rotated_tile():
    o = _ortho((synthetic_rgb(1200, 1200, 0.25, seed=11) * 255).astype(np.uint8), 0.25)
    cam = CameraModel(240, 240, 60.0)
    e, n = E0 + 150.0, N0 - 150.0
    size_m = 2 * 100.0 * math.tan(math.radians(30))
    lat, lon = o.map_to_wgs84(e, n)
    spec = TileSpec(0, 0, size_m, e, n, float(lat), float(lon))
    for yaw in (0.0, 90.0, -60.0):
        view = render_view(o, CameraPose(e, n, 100.0, yaw), cam).astype(float)
        tile = cut_tile(o, spec, 240, yaw).astype(float)
        assert np.corrcoef(view.ravel(), tile.ravel())[0, 1] > 0.97
    other = cut_tile(o, spec, 240, 180.0).astype(float)
    view0 = render_view(o, CameraPose(e, n, 100.0, 0.0), cam).astype(float)
    assert np.corrcoef(view0.ravel(), other.ravel())[0, 1] < 0.5


def test_outside_the_map_is_black():
    o = _ortho(np.full((400, 400, 3), 180, np.uint8), 0.25)  # 100 m × 100 m
    img = render_view(o, CameraPose(E0, N0, 80.0, 0.0), CAM)  # camera above the north-west corner
    assert (img[300:, 400:] == 180).all()  # south-east quadrant: map
    assert (img[:180, :] == 0).all() and (img[:, :260] == 0).all()  # north and west of the map: black


def test_render_is_anti_aliased():
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255
    o = _ortho(stripes, 0.1)
    img = render_view(o, CameraPose(E0 + 100, N0 - 100, 60.0, 20.0), CameraModel(128, 96, 70.0)).astype(float)
    assert abs(img.mean() - 127.5) < 8 and img.std() < 8


def test_photometric():
    img = (synthetic_rgb(160, 120, 0.5, seed=2) * 255).astype(np.uint8)
    cfg = RenderConfig()
    a = photometric(img, np.random.default_rng(5), cfg)
    b = photometric(img, np.random.default_rng(5), cfg)
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - img).mean() > 1
    assert np.corrcoef(a.ravel().astype(float), img.ravel().astype(float))[0, 1] > 0.8
    off = RenderConfig(brightness=0.0, contrast=0.0, blur_sigma_px=0.0, noise_std=0.0, jpeg_quality=[])
    np.testing.assert_array_equal(photometric(img, np.random.default_rng(5), off), img)
    dark = RenderConfig(brightness=0.5, contrast=0.0, blur_sigma_px=0.0, noise_std=0.0, jpeg_quality=[])
    means = [photometric(img, np.random.default_rng(s), dark).mean() for s in range(20)]
    assert min(means) < img.mean() * 0.8 and max(means) > img.mean() * 1.2


def test_random_poses_keep_the_footprint_inside():
    o = _ortho(np.zeros((2000, 2000, 3), np.uint8), 0.5)  # 1 km
    cfg = RenderConfig(altitude_m=[100.0, 150.0], max_yaw_deg=180.0, max_tilt_deg=15.0)
    poses = random_poses(o, 200, np.random.default_rng(0), cfg, CAM)
    left, bottom, right, top = o.bounds
    for p in poses:
        fp = footprint(p, CAM)
        assert (fp[:, 0] >= left - 1e-6).all() and (fp[:, 0] <= right + 1e-6).all()
        assert (fp[:, 1] >= bottom - 1e-6).all() and (fp[:, 1] <= top + 1e-6).all()
        assert 100 <= p.altitude_m <= 150 and abs(p.yaw_deg) <= 180
        assert abs(p.pitch_deg) <= 15 and abs(p.roll_deg) <= 15
    es = np.array([p.easting for p in poses])
    assert es.max() - es.min() > 600  # spread over the map, not clustered
    assert np.ptp([p.yaw_deg for p in poses]) > 300
    small = _ortho(np.zeros((200, 200, 3), np.uint8), 0.5)  # 100 m: a 150 m altitude footprint does not fit
    with pytest.raises(GeoError, match="does not fit inside the map"):
        random_poses(small, 1, np.random.default_rng(0), cfg, CAM)


@pytest.fixture(scope="module")
def small_map(tmp_path_factory):
    return write_synthetic_geotiff(tmp_path_factory.mktemp("render") / "map.tif", 512, 512, 0.5, seed=9)


def _cfg():
    cfg = Config()
    cfg.render.image_width_px, cfg.render.image_height_px = 160, 120
    cfg.render.altitude_m = [60.0, 80.0]
    return cfg


def test_render_dataset(small_map, tmp_path):
    out = render_dataset(small_map, tmp_path / "views", 6, seed=3, cfg=_cfg(), progress=False)
    assert out == tmp_path / "views"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"view_{i:05d}.jpg" for i in range(6)]
    with open(out / "poses.csv", newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == POSES_CSV_COLUMNS
    rows = read_poses_csv(out / "poses.csv")
    assert len(rows) == 6
    to_ll = Transformer.from_crs("EPSG:32613", "EPSG:4326", always_xy=True)
    for row in rows:
        img = cv2.imread(str(out / row["file"]))
        assert img.shape == (120, 160, 3)
        assert row["crs"] == "EPSG:32613"
        lon, lat = to_ll.transform(row["easting"], row["northing"])
        assert (row["lat"], row["lon"]) == pytest.approx((lat, lon), abs=1e-8)
        assert 60 <= row["altitude_m"] <= 80
        pose = CameraPose(row["easting"], row["northing"], row["altitude_m"], row["yaw_deg"], row["pitch_deg"],
                          row["roll_deg"])
        ce, cn = image_to_ground(pose, CameraModel(160, 120, 70.0), 80, 60)
        assert (row["center_easting"], row["center_northing"]) == pytest.approx((float(ce), float(cn)), abs=2e-3)
    assert (out / "render.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["views"]  # no temporary directory left behind


def test_render_dataset_altitude_override_and_content(small_map, tmp_path):
    cfg = _cfg()
    cfg.render.brightness = cfg.render.contrast = cfg.render.blur_sigma_px = cfg.render.noise_std = 0.0
    cfg.render.jpeg_quality = []
    out = render_dataset(small_map, tmp_path / "v", 2, seed=0, cfg=cfg, altitude_m=70.0, max_yaw_deg=0.0,
                         max_tilt_deg=0.0, progress=False)
    o = read_orthophoto(small_map)
    for row in read_poses_csv(out / "poses.csv"):
        assert row["altitude_m"] == 70.0 and row["yaw_deg"] == 0.0 and row["pitch_deg"] == 0.0
        saved = cv2.imread(str(out / row["file"]))[..., ::-1].astype(float)
        pose = CameraPose(row["easting"], row["northing"], 70.0, 0.0)
        expected = render_view(o, pose, CameraModel(160, 120, 70.0)).astype(float)
        assert np.abs(saved - expected).mean() < 4  # only the final JPEG encoding differs


def test_render_dataset_is_deterministic(small_map, tmp_path):
    a = render_dataset(small_map, tmp_path / "a", 4, seed=7, cfg=_cfg(), progress=False)
    b = render_dataset(small_map, tmp_path / "b", 4, seed=7, cfg=_cfg(), progress=False)
    c = render_dataset(small_map, tmp_path / "c", 4, seed=8, cfg=_cfg(), progress=False)
    assert (a / "poses.csv").read_text() == (b / "poses.csv").read_text()
    assert (a / "poses.csv").read_text() != (c / "poses.csv").read_text()
    for i in range(4):
        name = f"images/view_{i:05d}.jpg"
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_render_dataset_refuses_a_non_empty_out_dir(small_map, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(GeoError, match="busy.*not empty"):
        render_dataset(small_map, out, 2, seed=0, cfg=_cfg(), progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (render_dataset(small_map, empty, 1, seed=0, cfg=_cfg(), progress=False) / "poses.csv").is_file()


def test_render_dataset_failure_leaves_nothing(small_map, tmp_path):
    cfg = _cfg()
    cfg.render.altitude_m = [5000.0, 5000.0]  # footprint far larger than the 256 m map
    with pytest.raises(GeoError, match="does not fit"):
        render_dataset(small_map, tmp_path / "out", 2, seed=0, cfg=cfg, progress=False)
    assert list(tmp_path.iterdir()) == []
