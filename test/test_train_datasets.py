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
