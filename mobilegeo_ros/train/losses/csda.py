"""CSDA: confidence-sensitive weights between the drone and the satellite streams (CSP-HD).

Paper (CSP-HD abstract/§3, Fig. 2): weight the learning of the drone and satellite channels by the model's
confidence to counter the data imbalance (≈54 drone images per satellite image); "sample confidence can be obtained
as a by-product of knowledge distillation". The form is not available (GAP). Our default (hypothesis, config values):

* per-view confidence ``c_v`` = batch mean of ``1 − H(p)/log K`` of the final head's softmax;
* ``favor="uncertain"`` (default): ``w_d = c_s/(c_d + c_s)``, ``w_s = c_d/(c_d + c_s)`` — the less confident stream
  gets more weight; ``favor="confident"`` swaps them; the weights are detached and sum to 1;
* the loop applies them to the per-view CE terms: ``L = 2·(w_d·L_drone + w_s·L_sat)``, so equal confidences give the
  unweighted sum ``L_drone + L_sat``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobilegeo_ros.train.losses.uapa import confidence_weights


def view_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``1 − H(softmax(z))/log K`` for B×K logits (scalar tensor, in [0, 1])."""
    return confidence_weights(F.softmax(logits, dim=1)).mean()


def csda_weights(logits_drone: torch.Tensor, logits_sat: torch.Tensor, favor: str = "uncertain",
                 eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached stream weights ``(w_d, w_s)``, summing to 1 (see the module docstring)."""
    if favor not in ("uncertain", "confident"):
        raise ValueError(f"csda_weights: favor must be uncertain or confident, got {favor!r}")
    with torch.no_grad():
        c_d, c_s = view_confidence(logits_drone), view_confidence(logits_sat)
        total = c_d + c_s + 2 * eps
        w_d, w_s = (c_s + eps) / total, (c_d + eps) / total
    return (w_d, w_s) if favor == "uncertain" else (w_s, w_d)


def combine_views(loss_drone: torch.Tensor, loss_sat: torch.Tensor, w_drone: torch.Tensor,
                  w_sat: torch.Tensor) -> torch.Tensor:
    """``2·(w_d·L_d + w_s·L_s)``: equal weights (½, ½) give ``L_d + L_s``."""
    return 2.0 * (w_drone * loss_drone + w_sat * loss_sat)


__all__ = ["combine_views", "csda_weights", "view_confidence"]
