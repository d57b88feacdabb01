"""build_index end to end on a synthetic GeoTIFF: tiles retrieve themselves, gallery rotations handle heading."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pyproj import CRS

from mobilegeo_ros.config import from_dict
from mobilegeo_ros.geo.raster import read_orthophoto
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.geo.tiles import cut_tile, tile_grid
from mobilegeo_ros.index import IndexFileError, TileIndex
from mobilegeo_ros.index.build import build_index, embed_tiles, gallery_rotations
from mobilegeo_ros.model import load_model
from mobilegeo_ros.model.weights import shipped_mobilenetv2_path

TILE_PX = 96  # small tiles and network input keep the whole file at a few seconds of CPU


def make_cfg(heading: str):
    return from_dict({"map": {"tile_sizes_m": [100.0], "overlap": 0.5, "tile_px": TILE_PX},
                      # the index mechanics are measured with the ImageNet weights, whose thresholds these are (the
                      # shipped student finds 82 % instead of >= 85 % of the 10°-off views on this synthetic map)
                      "model": {"input_px": TILE_PX, "weights": str(shipped_mobilenetv2_path())},
                      "index": {"kind": "flat", "heading": heading, "rotations": 4}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    map_path = write_synthetic_geotiff(root / "map.tif", 400, 400, 1.0, seed=5)  # 400 m square, 1 m/px
    cfg = make_cfg("gallery_rotations")
    model = load_model(cfg.model)
    rotated = TileIndex.load(build_index(map_path, root / "rot", cfg, model, progress=False), model.identity())
    north_up = TileIndex.load(build_index(map_path, root / "north", make_cfg("none"), model, progress=False),
                              model.identity())
    ortho = read_orthophoto(map_path, cfg.map)
    specs = tile_grid(ortho, cfg.map.tile_sizes_m, cfg.map.overlap)
    return {"root": root, "map": map_path, "cfg": cfg, "model": model, "rotated": rotated, "north_up": north_up,
            "ortho": ortho, "specs": specs}


def top1(index: TileIndex, model, ortho, specs, rotation_deg: float) -> tuple[float, Counter]:
    """Share of tiles whose crop at ``rotation_deg`` retrieves that tile first, and the best copies' rotations."""
    queries = model.embed([cut_tile(ortho, s, TILE_PX, rotation_deg) for s in specs])
    hits = index.search_tiles(queries, 1)
    rows = [h[0][0] for h in hits]
    correct = np.mean([index.columns["tile_id"][r] == s.tile_id for r, s in zip(rows, specs, strict=True)])
    return float(correct), Counter(float(index.columns["rotation_deg"][r]) for r in rows)


def test_index_layout_and_metadata(setup):
    index, specs, model = setup["rotated"], setup["specs"], setup["model"]
    assert len(specs) == 49  # 7×7 tiles of 100 m at a 50 m stride
    assert index.ntotal == 49 * 4 and index.rotations_per_tile == 4
    np.testing.assert_array_equal(index.columns["tile_id"], np.repeat([s.tile_id for s in specs], 4))
    np.testing.assert_array_equal(index.columns["rotation_deg"], np.tile([0.0, 90.0, 180.0, 270.0], 49))
    np.testing.assert_allclose(index.columns["center_e"][::4], [s.center_e for s in specs])
    np.testing.assert_allclose(index.columns["lat"][::4], [s.lat for s in specs])
    assert index.identity == model.identity()
    assert CRS.from_wkt(index.crs_wkt) == setup["ortho"].crs
    meta = json.loads((setup["root"] / "rot" / "index.json").read_text())
    assert meta["map"]["name"] == "map.tif" and meta["map"]["width_px"] == 400 and meta["map"]["gsd_m"] == 1.0
    assert meta["config"]["heading"] == "gallery_rotations" and meta["counts"]["tiles"] == 49
    assert not [p for p in setup["root"].iterdir() if p.name.startswith(".")]
    north = setup["north_up"]
    assert north.ntotal == 49 and (north.columns["rotation_deg"] == 0).all()


def test_every_tile_crop_retrieves_itself(setup):
    for key in ("rotated", "north_up"):
        correct, rotations = top1(setup[key], setup["model"], setup["ortho"], setup["specs"], 0.0)
        assert correct == 1.0 and rotations == Counter({0.0: 49})


def test_gallery_rotations_handle_a_rotated_camera(setup):
    model, ortho, specs = setup["model"], setup["ortho"], setup["specs"]
    correct_rot, rotations = top1(setup["rotated"], model, ortho, specs, 90.0)
    correct_north, _ = top1(setup["north_up"], model, ortho, specs, 90.0)
    assert correct_rot == 1.0 and rotations == Counter({90.0: 49})  # the 90° copy wins: it estimates the heading
    assert correct_north < 0.9  # north-up tiles alone lose many of the rotated views (measured ~0.63)
    # A heading between gallery copies (100°) still finds the tile, mostly through the nearest (90°) copy.
    correct_off, rotations_off = top1(setup["rotated"], model, ortho, specs, 100.0)
    assert correct_off >= 0.85 and rotations_off.most_common(1)[0][0] == 90.0


def test_embed_tiles_chunks_concatenate_to_the_index(setup):
    model, ortho, specs = setup["model"], setup["ortho"], setup["specs"]
    rots = gallery_rotations(setup["cfg"].index)
    assert rots == [0.0, 90.0, 180.0, 270.0]
    # Two shards of the tile list, as a distributed build would split them, in odd-sized chunks.
    parts = [list(embed_tiles(ortho, shard, rots, model, TILE_PX, batch_tiles=3)) for shard in (specs[:4],
                                                                                                  specs[4:7])]
    chunks = parts[0] + parts[1]
    assert [len(v) for _, v in chunks] == [12, 4, 12]
    vectors = np.concatenate([v for _, v in chunks])
    columns = {name: np.concatenate([c[name] for c, _ in chunks]) for name in chunks[0][0]}
    index = setup["rotated"]
    for name, col in columns.items():
        assert col.dtype == index.columns[name].dtype
        np.testing.assert_array_equal(col, index.columns[name][:28])
    np.testing.assert_allclose(vectors, index.index.reconstruct_n(0, 28), atol=1e-5)


def test_build_refuses_to_overwrite_a_foreign_directory(setup):
    target = setup["root"] / "not_an_index"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(IndexFileError, match="refusing"):
        build_index(setup["map"], target, setup["cfg"], setup["model"], progress=False)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
