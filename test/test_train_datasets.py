"""Dataset readers on fixture trees in the exact University-1652 / SUES-200 layouts, and the synthetic split."""

import cv2
import numpy as np
import pytest

from mobilegeo_ros.config import RenderConfig
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.train.datasets import (
    DatasetError,
    OrthoDataConfig,
    SyntheticOrtho,
    split_locations,
    sues200_task,
    sues200_train,
    university1652_task,
    university1652_train,
    view_radius_m,
)
from mobilegeo_ros.train.loop import unique_class_batches


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


def _tree(base, folders, classes, per_class):
    for folder, n in zip(folders, per_class):
        for c in classes:
            for k in range(n):
                _img(base / folder / c / f"image-{k:02d}.jpeg", (int(c) * 10 + k) % 255)


def test_university1652_layout(tmp_path):
    _tree(tmp_path / "train", ["drone", "satellite"], ["0001", "0002", "0005"], [3, 1])
    _tree(tmp_path / "test", ["query_drone", "gallery_satellite", "query_satellite", "gallery_drone"],
          ["0010", "0011"], [2, 1, 1, 2])
    _img(tmp_path / "test" / "gallery_satellite" / "0099" / "0099.jpg", 7)  # distractor building
    train = university1652_train(tmp_path)
    assert len(train) == 9 and train.num_classes == 3
    drone, sat, label = train[4]
    assert drone.shape == sat.shape == (8, 8, 3) and label == 1 and drone[0, 0, 0] == 21
    q, g = university1652_task(tmp_path, "drone2sat")
    assert len(q) == 4 and q.labels.tolist() == [10, 10, 11, 11]
    assert g.labels.tolist() == [10, 11, 99] and q.image(0).dtype == np.uint8
    q, g = university1652_task(tmp_path, "sat2drone")
    assert q.labels.tolist() == [10, 11] and len(g) == 4


def test_sues200_layout_and_errors(tmp_path):
    for alt in ("150", "300"):
        _tree(tmp_path / "Training" / alt, ["drone", "satellite"], ["0001", "0002"], [2, 1])
        _tree(tmp_path / "Testing" / alt, ["query_drone", "gallery_satellite", "query_satellite", "gallery_drone"],
              ["0003"], [2, 1, 1, 2])
    assert len(sues200_train(tmp_path, 300)) == 4
    q, g = sues200_task(tmp_path, 150, "drone2sat")
    assert len(q) == 2 and g.labels.tolist() == [3]
    with pytest.raises(DatasetError, match="250"):
        sues200_train(tmp_path, 250)
    (tmp_path / "Training" / "150" / "satellite" / "0002" / "image-00.jpeg").unlink()
    with pytest.raises(DatasetError, match="0002"):
        sues200_train(tmp_path, 150)
    bad = tmp_path / "Training" / "300" / "drone" / "0001" / "image-00.jpeg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="image-00"):
        sues200_train(tmp_path, 300)[0]


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    return read_orthophoto(write_synthetic_geotiff(tmp_path_factory.mktemp("map") / "map.tif", 1024, 512, 1.0))


RENDER = RenderConfig(altitude_m=[40.0, 50.0], max_tilt_deg=10.0, hfov_deg=60.0)


def test_synthetic_split_has_a_spatial_gap(ortho):
    cfg = OrthoDataConfig(tile_size_m=60, spacing_m=40, views=4, out_px=64, gap_m=10.0)
    splits = split_locations(ortho, cfg, RENDER)
    reach = max(30 * np.sqrt(2), view_radius_m(RENDER))
    assert len(splits["train"]) > 0 and len(splits["test"]) > 0
    # whatever a train location shows (tile, drone views) stays gap_m away from what a test location shows
    assert splits["train"][:, 0].max() + reach + 10.0 <= splits["test"][:, 0].min() - reach + 1e-6


def test_synthetic_pairs_views_look_at_the_location(ortho):
    cfg = OrthoDataConfig(tile_size_m=60, spacing_m=40, views=6, out_px=64)
    ds = SyntheticOrtho(ortho, "test", cfg, RENDER, seed=3)
    assert len(ds) == 6 * ds.num_classes and ds.labels[7] == 1
    drone, sat, label = ds[7]
    assert drone.shape == sat.shape == (64, 64, 3) and label == 1
    np.testing.assert_array_equal(ds.drone(1, 1, epoch=0), ds.drone(1, 1, epoch=0))
    ds.set_epoch(1)
    assert not np.array_equal(ds[7][0], ds.drone(1, 1, epoch=0))
    # the image centre of every view is the location centre
    from mobilegeo_ros.geo.render import image_to_ground
    rng = np.random.default_rng(0)
    for k in range(6):
        pose = ds.pose(1, k, rng)
        e, n = image_to_ground(pose, ds.camera, np.array([32.0]), np.array([32.0]))
        assert np.hypot(e[0] - ds.centers[1][0], n[0] - ds.centers[1][1]) < 1e-6
    yaws = [ds.pose(1, k, rng).yaw_deg % 360 for k in range(6)]
    assert len({int(y // 60) for y in yaws}) >= 5  # an orbit: the yaws cover the circle
    q, g = ds.retrieval_task("drone2sat", views=2)
    assert len(q) == 2 * ds.num_classes and len(g) == ds.num_classes
    with pytest.raises(DatasetError, match="no val locations"):
        SyntheticOrtho(ortho, "val", cfg, RENDER)


def test_unique_class_batches():
    labels = np.repeat(np.arange(5), [3, 1, 2, 4, 1])
    batches = unique_class_batches(labels, 3, seed=0)
    flat = np.concatenate(batches)
    assert all(len(set(labels[b].tolist())) == len(b) for b in batches)
    assert len(set(flat.tolist())) == len(flat) and len(flat) >= len(labels) - 1  # each pair at most once
    assert [b.tolist() for b in unique_class_batches(labels, 3, 0)] == [b.tolist() for b in batches]


def test_index_pairing_matches_the_tile_the_node_would_match(ortho):
    """pairing: index — the satellite of a view is the index tile nearest in size and gallery rotation, and that
    tile looks like a nadir view of the same ground (closer than the north-up location tile)."""
    from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
    from mobilegeo_ros.train.datasets import central_square_fov_deg

    render = RenderConfig(altitude_m=[40.0, 60.0], max_tilt_deg=0.0, hfov_deg=70.0, brightness=0.0, contrast=0.0,
                          blur_sigma_px=0.0, noise_std=0.0, jpeg_quality=[])
    fov = central_square_fov_deg(render)
    assert fov == pytest.approx(2 * np.degrees(np.arctan(np.tan(np.radians(35)) * 480 / 640)))
    cfg = OrthoDataConfig(tile_size_m=60, spacing_m=40, views=8, out_px=64, pairing="index",
                          tile_sizes_m=(40.0, 60.0, 90.0), rotations=8, view_hfov_deg=fov)
    ds = SyntheticOrtho(ortho, "train", cfg, render, seed=1)
    # sizes: nearest (in log scale) to the footprint side 2·alt·tan(fov/2); rotations: nearest multiple of 45°
    side_45 = 45.0 / (2 * np.tan(np.radians(fov) / 2))  # altitude whose footprint is 45 m
    assert ds.index_tile_for(CameraPose(0, 0, side_45, 10.0, 0, 0)) == (40.0, 0.0)
    assert ds.index_tile_for(CameraPose(0, 0, 2.0 * side_45, -30.0, 0, 0)) == (90.0, 315.0)
    assert ds.index_tile_for(CameraPose(0, 0, 60 / 45 * side_45, 160.0, 0, 0))[1] == 180.0
    for i in range(0, 8, 3):
        drone, sat, label = ds[i]
        _, pose = ds._drone_and_pose(label, i % 8)
        size, rot = ds.index_tile_for(pose)
        assert np.array_equal(sat, ds.satellite(label, size, rot))
        ideal = render_view(ds.ortho, pose, CameraModel(64, 64, fov)).astype(float)
        aligned = np.abs(ideal - sat.astype(float)).mean()
        north_up = np.abs(ideal - ds.satellite(label).astype(float)).mean()
        assert aligned < north_up, (i, pose.yaw_deg, aligned, north_up)
    with pytest.raises(DatasetError, match="pairing"):
        SyntheticOrtho(ortho, "train", OrthoDataConfig(pairing="nearest"), render)


def test_aligned_collate_rotates_both_images_of_a_pair():
    from mobilegeo_ros.train.loop import collate

    drone = np.zeros((32, 32, 3), np.uint8)
    drone[:8, :8] = 255  # a bright top-left corner in both images
    items = [(drone, drone.copy(), 0)] * 16
    d, s, _ = collate(items, 32, np.random.default_rng(0), aligned=True)
    assert torch_equal(d, s)
    d, s, _ = collate(items, 32, np.random.default_rng(0), aligned=False)
    assert not torch_equal(d, s)  # the satellite alone is rotated


def torch_equal(a, b):
    return bool((a == b).all())
