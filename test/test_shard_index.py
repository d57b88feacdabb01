"""Index embedding sharded over 2 CPU processes with torchrun (gloo) equals the single-process build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mobilegeo_ros.config import from_dict, to_dict
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.index import TileIndex
from mobilegeo_ros.index.build import build_index
from mobilegeo_ros.index.sharded import shard_bounds

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n, world, align", [(49, 2, 8), (49, 3, 4), (5, 4, 2), (0, 2, 8), (64, 2, 32)])
def test_shard_bounds_cover_every_tile_once_on_chunk_boundaries(n, world, align):
    bounds = [shard_bounds(n, world, r, align) for r in range(world)]
    covered = [i for lo, hi in bounds for i in range(lo, hi)]
    assert covered == list(range(n))  # disjoint, contiguous, in rank order
    assert all(lo % align == 0 or lo == n for lo, _ in bounds)
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 2 * align  # whole chunks per rank; the last chunk may be partial


def test_torchrun_two_processes_equals_single_process(tmp_path):
    map_path = write_synthetic_geotiff(tmp_path / "map.tif", 400, 300, 1.0, seed=8)
    # num_threads 1: two ranks on two cores; batch_size 12 with 3 rotations = 4 tiles per forward pass, so the
    # 35 tiles make 9 chunks split 5/4 over the ranks.
    cfg = from_dict({"map": {"tile_sizes_m": [100.0], "overlap": 0.5, "tile_px": 64},
                     "model": {"input_px": 64, "num_threads": 1, "batch_size": 12},
                     "index": {"kind": "flat", "heading": "gallery_rotations", "rotations": 3}})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    single = TileIndex.load(build_index(map_path, tmp_path / "single", cfg, progress=False))

    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                           "mobilegeo_ros.index.sharded", str(map_path), "--out", str(tmp_path / "sharded"),
                           "--config", str(cfg_path), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "index written to" in proc.stdout
    sharded = TileIndex.load(tmp_path / "sharded")

    assert sharded.ntotal == single.ntotal == 35 * 3
    for name in single.columns:
        np.testing.assert_array_equal(sharded.columns[name], single.columns[name], err_msg=name)
    v_single = single.index.reconstruct_n(0, single.ntotal)
    v_sharded = sharded.index.reconstruct_n(0, sharded.ntotal)
    # Same images in the same forward batches: equal up to float rounding of thread scheduling.
    np.testing.assert_allclose(v_sharded, v_single, rtol=0, atol=1e-6)
    assert sharded.identity == single.identity
    meta_s = json.loads((tmp_path / "sharded" / "index.json").read_text())
    meta_1 = json.loads((tmp_path / "single" / "index.json").read_text())
    assert meta_s["map"] == meta_1["map"] and meta_s["identity"] == meta_1["identity"]


def test_torchrun_refuses_bad_output_on_every_rank(tmp_path):
    map_path = write_synthetic_geotiff(tmp_path / "map.tif", 200, 200, 1.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("user file")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                           "mobilegeo_ros.index.sharded", str(map_path), "--out", str(tmp_path / "busy"), "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "refusing to overwrite" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
