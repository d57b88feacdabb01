import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import inverse_self_distillation


def test_hand_computed_kl_t1():
    # teacher p = (1/2, 1/2), student q = (1/4, 3/4): KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3)
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, math.log(3.0)]])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert inverse_self_distillation([t, s], temperature=1.0).item() == pytest.approx(want, rel=1e-6)


def test_temperature_squared_scaling_and_weights():
    # logits scaled by T give the same distributions at temperature T, so the loss is T² times the T=1 loss
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[0.0, math.log(3.0)]])
    base = inverse_self_distillation([t, s], temperature=1.0).item()
    got = inverse_self_distillation([4 * t, 4 * s], temperature=4.0).item()
    assert got == pytest.approx(16 * base, rel=1e-6)
    two = inverse_self_distillation([t, t, s], temperature=1.0, weights=[0.5, 2.0]).item()
    assert two == pytest.approx(2.5 * base, rel=1e-6)
    assert inverse_self_distillation([s, s], temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_stop_gradient_only_deepest_head_learns():
    torch.manual_seed(0)
    zs = [torch.randn(3, 6, requires_grad=True) for _ in range(4)]
    inverse_self_distillation(zs).backward()
    assert all(z.grad is None for z in zs[:3])
    assert zs[3].grad is not None and zs[3].grad.abs().sum() > 0
    zs = [torch.randn(3, 6, requires_grad=True) for _ in range(2)]
    inverse_self_distillation(zs, stop_gradient=False).backward()
    assert zs[0].grad.abs().sum() > 0


def test_gradcheck():
    torch.manual_seed(1)
    zs = [torch.randn(3, 5, dtype=torch.double, requires_grad=True) for _ in range(4)]
    assert gradcheck(lambda a, b, c, d: inverse_self_distillation([a, b, c, d], 3.0, stop_gradient=False), zs)
    fixed_teacher = zs[0].detach()
    assert gradcheck(lambda b: inverse_self_distillation([fixed_teacher, b], 4.0), (zs[1],))
