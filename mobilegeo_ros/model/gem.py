"""Generalised-mean (GeM) pooling (Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human
Annotation", TPAMI 2018)."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling of a feature map to one vector per image.

    For each channel c of an N×C×H×W feature map x::

        f_c = ( 1/(H·W) · Σ_{i,j} max(x_cij, eps)^p )^(1/p)

    p = 1 is average pooling, p → ∞ approaches max pooling; p = 3 is the usual retrieval choice. The ``eps`` clamp
    keeps the fractional power defined (post-ReLU6 activations are ≥ 0, but exact zeros would give a zero gradient
    wrt p and a NaN through log(0)).

    ``p`` is a learnable ``nn.Parameter`` when ``learnable=True``, otherwise a buffer; either way it is saved in the
    state dict under ``p``. Input N×C×H×W float; output N×C.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        if p < 1.0:
            raise ValueError(f"GeM: p must be >= 1, got {p}")
        self.eps = float(eps)
        p_tensor = torch.tensor([float(p)], dtype=torch.float32)
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        # mean over H, W rather than avg_pool2d(kernel=shape): no input size baked into an ONNX export.
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


__all__ = ["GeM"]
