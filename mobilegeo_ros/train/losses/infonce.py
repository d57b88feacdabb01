"""Symmetric InfoNCE between paired drone and satellite embeddings (Sample4Geo / MEAN style).

Paper (MobileGeo figure, step-1 box): ``L_Info`` on the embedding; τ and weights are not stated (GAP). Our default
follows the MEAN/Sample4Geo base code: L2-normalised features, ``logits = s · f_d f_sᵀ`` with a learnable
``s = exp(logit_scale)`` initialised to 1/0.07, ``L = ½[CE(logits, diag) + CE(logitsᵀ, diag)]`` with label smoothing
0.1. Row i of both inputs is the same location; every other row of the batch is a negative, so batches must hold
distinct classes (see the unique-class sampler in :mod:`mobilegeo_ros.train.datasets`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def symmetric_infonce(f_drone: torch.Tensor, f_sat: torch.Tensor, logit_scale: torch.Tensor,
                      label_smoothing: float = 0.1) -> torch.Tensor:
    """``½[CE(s·f̂_d f̂_sᵀ, I) + CE(s·f̂_s f̂_dᵀ, I)]`` with ``s = exp(logit_scale)``; inputs B×D, scalar tensor out."""
    if f_drone.shape != f_sat.shape or f_drone.ndim != 2:
        raise ValueError(f"symmetric_infonce: two B×D tensors of the same shape expected, got "
                         f"{tuple(f_drone.shape)} and {tuple(f_sat.shape)}")
    logits = logit_scale.exp() * F.normalize(f_drone, dim=1) @ F.normalize(f_sat, dim=1).T
    target = torch.arange(len(f_drone), device=f_drone.device)
    return 0.5 * (F.cross_entropy(logits, target, label_smoothing=label_smoothing)
                  + F.cross_entropy(logits.T, target, label_smoothing=label_smoothing))


class SymmetricInfoNCE(nn.Module):
    """:func:`symmetric_infonce` with its learnable ``logit_scale`` parameter (init ``log(1/init_temperature)``)."""

    def __init__(self, init_temperature: float = 0.07, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.label_smoothing = float(label_smoothing)

    def forward(self, f_drone: torch.Tensor, f_sat: torch.Tensor) -> torch.Tensor:
        return symmetric_infonce(f_drone, f_sat, self.logit_scale, self.label_smoothing)


__all__ = ["SymmetricInfoNCE", "symmetric_infonce"]
