"""TileIndex: faiss parity with brute force, approximate-index recall, atomic persistence, identity checks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mobilegeo_ros.config import IndexConfig
from mobilegeo_ros.index import tile_index as ti
from mobilegeo_ros.index.tile_index import (
    COLUMNS,
    IndexFileError,
    IndexMismatchError,
    TileIndex,
    group_by_tile,
)
from mobilegeo_ros.model.preprocess import preprocessing_spec

IDENTITY = {"model": "mobilenetv2_gem", "weights_sha256": "ab" * 32, "dim": 32,
            "preprocessing": preprocessing_spec(224), "gem_p": 3.0}
CRS_WKT = 'PROJCS["WGS 84 / UTM zone 13N"]'
MAP_INFO = {"name": "map.tif", "width_px": 100, "height_px": 100}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def columns(n_tiles: int, rotations: int) -> dict[str, np.ndarray]:
    n = n_tiles * rotations
    tid = np.repeat(np.arange(n_tiles), rotations)
    return {"tile_id": tid, "level": np.zeros(n), "size_m": np.full(n, 120.0),
            "rotation_deg": np.tile(np.arange(rotations) * 360.0 / rotations, n_tiles),
            "center_e": 487000.0 + 10.0 * tid, "center_n": 4444000.0 - 5.0 * tid,
            "lat": 40.1 + 1e-4 * tid, "lon": -105.1 + 1e-4 * tid}


def clustered(n: int, dim: int, seed: int, n_clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    return unit(centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.normal(size=(n, dim)))


def build(vectors: np.ndarray, rotations: int = 1, **cfg) -> TileIndex:
    return TileIndex.build(vectors, columns(len(vectors) // rotations, rotations), IDENTITY, CRS_WKT, MAP_INFO,
                           IndexConfig(**cfg))


def test_flat_search_equals_numpy_brute_force():
    x = unit(np.random.default_rng(0).normal(size=(600, 32)))
    q = unit(np.random.default_rng(1).normal(size=(25, 32)))
    index = build(x, kind="flat")
    scores, rows = index.search(q, 10)
    sims = q @ x.T
    expected = np.argsort(-sims, axis=1)[:, :10]
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (25, 10)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize("cfg", [{"kind": "ivf", "ivf_nlist": 40, "ivf_nprobe": 8},
                                 {"kind": "hnsw", "hnsw_m": 16, "hnsw_ef_search": 64}])
def test_approximate_indexes_have_high_recall(cfg):
    x = clustered(4000, 32, seed=2)
    rng = np.random.default_rng(3)
    q = unit(x[rng.integers(0, len(x), 200)] + 0.3 * rng.normal(size=(200, 32)))
    index = build(x, **cfg)
    assert index.kind == cfg["kind"]
    exact = np.argmax(q @ x.T, axis=1)
    _, rows = index.search(q, 1)
    recall = float(np.mean(rows[:, 0] == exact))
    assert recall >= 0.9, recall


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_ivf_with_too_few_vectors_falls_back_to_flat():
    # A handler on the module logger itself: the ROS launch pytest plugin installs a logger class with
    # propagate=False, so records never reach pytest's caplog handler on the root logger.
    records = _Records()
    ti.log.addHandler(records)
    try:
        x = unit(np.random.default_rng(4).normal(size=(300, 32)))
        index = build(x, kind="ivf")  # nlist = 4*sqrt(300) = 69 lists need 2691 vectors
    finally:
        ti.log.removeHandler(records)
    assert index.kind == "flat" and any("too few" in m for m in records.messages)
    _, rows = index.search(x[:5], 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(5))


def test_search_pads_and_validates():
    index = build(unit(np.random.default_rng(5).normal(size=(4, 32))))
    scores, rows = index.search(unit(np.random.default_rng(6).normal(size=(2, 32))), 6)
    assert rows.shape == (2, 6) and (rows[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert (rows[:, :4] >= 0).all() and np.isfinite(scores[:, :4]).all()
    with pytest.raises(ValueError, match="Q×32"):
        index.search(np.zeros((1, 16), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.zeros((1, 32), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        build(np.full((2, 32), np.nan, np.float32))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    x = clustered(2000, 32, seed=7)
    index = build(x, rotations=4, kind=kind, ivf_nlist=16, ivf_nprobe=4, hnsw_m=8, hnsw_ef_search=32)
    q = x[::97] + 0.01
    before = index.search(q, 5)
    out = index.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "index.json", "tiles.npz"]
    loaded = TileIndex.load(out, expected_identity=IDENTITY)
    after = loaded.search(q, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert loaded.kind == kind and loaded.config == index.config and loaded.fingerprint == index.fingerprint
    assert loaded.crs_wkt == CRS_WKT and loaded.map_info == MAP_INFO and loaded.created == index.created
    for name, dtype in COLUMNS.items():
        assert loaded.columns[name].dtype == dtype
        np.testing.assert_array_equal(loaded.columns[name], index.columns[name])
    meta = json.loads((out / "index.json").read_text())
    assert meta["format_version"] == 1 and meta["counts"] == {"vectors": 2000, "tiles": 500,
                                                               "rotations_per_tile": 4, "dim": 32}


def test_atomic_save_replaces_only_index_dirs_and_leaves_no_temp(tmp_path, monkeypatch):
    x = unit(np.random.default_rng(8).normal(size=(50, 32)))
    first, second = build(x), build(x[::-1].copy())
    out = first.save(tmp_path / "idx")
    second.save(out)  # replacing an existing index is allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    np.testing.assert_array_equal(TileIndex.load(out).search(x[:1], 1)[1], [[49]])

    # A failure half-way leaves the previous index intact and no temporary directory behind.
    def broken_write(*_a):
        raise OSError("disk full")
    monkeypatch.setattr(ti.faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        first.save(out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    np.testing.assert_array_equal(TileIndex.load(out).search(x[:1], 1)[1], [[49]])

    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(IndexFileError, match="not a saved index"):
        first.save(user_dir)
    assert [p.name for p in user_dir.iterdir()] == ["holiday.jpg"]
    (out / "notes.txt").write_text("mine")  # an index dir with a foreign file is no longer safe to replace
    with pytest.raises(IndexFileError, match="refusing"):
        first.save(out)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(IndexFileError, match="not a directory"):
        first.save(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    first.save(empty)
    assert (empty / "index.faiss").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("change, expected", [
    ({"weights_sha256": "cd" * 32}, "weights hash"),
    ({"model": "resnet_gem"}, "model name: index 'mobilenetv2_gem' vs model 'resnet_gem'"),
    ({"dim": 64}, "dimension: index 32 vs model 64"),
    ({"preprocessing": preprocessing_spec(160)}, "preprocessing input_px: index 224 vs model 160"),
    ({"gem_p": 4.0}, "GeM p"),
])
def test_load_refuses_a_mismatched_model(tmp_path, change, expected):
    out = build(unit(np.random.default_rng(9).normal(size=(20, 32)))).save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError) as err:
        TileIndex.load(out, expected_identity={**IDENTITY, **change})
    assert expected in str(err.value) and "mobilegeo build-index" in str(err.value)
    assert TileIndex.load(out, expected_identity=dict(IDENTITY)).ntotal == 20


def test_missing_and_corrupt_files_raise_index_file_error(tmp_path):
    good = build(unit(np.random.default_rng(10).normal(size=(40, 32))))

    def fresh(name: str):
        return good.save(tmp_path / name)

    with pytest.raises(IndexFileError, match="does not exist"):
        TileIndex.load(tmp_path / "nowhere")
    d = fresh("no_tiles")
    (d / "tiles.npz").unlink()
    with pytest.raises(IndexFileError, match="tiles.npz.*missing"):
        TileIndex.load(d)
    d = fresh("trunc_faiss")
    data = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="index.faiss.*truncated or corrupt"):
        TileIndex.load(d)
    d = fresh("trunc_npz")
    data = (d / "tiles.npz").read_bytes()
    (d / "tiles.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="tiles.npz.*truncated or corrupt"):
        TileIndex.load(d)
    d = fresh("bad_json")
    (d / "index.json").write_text('{"format": "mobilegeo_ros.tile_index", ')
    with pytest.raises(IndexFileError, match="index.json.*not valid JSON"):
        TileIndex.load(d)
    d = fresh("edited_identity")
    meta = json.loads((d / "index.json").read_text())
    meta["identity"]["weights_sha256"] = "00" * 32
    (d / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="fingerprint does not match"):
        TileIndex.load(d)
    d = fresh("pickled_npz")
    np.savez(d / "tiles.npz", **{**good.columns, "tile_id": np.array([object()] * 40, dtype=object)})
    with pytest.raises(IndexFileError, match="tiles.npz"):
        TileIndex.load(d)
    d = fresh("wrong_count")
    np.savez(d / "tiles.npz", **{k: v[:10] for k, v in good.columns.items()})
    with pytest.raises(IndexFileError, match="do not have 40 rows"):
        TileIndex.load(d)


def test_group_by_tile_merges_rotated_copies():
    tile_ids = np.array([0, 0, 1, 1, 2, 2])  # two copies (rotations 0 and 180) per tile
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, -np.inf],
                       [0.95, 0.4, 0.3, -np.inf, -np.inf, -np.inf]], np.float32)
    rows = np.array([[3, 2, 1, 5, 4, -1], [4, 0, 1, -1, -1, -1]])
    out = group_by_tile(scores, rows, tile_ids, k=5)
    assert out[0] == [(3, pytest.approx(0.9)), (1, pytest.approx(0.7)), (5, pytest.approx(0.6))]
    assert out[1] == [(4, pytest.approx(0.95)), (0, pytest.approx(0.4))]
    assert group_by_tile(scores, rows, tile_ids, k=1) == [[(3, pytest.approx(0.9))], [(4, pytest.approx(0.95))]]


def test_search_tiles_returns_distinct_tiles_with_best_rotation():
    x = clustered(400, 32, seed=11)  # 100 tiles × 4 rotations
    index = build(x, rotations=4)
    hits = index.search_tiles(x[[6, 101]], k=3)
    assert hits[0][0][0] == 6 and hits[1][0][0] == 101
    for per_query in hits:
        tiles = [index.columns["tile_id"][r] for r, _ in per_query]
        assert len(per_query) == 3 and len(set(tiles)) == 3
        assert [s for _, s in per_query] == sorted((s for _, s in per_query), reverse=True)
    assert index.columns["rotation_deg"][hits[0][0][0]] == 180.0


IDENTITY16 = {**IDENTITY, "dim": 16}


@pytest.fixture(scope="module")
def pq():
    """12000 clustered 16-d vectors (>= 39 × 256 points: each sub-quantizer's 256 codewords train), an exact index
    and the ``auto`` index that their size turns into ivf_pq (4 bytes a vector instead of 64), trained once."""
    x = clustered(12000, 16, seed=11)
    cols = columns(12000, 1)
    exact = TileIndex.build(x, cols, IDENTITY16, CRS_WKT, MAP_INFO, IndexConfig(kind="flat"))
    cfg = IndexConfig(kind="auto", auto_flat_max_mib=0.5, ivf_nlist=16, ivf_nprobe=16, pq_bytes=4)
    return x, exact, TileIndex.build(x, cols, IDENTITY16, CRS_WKT, MAP_INFO, cfg)


def test_ivf_pq_save_load_keeps_codes_fingerprint_and_recall(tmp_path, pq):
    x, exact, index = pq
    assert index.kind == "ivf_pq"  # auto: 0.73 MiB of float32 vectors > auto_flat_max_mib 0.5
    q = unit(x[::300] + 0.05 * np.random.default_rng(3).normal(size=(40, 16)))
    before = index.search(q, 10)
    # recall of the compressed index against exact search
    truth = exact.search(q, 1)[1][:, 0]
    assert np.mean([t in r for t, r in zip(truth, before[1], strict=True)]) >= 0.8
    out = index.save(tmp_path / "pq")
    # 4 code bytes + an 8-byte id a vector (144 kB) plus codebooks, and the precomputed residual tables faiss adds
    # once the index has been searched (64 kB; measured: 0.34 of the flat file after other tests searched it):
    # far below the flat index's 64 bytes a vector (768 kB)
    assert (out / "index.faiss").stat().st_size < 0.4 * exact.save(tmp_path / "flat").joinpath(
        "index.faiss").stat().st_size
    loaded = TileIndex.load(out, expected_identity=IDENTITY16)
    assert loaded.kind == "ivf_pq" and loaded.config.pq_bytes == 4 and loaded.fingerprint == index.fingerprint
    after = loaded.search(q, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    meta = json.loads((out / "index.json").read_text())
    assert meta["kind"] == "ivf_pq" and meta["config"]["kind"] == "auto"
    # a model with other weights is refused, as for every kind
    with pytest.raises(IndexMismatchError, match="weights"):
        TileIndex.load(out, expected_identity={**IDENTITY16, "weights_sha256": "cd" * 32})
    # an edited identity no longer matches the stored fingerprint
    meta["identity"]["gem_p"] = 4.0
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="fingerprint"):
        TileIndex.load(out)


def test_auto_kind_is_flat_while_small_and_too_few_vectors_fall_back_to_flat(pq):
    x32 = unit(np.hstack([pq[0], pq[0]]))  # 12000 × 32: 1.46 MiB of float32
    assert build(x32, kind="auto", auto_flat_max_mib=2.0).kind == "flat"
    # too few vectors to train the product quantizer: exact search instead
    assert build(x32[:3000], kind="ivf_pq", ivf_nlist=16, pq_bytes=8).kind == "flat"


@pytest.mark.parametrize("kind", ["flat", "ivf_pq"])
def test_search_rows_is_exhaustive_on_the_subset(kind, pq):
    x, exact, compressed = pq
    index = exact if kind == "flat" else compressed
    rows = np.random.default_rng(4).choice(12000, 700, replace=False)
    q = x[rows[5]]
    scores, found = index.search_rows(q, rows, 20)
    assert set(found.tolist()) <= set(rows.tolist()) and len(found) == 20
    assert (np.diff(scores) <= 0).all()
    if kind == "flat":
        np.testing.assert_array_equal(found, rows[np.argsort(-(x[rows] @ q), kind="stable")[:20]])
        assert found[0] == rows[5]
    else:
        # the decoded codes score exactly what an all-lists search of the index scores
        full_scores, full_rows = index.search(q[None], 12000)
        by_row = dict(zip(full_rows[0].tolist(), full_scores[0].tolist(), strict=True))
        np.testing.assert_allclose(scores, [by_row[r] for r in found.tolist()], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="rows outside"):
        index.search_rows(q, np.array([12000]), 1)
