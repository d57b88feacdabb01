"""The facts an index records come from the index: a runtime config that contradicts them is refused at start with
the key named, and search-time knobs given at run time are the ones used."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.index.facts import IndexFacts, IndexFileError, IndexMismatchError, check_runtime_config
from mobilegeo_ros.index.tile_index import COLUMNS, TileIndex
from mobilegeo_ros.localizer import Localizer
from synthetic_world import SMALL_CONFIG, synthetic_setup

IVF_CONFIG = {**SMALL_CONFIG, "index": {"rotations": 4, "kind": "ivf", "ivf_nlist": 2, "ivf_nprobe": 1}}


def with_index(overrides: dict, **index_keys) -> config_mod.Config:
    data = json.loads(json.dumps(overrides))
    data["index"] = {**data.get("index", {}), **index_keys}
    return config_mod.from_dict(data)


@pytest.fixture(scope="module")
def small():
    return synthetic_setup()  # 4 gallery rotations


def test_facts_are_read_from_index_json(small):
    facts = IndexFacts.read(small.index_dir)
    assert facts.heading == "gallery_rotations" and facts.rotations == 4
    assert facts.tile_sizes_m == [60.0] and facts.kind == "flat"
    assert facts.identity["dim"] > 0 and facts.map_info["name"] == "map.tif"
    assert facts.build_config().index.rotations == 4


def test_rotations_mismatch_is_refused_at_start_naming_the_key(small):
    cfg = with_index(small.overrides, rotations=8)
    with pytest.raises(IndexMismatchError) as e:
        Localizer.from_files(small.index_dir, cfg)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("index.rotations: ") and "built with 4" in message and "says 8" in message
    assert str(small.index_dir) in message


def test_heading_mismatch_is_refused_naming_the_key(small):
    with pytest.raises(IndexMismatchError, match=r"^index.heading: .*gallery_rotations.*query_rotations"):
        check_runtime_config(IndexFacts.read(small.index_dir), with_index(small.overrides, heading="query_rotations"))


def test_matching_config_and_north_up_variants_are_accepted(small):
    facts = IndexFacts.read(small.index_dir)
    check_runtime_config(facts, small.cfg)
    # keys the runtime does not read are the index's business: another faiss kind or tile size is not refused
    other = with_index({**small.overrides, "map": {"tile_sizes_m": [90.0]}}, kind="hnsw")
    check_runtime_config(facts, other)
    north_up = IndexFacts.from_metadata({**_metadata(small), "config": {"heading": "none", "rotations": 1}},
                                        small.index_dir)
    check_runtime_config(north_up, with_index(small.overrides, heading="query_rotations", rotations=8))


def _metadata(setup) -> dict:
    return json.loads((setup.index_dir / "index.json").read_text())


def test_runtime_nprobe_is_the_one_searched_with():
    setup = synthetic_setup(overrides=IVF_CONFIG)  # built and stored with ivf_nprobe 1
    assert IndexFacts.read(setup.index_dir).kind == "ivf"
    loc = Localizer.from_files(setup.index_dir, with_index(setup.overrides, ivf_nprobe=2))
    assert faiss.extract_index_ivf(loc.index.index).nprobe == 2
    stored = Localizer.from_files(setup.index_dir)  # no runtime config: the build config's value
    assert faiss.extract_index_ivf(stored.index.index).nprobe == 1


def test_facts_reader_names_the_file_when_index_json_is_broken(tmp_path):
    with pytest.raises(IndexFileError, match="index.json"):
        IndexFacts.read(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not valid JSON"):
        IndexFacts.read(tmp_path)


def test_in_memory_index_reports_its_facts():
    n = 12
    cols = {name: np.zeros(n, dtype=dt) for name, dt in COLUMNS.items()}
    vectors = np.eye(n, 8, dtype=np.float32)
    vectors[8:, 0] = 1.0
    index = TileIndex.build(vectors, cols, {"model": "m", "dim": 8}, "", {},
                            config_mod.IndexConfig(heading="gallery_rotations", rotations=3))
    assert index.facts.rotations == 3 and index.facts.kind == "flat"


def test_replay_gives_the_node_the_config_the_index_was_built_with(small, tmp_path):
    pytest.importorskip("rosbags")
    import yaml

    from mobilegeo_ros.ros.replay import ReplayError, _index_config_file

    written = yaml.safe_load(_index_config_file(small.index_dir, tmp_path / "node.yaml").read_text())
    assert written == IndexFacts.read(small.index_dir).build_config_dict and written["index"]["rotations"] == 4
    with pytest.raises(ReplayError, match="index.json.*--config"):
        _index_config_file(tmp_path, tmp_path / "other.yaml")
