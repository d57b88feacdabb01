"""Training loop end to end on a tiny synthetic orthophoto: every preset, checkpoints, resume, eval CLI."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from mobilegeo_ros.cli import main
from mobilegeo_ros.config import ConfigError, ModelConfig
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.train.run_config import load_run_config
from mobilegeo_ros.train.loop import Trainer, build_dataset, collate, lr_lambda


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    tif = write_synthetic_geotiff(d / "map.tif", 1024, 512, 1.0, seed=2)
    cfg = {"model": {"input_px": 64}, "render": {"altitude_m": [40.0, 50.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0},
           "train": {"data_root": str(tif), "tile_size_m": 60, "spacing_m": 40, "views": 2,
                     "batch_size": 6, "max_steps": 3, "eval_views": 1, "log_every": 1, "teacher_input_px": 64,
                     "bottleneck": 32}}
    path = d / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return d, path


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule():
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)


def test_loss_decreases_on_a_fixed_batch(setup):
    _, path = setup
    run = load_run_config(str(path), {"preset": "student-csphd", "dropout": 0.0, "warmup_frac": 0.0,
                                      "lr": 3e-4})
    ds = build_dataset(run)
    trainer = Trainer(run, ds.num_classes, total_steps=1000, device=torch.device("cpu"))
    batch = collate([ds[i] for i in range(0, 12, 2)], 64, rng=None)
    totals = [trainer.step(*batch)["total"] for _ in range(5)]
    assert all(math.isfinite(v) for v in totals)
    assert totals[-1] < totals[0]


def test_presets_end_to_end_resume_and_reload(setup, capsys):
    d, path = setup
    teacher = d / "teacher"
    assert main(["train", "--config", str(path), "--out", str(teacher), "--set", "preset:=teacher", "--quiet",
                 "--set", "max_steps:=2"]) == 0
    assert (teacher / "model.safetensors").is_file() and not (teacher / "student.safetensors").exists()

    hd = d / "hdcvgl"
    assert main(["train", "--config", str(path), "--out", str(hd), "--quiet", "--set", "preset:=student-hdcvgl",
                 "--set", f"teacher_checkpoint:={teacher / 'model.safetensors'}", "--set", "step1_frac:=0.34"]) == 0
    lines = _metrics(hd)
    assert "logit_kd" not in lines[0] and "self_distillation" in lines[0]  # step 1: self-distillation only
    assert {"logit_kd", "feature_kd", "uapa"} <= set(lines[-1])  # step 2: + cross-distillation + UAPA
    assert all(math.isfinite(v) for line in lines for v in line.values() if isinstance(v, float))

    csp = d / "csphd"
    assert main(["train", "--config", str(path), "--out", str(csp), "--quiet", "--set", "preset:=student-csphd",
                 "--set", "max_steps:=2"]) == 0
    line = _metrics(csp)[-1]
    assert 0.0 < line["csda_w_drone"] < 1.0 and line["sd_weight"] > 0

    # resume: continue the csphd run to step 3
    assert main(["train", "--config", str(path), "--out", str(csp), "--quiet", "--set", "preset:=student-csphd",
                 "--resume"]) == 0
    assert [m["step"] for m in _metrics(csp)] == [1, 2, 3]
    assert main(["train", "--config", str(path), "--out", str(csp), "--quiet"]) == 2  # not empty, no --resume
    capsys.readouterr()

    # reload: the deployable weights give the trained network's embeddings in the node's model class
    run = load_run_config(str(path), {"preset": "student-csphd"})
    ds = build_dataset(run)
    trainer = Trainer(run, ds.num_classes, 10, torch.device("cpu"))
    trainer.load(csp)
    imgs = np.stack([ds[i][0] for i in range(3)])
    with torch.no_grad():
        want = trainer.net.eval().embed(torch.from_numpy(preprocess(imgs, 64))).numpy()
    model = MobileNetV2GeM(ModelConfig(input_px=64, weights=str(csp / "student.safetensors")))
    np.testing.assert_allclose(model.embed(imgs), want, atol=1e-5)

    ev = json.loads((csp / "eval.json").read_text())
    assert 0 <= ev["drone2sat"]["recall@1"] <= 100
    out = d / "eval"
    assert main(["eval", "--data", str(run.train.data_root), "--format", "ortho", "--model",
                 str(csp / "student.safetensors"), "--config", str(path), "--views", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["drone2sat"]["recall@1"] == pytest.approx(ev["drone2sat"]["recall@1"], abs=1e-6)


def test_config_errors(setup):
    _, path = setup
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        load_run_config(str(path), {"preset": "student-hdcvgl"})
    with pytest.raises(ConfigError, match="train.lr"):
        load_run_config(str(path), {"lr": "fast"})
    with pytest.raises(ConfigError, match="neither a preset"):
        load_run_config("student-fancy")
