"""Student (4-stage MobileNetV2 + heads), its deployment format, the teachers and the FLOP ratio."""

import numpy as np
import pytest
import torch

from mobilegeo_ros.config import ModelConfig
from mobilegeo_ros.model.base import ModelError
from mobilegeo_ros.model.flops import torch_flops
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM
from mobilegeo_ros.model.preprocess import preprocess
from mobilegeo_ros.model.weights import save_safetensors, shipped_mobilenetv2_path
from mobilegeo_ros.train.networks import OpenNsfwTeacherNet, StudentNet, TimmTeacherNet


class _Embed(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.embed(x)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return StudentNet(num_classes=7).eval()


def test_stages_heads_and_shapes(student):
    x = torch.randn(2, 3, 224, 224)
    maps = student.stages(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 56, 56), (32, 28, 28), (96, 14, 14), (1280, 7, 7)]
    out = student(x)
    assert len(out.logits) == 4 and all(tuple(z.shape) == (2, 7) for z in out.logits)
    assert tuple(out.embedding.shape) == (2, 1280)
    # retrieval embedding = the GeM feature of stage 4
    assert torch.allclose(torch.nn.functional.normalize(out.embedding, dim=1), student.embed(x), atol=1e-6)


def test_imagenet_init_and_export_runs_in_the_node_model(student, tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (3, 96, 96, 3), dtype=np.uint8)
    shipped = MobileNetV2GeM(ModelConfig(input_px=96, weights=str(shipped_mobilenetv2_path())))  # ImageNet file
    x = torch.from_numpy(preprocess(imgs, 96))
    with torch.no_grad():
        ours = student.embed(x).numpy()
    np.testing.assert_allclose(ours, shipped.embed(imgs), atol=1e-5)  # same ImageNet weights, p = 3
    with torch.no_grad():
        student.gem.p.fill_(4.0)  # as if trained: the exported p must travel with the weights
        student.features[18][0].weight.mul_(1.1)
        want = student.embed(x).numpy()
    path = save_safetensors(student.embedding_state_dict(), tmp_path / "student.safetensors")
    model = MobileNetV2GeM(ModelConfig(input_px=96, weights=str(path)))
    np.testing.assert_allclose(model.embed(imgs), want, atol=1e-5)
    assert model.identity()["gem_p"] == pytest.approx(4.0)


def test_open_nsfw_teacher_matches_onnxruntime():
    from mobilegeo_ros.model.baseline_resnet50 import OpenNsfwTeacher

    teacher = OpenNsfwTeacherNet(num_classes=5).eval()
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        fmap = teacher.feature_map(torch.from_numpy(preprocess(imgs, 224)))
    assert tuple(fmap.shape) == (2, 1024, 7, 7)
    ours = torch.nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=1).numpy()  # GAP = the graph's ReduceMean
    np.testing.assert_allclose(ours, OpenNsfwTeacher(num_threads=2).embed(imgs), atol=1e-4)


def test_timm_teacher_from_local_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    teacher = TimmTeacherNet("resnet10t", path, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher.backbone.forward_features(x), src.forward_features(x))
        assert tuple(teacher(x).logits[0].shape) == (1, 4)
    with pytest.raises(ModelError, match="does not fit timm"):
        TimmTeacherNet("resnet18", path, num_classes=4)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="bad.pt"):
        TimmTeacherNet("resnet10t", tmp_path / "bad.pt", num_classes=4)


def test_student_flops_vs_teachers(student):
    """Student at the deployed 224 px vs the teachers. The shipped open_nsfw ResNet-50-thin is only 3.6× the
    student at 224 px; at its training resolution (384 px, the MEAN default, teacher.input_px) it is ≥ 5×."""
    s = torch_flops(_Embed(student), 224)
    assert 0.55e9 < s < 0.65e9  # 2·multiply-adds of MobileNetV2 at 224 px (≈ 0.60 GFLOPs)
    nsfw = _Embed(OpenNsfwTeacherNet(num_classes=2).eval())
    ratio_224 = torch_flops(nsfw, 224) / s
    ratio_384 = torch_flops(nsfw, 384) / s
    assert 3.3 < ratio_224 < 3.8
    assert ratio_384 >= 5.0
