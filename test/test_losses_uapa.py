import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import confidence_weights, gaussian_kernel, uapa_loss, weighted_mmd2


def test_confidence_weights_hand_computed():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    # H = 0, ln 4, ln 2 -> 1 - H/ln 4 = 1, 0, 1/2
    assert torch.allclose(confidence_weights(p), torch.tensor([1.0, 0.0, 0.5]), atol=1e-6)


def test_mmd_hand_computed_single_points():
    # one sample each, distance² = 2 between one-hot vectors, one bandwidth σ = 1: MMD² = 1 + 1 - 2 e^{-1}
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0]])
    assert weighted_mmd2(x, y, bandwidths=(1.0,)).item() == pytest.approx(2 - 2 * math.exp(-1), rel=1e-6)
    assert gaussian_kernel(x, y, (1.0, 0.5)).item() == pytest.approx(math.exp(-1) + math.exp(-4), rel=1e-6)


def test_weighted_mmd_hand_computed():
    # x = {a (w 3), b (w 1)}, y = {a}: MMD² = Σ a_i a_j k + 1 - 2 Σ a_i k(x_i, a) with k(a,b) = e^{-1} (σ=1, d²=2)
    a, b = [1.0, 0.0], [0.0, 1.0]
    x, y = torch.tensor([a, b]), torch.tensor([a])
    k = math.exp(-1)
    wa, wb = 0.75, 0.25
    want = (wa * wa + wb * wb + 2 * wa * wb * k) + 1 - 2 * (wa + wb * k)
    got = weighted_mmd2(x, y, torch.tensor([3.0, 1.0]), None, bandwidths=(1.0,))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_zero_for_identical_positive_for_shifted():
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    assert uapa_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    shifted = z.clone()
    shifted[:, 0] += 5.0
    assert uapa_loss(z, shifted).item() > 1e-3
    # uncertain samples count less: a shifted but uniform (zero-confidence) satellite sample barely matters
    zs = torch.cat([z, torch.zeros(1, 5)])
    assert uapa_loss(z, zs).item() < uapa_loss(z, zs, confidence=False).item()


def test_gradcheck():
    torch.manual_seed(0)
    zd = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    zs = torch.randn(5, 3, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda a, b: uapa_loss(a, b, confidence=True, detach_weights=False), (zd, zs))
    w = torch.rand(4, dtype=torch.double) + 0.1
    assert gradcheck(lambda a, b: weighted_mmd2(a, b, w, None), (zd, zs))
