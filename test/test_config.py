"""The one typed config: YAML loading, unknown keys, types, ranges, ROS parameter files."""

import pytest

from mobilegeo_ros.config import Config, ConfigError, describe, flatten, from_dict, from_flat, load_config


def test_defaults_validate_and_round_trip_through_flat_keys():
    cfg = Config().validate()
    flat = flatten(cfg)
    assert flat["model.backend"] == "auto"
    assert from_flat(flat) == cfg
    assert set(describe()) == set(flat)
    assert all(d["help"] for d in describe().values())


def test_yaml_overrides_nested_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("map:\n  tile_sizes_m: [100, 200]\nindex:\n  kind: hnsw\n  rotations: 4\nestimator:\n  top_k: 3\n")
    cfg = load_config(p)
    assert cfg.map.tile_sizes_m == [100.0, 200.0]
    assert cfg.index.kind == "hnsw" and cfg.index.rotations == 4 and cfg.estimator.top_k == 3
    assert cfg.model == Config().model


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mapp": {}}, "unknown key 'mapp'"),
        ({"map": {"tile_size": 3}}, "unknown key 'map.tile_size'"),
        ({"map": {"overlap": "half"}}, "map.overlap: expected a number"),
        ({"map": {"tile_px": 2.5}}, "map.tile_px: expected an integer"),
        ({"map": {"tile_px": True}}, "map.tile_px: expected an integer"),
        ({"map": {"overlap": 1.5}}, "map.overlap: 1.5 is outside"),
        ({"index": {"kind": "lsh"}}, "index.kind: 'lsh' is not one of"),
        ({"render": {"altitude_m": [150, 100]}}, "render.altitude_m"),
        ({"map": {"tile_sizes_m": []}}, "map.tile_sizes_m"),
        ({"map": {"rgb_bands": [1, 2]}}, "map.rgb_bands"),
        ({"model": "x"}, "model: expected a mapping"),
    ],
)
def test_bad_values_fail_loudly_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        from_dict(data)


def test_ints_are_accepted_for_floats():
    assert from_dict({"map": {"overlap": 0}}).map.overlap == 0.0


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("map: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_ros_parameter_file_is_accepted(tmp_path):
    p = tmp_path / "ros.yaml"
    p.write_text(
        "localize_node:\n  ros__parameters:\n    index_dir: /tmp/x\n    model:\n      backend: onnxruntime\n"
        "    estimator.top_k: 7\n"
    )
    cfg = load_config(p)
    assert cfg.model.backend == "onnxruntime" and cfg.estimator.top_k == 7
    p.write_text("localize_node:\n  ros__parameters:\n    model:\n      backnd: torch\n")
    with pytest.raises(ConfigError, match="unknown key 'model.backnd'"):
        load_config(p)
