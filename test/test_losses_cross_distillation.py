import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import FeatureDistillation, logit_distillation, similarity_distillation


def test_logit_kd_hand_computed_and_zero():
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, 2 * math.log(3.0)]])
    # at T = 2: p = (1/2, 1/2), q = (1/4, 3/4); loss = 4 * KL(p||q)
    want = 4 * (0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert logit_distillation(s, t, temperature=2.0).item() == pytest.approx(want, rel=1e-6)
    assert logit_distillation(t, t).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="same classes"):
        logit_distillation(torch.zeros(1, 3), torch.zeros(1, 4))


def test_teacher_detached():
    s = torch.randn(2, 4, requires_grad=True)
    t = torch.randn(2, 4, requires_grad=True)
    logit_distillation(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_feature_kd_hand_computed_projection_and_resize():
    fd = FeatureDistillation(2, 1, distance="mse")
    with torch.no_grad():
        fd.proj.weight.copy_(torch.tensor([[[[1.0]], [[2.0]]]]))
        fd.proj.bias.zero_()
    s = torch.ones(1, 2, 2, 2)  # projects to 3 everywhere; resized to 4×4 stays 3
    t = torch.zeros(1, 1, 4, 4)
    assert fd(s, t).item() == pytest.approx(9.0)
    assert fd(torch.ones(3, 2), torch.full((3, 1), 3.0)).item() == pytest.approx(0.0)
    cos = FeatureDistillation(2, 2, distance="cosine")
    with torch.no_grad():
        cos.proj.weight.copy_(torch.eye(2)[:, :, None, None])
        cos.proj.bias.zero_()
    assert cos(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.0)


def test_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.double)
    assert gradcheck(lambda a: logit_distillation(a, t, 3.0), (s,))
    fd = FeatureDistillation(3, 2, distance="mse").double()
    fs = torch.randn(2, 3, 3, 3, dtype=torch.double, requires_grad=True)
    ft = torch.randn(2, 2, 5, 5, dtype=torch.double)
    assert gradcheck(lambda a: fd(a, ft), (fs,))
    fc = FeatureDistillation(3, 2, distance="cosine").double()
    assert gradcheck(lambda a: fc(a, ft), (fs,))


def test_feature_kd_default_is_scale_free_cosine():
    fd = FeatureDistillation(4, 3)
    assert fd.distance == "cosine"
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    # 1 - cosine ignores the teacher map's scale and stays in [0, 2] whatever the student's
    assert fd(s, t).item() == pytest.approx(fd(s, 1000.0 * t).item(), rel=1e-5)
    assert 0.0 <= fd(100.0 * s, 1000.0 * t).item() <= 2.0


def test_similarity_kd_hand_computed_zero_scale_free_and_detached():
    # three unit vectors: the student's rows equal the teacher's up to scale and a rotation -> no loss
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert similarity_distillation(7.0 * t @ rot, t).item() == pytest.approx(0.0, abs=1e-6)
    # hand-computed: teacher rows 0 and 1 orthogonal, row 2 at 45 degrees; the student's rows all identical, so
    # its standardised rows are constant (uniform softmax); the teacher's rows standardise to (-1/√2, 1/√2) twice
    # (two entries, unbiased std) and a constant row (uniform): KL(p ‖ uniform) = Σ p log(2p)
    s = torch.ones(3, 4)
    tau = 0.5
    p = torch.softmax(torch.tensor([-1.0, 1.0]) / math.sqrt(2) / tau, 0)
    want = 2 * float((p * (2 * p).log()).sum()) / 3
    assert similarity_distillation(s, t, tau).item() == pytest.approx(want, rel=1e-5)
    # the same descriptors in student and teacher give zero
    a = torch.randn(6, 5)
    assert similarity_distillation(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # different descriptor sizes are fine; the teacher gets no gradient
    sg, tg = torch.randn(5, 8, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    similarity_distillation(sg, tg).backward()
    assert tg.grad is None and sg.grad is not None and torch.isfinite(sg.grad).all()
    with pytest.raises(ValueError, match="N >= 3"):
        similarity_distillation(torch.randn(2, 4), torch.randn(2, 4))
