import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import combine_views, csda_weights, multi_head_cross_entropy, view_confidence


def test_confidence_and_weights_hand_computed():
    confident = torch.tensor([[100.0, 0.0, 0.0, 0.0]])  # ~one-hot: confidence ~1
    uniform = torch.zeros(1, 4)  # confidence 0
    half = torch.tensor([[0.0, 0.0, -1e4, -1e4]])  # p = (1/2, 1/2, 0, 0): confidence 1/2
    assert view_confidence(half).item() == pytest.approx(0.5, abs=1e-5)
    w_d, w_s = csda_weights(half, confident)  # c_d = 1/2, c_s = 1: w_d = 1/1.5, w_s = 0.5/1.5
    assert w_d.item() == pytest.approx(2 / 3, abs=1e-4) and w_s.item() == pytest.approx(1 / 3, abs=1e-4)
    w_d, w_s = csda_weights(uniform, confident, favor="confident")
    assert w_d.item() == pytest.approx(0.0, abs=1e-4) and w_s.item() == pytest.approx(1.0, abs=1e-4)
    torch.manual_seed(0)
    a, b = csda_weights(torch.randn(5, 7), torch.randn(5, 7))
    assert (a + b).item() == pytest.approx(1.0, abs=1e-6)
    assert not a.requires_grad
    assert combine_views(torch.tensor(3.0), torch.tensor(5.0), torch.tensor(0.5), torch.tensor(0.5)).item() == 8.0
    with pytest.raises(ValueError):
        csda_weights(half, half, favor="sat")
    assert math.isfinite(view_confidence(torch.tensor([[1e9, -1e9]])).item())


def test_gradcheck_combined_ce():
    torch.manual_seed(0)
    zd = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    zs = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    w_d, w_s = csda_weights(zd, zs)  # fixed weights (they are detached in training)
    assert gradcheck(lambda a, b: combine_views(multi_head_cross_entropy([a], y), multi_head_cross_entropy([b], y),
                                                w_d, w_s), (zd, zs))
