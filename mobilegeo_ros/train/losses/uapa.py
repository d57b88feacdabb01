"""UAPA: uncertainty-aware prediction alignment of the drone and satellite prediction distributions.

Paper: only the framework figures. MobileGeo labels a UAPA box fed by the final FC logits with "μ_drone − μ_sat";
the older PFED figure names it UA-CMA and writes ``‖μ(P_s) − μ(P_d)‖²_𝓗``, a squared MMD in an RKHS between the
satellite and drone prediction distributions. How uncertainty enters, the kernel, bandwidths and the weight are not
stated (GAP). Our default (hypotheses, config values):

* ``p = softmax(z)`` of the final head for each sample of a view;
* per-sample confidence weight ``w = 1 − H(p)/log K`` (normalised entropy), detached by default so the network cannot
  lower the loss by becoming uncertain; weights are normalised per view to sum to 1;
* weighted (biased, V-statistic) MMD² = Σ a_i a_j k(p_i, p_j) + Σ b_i b_j k(q_i, q_j) − 2 Σ a_i b_j k(p_i, q_j), which is
  ≥ 0 and exactly 0 for identical weighted sets;
* multi-bandwidth Gaussian kernel ``k(x, y) = Σ_σ exp(−‖x − y‖² / (2σ²))`` with σ ∈ {0.1, 0.5, 1.0}: distances
  between probability vectors lie in [0, √2], so these span tight and loose matching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_BANDWIDTHS: tuple[float, ...] = (0.1, 0.5, 1.0)


def confidence_weights(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``1 − H(p)/log K`` per row of a B×K probability tensor (1 = one-hot, 0 = uniform); K ≥ 2."""
    k = probs.shape[1]
    if k < 2:
        raise ValueError("confidence_weights: needs K >= 2 classes")
    entropy = -(probs * probs.clamp_min(eps).log()).sum(1)
    return 1.0 - entropy / math.log(k)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS
                    ) -> torch.Tensor:
    """``Σ_σ exp(−‖x_i − y_j‖²/(2σ²))``: an A×B kernel matrix of the rows of x (A×K) and y (B×K)."""
    d2 = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)
    return sum(torch.exp(-d2 / (2.0 * s * s)) for s in bandwidths)


def weighted_mmd2(x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor | None = None, wy: torch.Tensor | None = None,
                  bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS, eps: float = 1e-8) -> torch.Tensor:
    """Weighted squared MMD between the samples x (A×K) and y (B×K); weights default to uniform.

    Weights are normalised to sum to 1 per set (``eps`` guards an all-zero weight vector). Scalar tensor out.
    """
    a = torch.ones(len(x), dtype=x.dtype, device=x.device) if wx is None else wx
    b = torch.ones(len(y), dtype=y.dtype, device=y.device) if wy is None else wy
    a = a / (a.sum() + eps)
    b = b / (b.sum() + eps)
    return (a @ gaussian_kernel(x, x, bandwidths) @ a + b @ gaussian_kernel(y, y, bandwidths) @ b
            - 2.0 * a @ gaussian_kernel(x, y, bandwidths) @ b)


def uapa_loss(logits_drone: torch.Tensor, logits_sat: torch.Tensor,
              bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS, confidence: bool = True,
              detach_weights: bool = True) -> torch.Tensor:
    """UAPA default: confidence-weighted MMD² between the drone and satellite softmax distributions of a batch.

    ``logits_drone``: A×K, ``logits_sat``: B×K final-head logits. ``confidence=False`` gives plain (uniform) MMD².
    """
    p, q = F.softmax(logits_drone, dim=1), F.softmax(logits_sat, dim=1)
    wp = wq = None
    if confidence:
        wp, wq = confidence_weights(p), confidence_weights(q)
        if detach_weights:
            wp, wq = wp.detach(), wq.detach()
    return weighted_mmd2(p, q, wp, wq, bandwidths)


__all__ = ["DEFAULT_BANDWIDTHS", "confidence_weights", "gaussian_kernel", "uapa_loss", "weighted_mmd2"]
