"""Mission-area adaptation (mobilegeo adapt) and the training options it uses: init weights, frozen stages,
wall-time budget."""

import json

import numpy as np
import pytest
import torch
import yaml

from mobilegeo_ros.cli import main
from mobilegeo_ros.config import ConfigError, ModelConfig, load_config
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
from mobilegeo_ros.model.weights import load_state_dict_file, save_safetensors
from mobilegeo_ros.train.networks import STAGE_BOUNDS, StudentNet

CORE = {"model": {"input_px": 64}, "render": {"altitude_m": [40.0, 50.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt")
    tif = write_synthetic_geotiff(d / "map.tif", 640, 640, 0.5, seed=4)
    cfg = d / "core.yaml"
    cfg.write_text(yaml.safe_dump(CORE))
    return d, tif, cfg


def test_freeze_stages_keeps_weights_and_batchnorm_statistics():
    net = StudentNet(5, bottleneck=16)
    net.freeze_stages(2)
    frozen_hi = STAGE_BOUNDS[1][1]
    before = {k: v.clone() for k, v in net.features.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    net.keep_frozen_in_eval()
    x = torch.randn(4, 3, 64, 64) * 3 + 1  # statistics unlike ImageNet's: BN running stats would move
    out = net(x)
    sum(torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 2, 3])) for z in out.logits).backward()
    opt.step()
    after = net.features.state_dict()
    for k, v in before.items():
        idx = int(k.split(".")[0])
        if idx < frozen_hi:
            assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if int(k.split(".")[0]) >= frozen_hi)


def test_freeze_bn_stats_keeps_every_running_statistic():
    net = StudentNet(4, bottleneck=16)
    net.freeze_bn_stats = True
    before = {k: v.clone() for k, v in net.features.state_dict().items() if "running" in k}
    net.train()
    net.keep_frozen_in_eval()
    out = net(torch.randn(4, 3, 64, 64) * 3 + 1)
    sum(torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 2, 3])) for z in out.logits).backward()
    after = net.features.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.features[18][1].weight.grad is not None  # the affine BN weights still learn


def test_init_weights_round_trip_and_refusal(tmp_path):
    a = StudentNet(3, bottleneck=16)
    with torch.no_grad():
        a.gem.p.fill_(4.25)
        a.features[18][0].weight.mul_(0.5)
    path = save_safetensors(a.embedding_state_dict(), tmp_path / "s.safetensors")
    b = StudentNet(7, bottleneck=16)
    b.load_embedding_weights(path)
    assert torch.equal(a.features[18][0].weight, b.features[18][0].weight) and float(b.gem.p.detach()) == pytest.approx(4.25)
    bad = save_safetensors({"features.0.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ModelError, match="bad.safetensors"):
        b.load_embedding_weights(bad)


def test_adapt_cli_writes_a_deployable_student_and_config(world, capsys):
    d, tif, cfg = world
    start = d / "start.safetensors"
    save_safetensors(StudentNet(2, bottleneck=16).embedding_state_dict(), start)
    out = d / "run"
    assert main(["adapt", "--map", str(tif), "--out", str(out), "--config", str(cfg), "--init", str(start),
                 "--minutes", "5", "--quiet", "--set", "max_steps:=3", "--set", "batch_size:=4",
                 "--set", "views:=2", "--set", "spacing_m:=60", "--set", "bottleneck:=16"]) == 0
    printed = capsys.readouterr().out
    assert "adapt.yaml" in printed
    run_cfg = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert run_cfg["preset"] == "student-csphd" and run_cfg["freeze_stages"] == 2 and run_cfg["init_weights"] == str(start)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3
    # the frozen stages are exactly the init's; later stages moved
    init, got = load_state_dict_file(start), load_state_dict_file(out / "student.safetensors")
    assert torch.equal(init["features.0.0.weight"], got["features.0.0.weight"])
    assert not torch.equal(init["features.18.0.weight"], got["features.18.0.weight"])
    # the recipe writes the WiSE-FT midpoint of the init and the fine-tuned end
    tuned = load_state_dict_file(out / "student_finetuned.safetensors")
    assert torch.allclose(got["features.18.0.weight"],
                          0.5 * (init["features.18.0.weight"] + tuned["features.18.0.weight"]), atol=1e-6)
    # adapt.yaml is a valid core config pointing at the weights, which the node's model class loads
    deploy = load_config(out / "adapt.yaml")
    assert deploy.model.weights == str((out / "student.safetensors").resolve()) and deploy.model.input_px == 64
    model = MobileNetV2GeM(ModelConfig(input_px=64, weights=deploy.model.weights))
    emb = model.embed([np.zeros((64, 64, 3), np.uint8) + 100])
    assert emb.shape == (1, 1280) and np.isfinite(emb).all()
    # a non-empty run directory, a missing map and a bad budget are one-line errors
    assert main(["adapt", "--map", str(tif), "--out", str(out), "--quiet"]) == 2
    assert main(["adapt", "--map", str(d / "missing.tif"), "--out", str(d / "r2"), "--quiet"]) == 2
    assert main(["adapt", "--map", str(tif), "--out", str(d / "r3"), "--minutes", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "missing.tif" in err and "--minutes" in err


def test_time_budget_stops_training(world):
    from mobilegeo_ros.train.adapt import adapt

    d, tif, cfg = world
    out = d / "budget"
    adapt(tif, out, load_config(cfg), minutes=1e-6, overrides={"max_steps": 50, "batch_size": 4, "views": 2,
                                                                 "spacing_m": 60, "bottleneck": 16},
          progress=False)
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # the budget is checked after every step: one step, then stop
    assert (out / "student.safetensors").is_file()


def test_bad_recipe_values_fail_loudly(world):
    from mobilegeo_ros.train.adapt import adapt

    d, tif, cfg = world
    with pytest.raises(ConfigError, match="freeze_stages"):
        adapt(tif, d / "bad", load_config(cfg), overrides={"freeze_stages": 7}, progress=False)
