import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import multi_head_cross_entropy


def test_hand_computed_two_heads():
    # head 1: logits (0, ln 3) for label 1 -> p = 3/4 -> CE = ln(4/3); head 2: uniform over 2 -> ln 2
    z1 = torch.tensor([[0.0, math.log(3.0)]])
    z2 = torch.tensor([[1.0, 1.0]])
    y = torch.tensor([1])
    got = multi_head_cross_entropy([z1, z2], y, weights=[2.0, 1.0])
    assert got.item() == pytest.approx(2 * math.log(4 / 3) + math.log(2), rel=1e-6)


def test_label_smoothing_hand_computed():
    # smoothing e over K=2: target (e/2, 1-e/2); p = (1/4, 3/4)
    z = torch.tensor([[0.0, math.log(3.0)]])
    e = 0.2
    want = -(e / 2) * math.log(0.25) - (1 - e / 2) * math.log(0.75)
    assert multi_head_cross_entropy([z], torch.tensor([1]), label_smoothing=e).item() == pytest.approx(want, rel=1e-6)


def test_gradcheck_and_errors():
    torch.manual_seed(0)
    zs = [torch.randn(4, 5, dtype=torch.double, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 4, 2])
    assert gradcheck(lambda a, b, c: multi_head_cross_entropy([a, b, c], y, label_smoothing=0.1), zs)
    with pytest.raises(ValueError, match="weights"):
        multi_head_cross_entropy(zs, y, weights=[1.0])
