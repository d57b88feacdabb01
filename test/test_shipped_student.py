"""The shipped student (models/student.safetensors + models/student.onnx): it is the default, it is what the model
card says (file hash, recipe provenance), and the committed ONNX computes the same embedding as the torch model."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.geo.synthetic import synthetic_rgb
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM, MobileNetV2GeMNet, load_weights_into
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.model.weights import (
    default_student_weights,
    describe_weights,
    file_sha256,
    load_state_dict_file,
    resolve_default_weights,
    shipped_mobilenetv2_path,
)
from mobilegeo_ros.train.networks import STAGE_BOUNDS

MODELS = Path(__file__).resolve().parents[1] / "models"
STUDENT = MODELS / "student.safetensors"
ONNX = MODELS / "student.onnx"


def test_the_shipped_student_is_the_default_and_matches_its_card():
    assert default_student_weights() == STUDENT
    assert resolve_default_weights("") == STUDENT
    assert "shipped student" in describe_weights("")
    card = (MODELS / "README.md").read_text()
    assert file_sha256(STUDENT) in card and file_sha256(ONNX) in card
    assert MobileNetV2GeM(ModelConfig()).weights_path == STUDENT


def test_the_student_is_the_recipe_s_output():
    """config/train/sentinel2_student.yaml fixes stages 1-3 and every BatchNorm statistic at ImageNet's and ships the
    WiSE-FT midpoint with ImageNet: those tensors are ImageNet's bit for bit, stage 4's convolutions are not."""
    imagenet = MobileNetV2GeMNet()
    load_weights_into(imagenet, load_state_dict_file(shipped_mobilenetv2_path()), "imagenet")
    ref = imagenet.state_dict()
    student = load_state_dict_file(STUDENT)
    assert set(student) == set(ref)
    stage4 = STAGE_BOUNDS[3][0]
    for key, value in student.items():
        if not key.startswith("features."):
            continue
        if int(key.split(".")[1]) < stage4 or "running_" in key or "num_batches" in key:
            assert torch.equal(value, ref[key]), key
    moved = [k for k in student if k.startswith(f"features.{stage4}.") and k.endswith("weight")
             and not torch.equal(student[k], ref[k])]
    assert moved


def test_committed_onnx_computes_the_torch_embedding():
    scene = (synthetic_rgb(500, 500, 0.5, seed=3) * 255).astype(np.uint8)
    images = [scene[:224, :224], scene[200:424, 150:374], np.full((224, 224, 3), 120, np.uint8)]
    torch_emb = MobileNetV2GeM(ModelConfig()).embed(images)
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_emb = session.run(None, {name: preprocess(images, 224)})[0]
    assert onnx_emb.shape == (3, 1280)
    np.testing.assert_allclose(onnx_emb, torch_emb, atol=1e-4)
    # not the ImageNet embedding: the student is what runs
    imagenet_emb = MobileNetV2GeM(ModelConfig(weights=str(shipped_mobilenetv2_path()))).embed(images)
    assert np.abs(imagenet_emb - torch_emb).max() > 1e-3
