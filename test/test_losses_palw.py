import math

import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import PALW, inverse_self_distillation


def test_schedule_hand_computed_and_monotone():
    p = PALW(lam_max=2.0, lam_min=0.5, total_steps=100, mode="none")
    assert p.schedule(0) == pytest.approx(2.0)
    assert p.schedule(50) == pytest.approx(1.25)
    assert p.schedule(25) == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert p.schedule(100) == p.schedule(1000) == pytest.approx(0.5)
    values = [p.schedule(t) for t in range(0, 120)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


def test_adaptive_damps_spikes():
    p = PALW(lam_max=1.0, lam_min=1.0, total_steps=10, mode="damp", momentum=0.5, clip=(0.5, 2.0))
    assert p.weight(0, 1.0) == pytest.approx(1.0)  # first value initialises the EMA
    assert p.ema == pytest.approx(1.0)
    assert p.weight(1, 1.6) == pytest.approx(1 / 1.6)  # spike above the running level is down-weighted
    assert p.ema == pytest.approx(1.3)
    assert p.weight(2, 100.0) == pytest.approx(0.5)  # clipped
    a = PALW(lam_max=1.0, lam_min=1.0, total_steps=10, mode="amplify", momentum=0.5)
    a.weight(0, 1.0)
    assert a.weight(1, 1.5) == pytest.approx(1.5)
    restored = PALW(mode="damp")
    restored.load_state_dict(p.state_dict())
    assert restored.ema == p.ema


def test_bad_arguments():
    with pytest.raises(ValueError):
        PALW(lam_max=0.1, lam_min=1.0)
    with pytest.raises(ValueError):
        PALW(mode="up")


def test_gradcheck_weighted_term():
    p = PALW(total_steps=10, mode="none")
    w = p.weight(3)
    torch.manual_seed(0)
    zs = [torch.randn(3, 4, dtype=torch.double, requires_grad=True) for _ in range(2)]
    assert gradcheck(lambda a, b: w * inverse_self_distillation([a, b], stop_gradient=False), zs)
