"""WiSE-FT weight interpolation (train/wise_ft.py): hand-computed values, layout mixing, the training option and
the `mobilegeo interpolate` verb."""

import json

import numpy as np
import pytest
import torch
import yaml

from mobilegeo_ros.cli import main
from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM, MobileNetV2GeMNet, load_weights_into
from mobilegeo_ros.model.weights import load_state_dict_file, save_safetensors, shipped_mobilenetv2_path
from mobilegeo_ros.train.networks import StudentNet
from mobilegeo_ros.train.wise_ft import interpolate_state, interpolate_weights


def test_interpolate_state_hand_values():
    a = {"w": torch.tensor([0.0, 2.0, -4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 4.0, 4.0]), "n": torch.tensor(5)}
    out = interpolate_state(a, b, 0.25)
    assert torch.allclose(out["w"], torch.tensor([0.5, 2.5, -2.0]))
    assert int(out["n"]) == 5  # integers (num_batches_tracked) come from the fine-tuned end
    assert torch.equal(interpolate_state(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate_state(a, b, 1.0)["w"], b["w"])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ModelError, match="alpha"):
        interpolate_state({"w": torch.zeros(1)}, {"w": torch.zeros(1)}, alpha)


def test_mismatched_weights_are_refused():
    with pytest.raises(ModelError, match="differ"):
        interpolate_state({"w": torch.zeros(1)}, {"v": torch.zeros(1)}, 0.5)
    with pytest.raises(ModelError, match="shape"):
        interpolate_state({"w": torch.zeros(1)}, {"w": torch.zeros(2)}, 0.5)


def _imagenet_embedding_state():
    net = MobileNetV2GeMNet()
    load_weights_into(net, load_state_dict_file(shipped_mobilenetv2_path()), "imagenet")
    return net.state_dict()


def test_interpolate_weights_mixes_the_imagenet_file_with_our_layout(tmp_path):
    """Init = the deep-sort ImageNet file (other key names), fine-tuned = a .safetensors: the midpoint is exact
    per tensor and loads into the node's model."""
    base = _imagenet_embedding_state()
    tuned = {k: (v * 1.5 + 0.25 if v.is_floating_point() else v) for k, v in base.items()}
    ft = save_safetensors(tuned, tmp_path / "ft.safetensors")
    out = interpolate_weights(None, ft, 0.5, tmp_path / "mid.safetensors")
    mid = load_state_dict_file(out)
    key = "features.18.0.weight"
    assert torch.allclose(mid[key], base[key] * 1.25 + 0.125, atol=1e-6)
    assert float(mid["gem.p"].reshape(-1)[0]) == pytest.approx(3.0 * 1.25 + 0.125)
    model = MobileNetV2GeM(ModelConfig(input_px=64, weights=str(out)))
    emb = model.embed([np.full((64, 64, 3), 90, np.uint8)])
    assert emb.shape == (1, 1280) and np.isfinite(emb).all()
    with pytest.raises(ModelError, match="missing.safetensors"):
        interpolate_weights(None, tmp_path / "missing.safetensors", 0.5, tmp_path / "x.safetensors")


def test_training_with_wise_alpha_ships_the_interpolation(tmp_path):
    """train.wise_alpha 0.5: student.safetensors is the midpoint of the init and student_finetuned.safetensors,
    and eval.json measures it."""
    tif = write_synthetic_geotiff(tmp_path / "map.tif", 1024, 512, 1.0, seed=9)
    start = save_safetensors(StudentNet(2, bottleneck=16).embedding_state_dict(), tmp_path / "start.safetensors")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"input_px": 64},
        "render": {"altitude_m": [40.0, 50.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0},
        "train": {"preset": "student-plain", "data_format": "ortho", "data_root": str(tif), "tile_size_m": 60.0,
                  "spacing_m": 40.0, "views": 2, "batch_size": 4, "max_steps": 2, "bottleneck": 16,
                  "eval_views": 1, "init_weights": str(start), "wise_alpha": 0.5,
                  "lr": 0.05}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    init, ft = load_state_dict_file(start), load_state_dict_file(run / "student_finetuned.safetensors")
    got = load_state_dict_file(run / "student.safetensors")
    key = "features.18.0.weight"
    assert not torch.equal(init[key], ft[key])  # training moved it, so the midpoint is a third point
    assert torch.allclose(got[key], 0.5 * (init[key] + ft[key]), atol=1e-6)
    assert "drone2sat" in json.loads((run / "eval.json").read_text())


def test_interpolate_cli(tmp_path, capsys):
    base = _imagenet_embedding_state()
    ft = save_safetensors({k: (v * 2 if v.is_floating_point() else v) for k, v in base.items()},
                          tmp_path / "ft.safetensors")
    out = tmp_path / "wise.safetensors"
    assert main(["interpolate", "--finetuned", str(ft), "--alpha", "0.25", "--out", str(out)]) == 0
    assert "wise.safetensors" in capsys.readouterr().out
    got = load_state_dict_file(out)["features.18.0.weight"]
    assert torch.allclose(got, base["features.18.0.weight"] * 1.25, atol=1e-6)
    assert main(["interpolate", "--finetuned", str(ft), "--alpha", "2", "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "alpha" in capsys.readouterr().err
