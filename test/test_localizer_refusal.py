"""The model/index refusal where users hit it: ``Localizer.from_files`` (what the node, the CLI and the replay load)
refuses an index built with another embedding model, naming the index and what differs, and loads a matching one.

The node process refusing the same mismatch at start-up (exit 2, one line, detected by polling the process) is
test_ros_process.py::test_model_index_mismatch_exits_2; ``TileIndex.load(expected_identity=...)`` on its own is
test_index_tile_index.py."""

import pytest

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.index import IndexMismatchError
from mobilegeo_ros.localizer import Localizer
from mobilegeo_ros.model.weights import resolve_default_weights, shipped_mobilenetv2_path
from synthetic_world import synthetic_setup


@pytest.fixture(scope="module")
def setup():
    return synthetic_setup()  # index built with model.input_px 128 and the default weights


def _cfg(setup, **model):
    return config_mod.from_dict({**setup.overrides, "model": {**setup.overrides["model"], **model}})


def test_from_files_refuses_an_index_built_with_other_preprocessing(setup):
    with pytest.raises(IndexMismatchError) as e:
        Localizer.from_files(setup.index_dir, _cfg(setup, input_px=224))
    msg = str(e.value)
    assert str(setup.index_dir) in msg and "different embedding model" in msg
    assert "128" in msg and "224" in msg  # what differs, both values
    assert "\n" not in msg  # one line for the CLI's and the node's error output


def test_from_files_refuses_an_index_built_with_other_weights(setup):
    # the index was built with the default weights; configure the other of ImageNet / the shipped student
    imagenet = shipped_mobilenetv2_path()
    other = {"weights": str(imagenet)} if resolve_default_weights("") != imagenet else {"gem_p": 4.0}
    with pytest.raises(IndexMismatchError, match="different embedding model"):
        Localizer.from_files(setup.index_dir, _cfg(setup, **other))


def test_from_files_loads_the_matching_model(setup):
    # the control for the two refusals above: the config the index was built with, given or read from index.json
    for cfg in (_cfg(setup), None):
        loc = Localizer.from_files(setup.index_dir, cfg)
        assert loc.model.identity()["preprocessing"] == loc.index.identity["preprocessing"]
        assert loc.cfg.model.input_px == 128
