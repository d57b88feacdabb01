"""The `mobilegeo` command line end to end on a synthetic GeoTIFF, and its one-line errors for user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilegeo_ros.geo.render import read_poses_csv
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

ROOT = Path(__file__).resolve().parents[1]

SMALL_CONFIG = """
map:
  tile_sizes_m: [80]
  overlap: 0.5
index:
  rotations: 4
render:
  image_width_px: 320
  image_height_px: 240
  altitude_m: [70, 80]
  max_tilt_deg: 5
  noise_std: 2
"""


def mobilegeo(*args, check=True):
    """Run the CLI of the working tree in a subprocess; returns the CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "mobilegeo_ros.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"mobilegeo {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def assert_user_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mobilegeo: error:"), r.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 320 m synthetic map, its index and 6 rendered views (built once for the module)."""
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "small.yaml"
    cfg.write_text(SMALL_CONFIG)
    tif = write_synthetic_geotiff(d / "map.tif", width_px=640, height_px=640, gsd_m=0.5, seed=3)
    mobilegeo("build-index", tif, "--out", d / "index", "--config", cfg, "--quiet")
    mobilegeo("render", tif, "--out", d / "views", "--n", 6, "--seed", 5, "--config", cfg, "--quiet")
    return {"dir": d, "cfg": cfg, "tif": tif, "index": d / "index", "views": d / "views"}


def test_build_index_writes_an_index_directory(world):
    # (map_features/ appears beside them once a registration ran on this index: tests run in any order)
    files = sorted(p.name for p in world["index"].iterdir() if p.name != "map_features")
    assert files == ["index.faiss", "index.json", "tiles.npz"]
    info = json.loads((world["index"] / "index.json").read_text())
    assert info["map"]["build_config"]["map"]["tile_sizes_m"] == [80.0]
    # no temporary directories left next to it
    assert [p.name for p in world["dir"].iterdir() if p.name.startswith(".")] == []


def test_render_writes_images_and_poses(world):
    rows = read_poses_csv(world["views"] / "poses.csv")
    assert len(rows) == 6
    assert all((world["views"] / r["file"]).is_file() for r in rows)
    assert {"lat", "lon", "altitude_m", "yaw_deg", "pitch_deg", "roll_deg", "easting", "northing", "crs"} <= set(rows[0])
    assert all(70 <= r["altitude_m"] <= 80 for r in rows)


def test_localize_json_finds_the_rendered_views(world):
    rows = read_poses_csv(world["views"] / "poses.csv")
    images = [world["views"] / r["file"] for r in rows]
    r = mobilegeo("localize", "--index", world["index"], *images, "--json", "--hfov-deg", 70)
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["image"] for o in out] == [str(p) for p in images]
    for o in out:
        assert {"image", "lat", "lon", "sigma_m", "score", "status"} <= set(o)
        assert o["status"] in ("verified", "no_fix")  # independent photos: nothing to track, nothing unverified
    # Registered on the map with the field of view known, the camera pose is solved: the fix is the drone's
    # nadir point (poses.csv lat/lon), not the image centre (up to ALT·tan(5°) ≈ 7 m away), within metres.
    errs = []
    for o, row in zip(out, rows):
        if o["status"] == "verified":
            errs.append(np.hypot(o["lat"] - row["lat"], (o["lon"] - row["lon"]) * np.cos(np.radians(row["lat"]))) * 111e3)
            assert o["altitude_m"] == pytest.approx(row["altitude_m"], rel=0.1)
    assert sum(e < 5.0 for e in errs) >= 4, errs


def test_help_lists_the_verbs():
    r = mobilegeo("--help")
    for verb in ("build-index", "render", "localize", "demo"):
        assert verb in r.stdout
    assert "--max-tilt-deg" in mobilegeo("render", "--help").stdout


def test_user_mistakes_are_one_line_errors(world, tmp_path):
    assert_user_error(mobilegeo("build-index", tmp_path / "missing.tif", "--out", tmp_path / "i", check=False),
                      "missing.tif")
    plain = tmp_path / "plain.tif"
    plain.write_text("not a raster")
    assert_user_error(mobilegeo("build-index", plain, "--out", tmp_path / "i", check=False), "plain.tif")
    assert not (tmp_path / "i").exists()
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("map:\n  tile_size_m: 3\n")
    assert_user_error(mobilegeo("build-index", world["tif"], "--out", tmp_path / "i", "--config", bad_cfg,
                                check=False), "unknown key 'map.tile_size_m'")
    assert_user_error(mobilegeo("localize", "--index", world["index"], check=False), "no images")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0garbage")
    assert_user_error(mobilegeo("localize", "--index", world["index"], corrupt, check=False), "corrupt.jpg")
    view = next((world["views"] / "images").iterdir())
    assert_user_error(mobilegeo("localize", "--index", tmp_path / "noindex", view, check=False), "noindex")
    assert_user_error(mobilegeo("render", world["tif"], "--out", world["views"], "--n", 1, "--seed", 0,
                                check=False), "not empty")


@pytest.mark.parametrize("flag,value,fragment", [("--hfov-deg", "0", "(0, 180)"), ("--hfov-deg", "200", "(0, 180)"),
                                                 ("--altitude-m", "-5", "--altitude-m -5"),
                                                 ("--pitch-deg", "nan", "not a finite number"),
                                                 ("--roll-deg", "95", "(-90, 90)"), ("--yaw-deg", "inf", "finite")])
def test_impossible_priors_are_refused(world, flag, value, fragment):
    view = next((world["views"] / "images").iterdir())
    assert_user_error(mobilegeo("localize", "--index", world["index"], view, flag, value, check=False), flag,
                      fragment)


def test_index_built_with_another_model_is_refused(world, tmp_path):
    other = tmp_path / "other.yaml"
    from mobilegeo_ros.model.weights import resolve_default_weights, shipped_mobilenetv2_path

    # the index was built with the default weights; configure the other of ImageNet / the shipped student
    imagenet = shipped_mobilenetv2_path()
    weights = imagenet if resolve_default_weights("") != imagenet else None
    other.write_text(SMALL_CONFIG + ("model:\n  gem_p: 4.0\n" if weights is None else
                                     f"model:\n  weights: {weights}\n"))
    view = next((world["views"] / "images").iterdir())
    r = mobilegeo("localize", "--index", world["index"], view, "--config", other, check=False)
    assert_user_error(r, "different embedding model")


def test_config_contradicting_the_index_rotations_is_refused(world, tmp_path):
    eight = tmp_path / "eight.yaml"
    eight.write_text(SMALL_CONFIG.replace("rotations: 4", "rotations: 8"))
    view = next((world["views"] / "images").iterdir())
    r = mobilegeo("localize", "--index", world["index"], view, "--config", eight, check=False)
    assert_user_error(r, "index.rotations:", "built with 4", "says 8")


def test_non_georeferenced_tiff_is_refused(tmp_path):
    import rasterio

    path = tmp_path / "nogeo.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 100, 100), np.uint8))
    assert_user_error(mobilegeo("build-index", path, "--out", tmp_path / "i", check=False), "georeferenced")
