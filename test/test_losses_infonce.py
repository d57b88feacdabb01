import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import SymmetricInfoNCE, symmetric_infonce


def test_hand_computed_orthogonal_pairs():
    # f_d = f_s = I_2, s = 1: logits = I, each row softmax (e, 1)/(e+1): CE = ln(1+e) - 1 in both directions
    f = torch.eye(2)
    got = symmetric_infonce(f, f, torch.tensor(0.0), label_smoothing=0.0)
    assert got.item() == pytest.approx(math.log(1 + math.e) - 1, rel=1e-6)


def test_asymmetric_logits_average_both_directions():
    fd = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = [[1, 0], [1, 0]]; rows: CE row0 = ln(1+e^-1), row1 = ln(1+e) ; cols (logits^T = [[1,1],[0,0]]):
    # col0 target 0: ln 2, col1 target 1: ln 2
    want = 0.5 * ((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2 + math.log(2))
    assert symmetric_infonce(fd, fs, torch.tensor(0.0), 0.0).item() == pytest.approx(want, rel=1e-6)


def test_learnable_scale_and_aligned_pairs_lower():
    m = SymmetricInfoNCE()
    assert float(m.logit_scale.detach().exp()) == pytest.approx(1 / 0.07)
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    aligned, shuffled = m(a, a + 0.01 * torch.randn(8, 16)), m(a, torch.randn(8, 16))
    assert aligned.item() < shuffled.item()
    aligned.backward()
    assert m.logit_scale.grad is not None


def test_gradcheck():
    torch.manual_seed(0)
    fd = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    fs = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    s = torch.tensor(1.2, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda a, b, c: symmetric_infonce(a, b, c, 0.1), (fd, fs, s))
