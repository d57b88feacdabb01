import pytest
import torch
from torch.autograd import gradcheck

from mobilegeo_ros.train.losses import batch_hard_triplet


def test_hand_computed():
    # 1-D points: class 0 at 0 and 1, class 1 at 3 and 5 (no normalisation)
    x = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap = 1, d_an = 3 -> relu(1-3+m); anchor 1: 1, 2; anchor 2: 2, 2; anchor 3: 2, 4
    m = 1.5
    want = (max(0, 1 - 3 + m) + max(0, 1 - 2 + m) + max(0, 2 - 2 + m) + max(0, 2 - 4 + m)) / 4
    assert batch_hard_triplet(x, y, margin=m, normalize=False).item() == pytest.approx(want, rel=1e-6)


def test_zero_when_margin_satisfied_and_skip_invalid():
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1], [50.0]])
    y = torch.tensor([0, 0, 1, 1, 2])  # class 2 has no positive: skipped
    assert batch_hard_triplet(x, y, margin=0.3, normalize=False).item() == 0.0
    single = batch_hard_triplet(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]))
    assert single.item() == 0.0 and single.requires_grad


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert gradcheck(lambda a: batch_hard_triplet(a, y, margin=2.0), (x,))
    assert gradcheck(lambda a: batch_hard_triplet(a, y, margin=2.0, normalize=False), (x,))
