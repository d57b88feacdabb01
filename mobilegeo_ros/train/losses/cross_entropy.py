"""Cross-entropy on every classification head.

Paper (MobileGeo framework figure, objective 3; PFED review): ``L_DS = Σ_{i=1}^{N} CE(z_i, y)`` over the N = 4 heads
(stages 1-3 and the final GeM head), applied to drone and satellite samples alike. Per-head weights and label
smoothing are not stated (GAP). Our defaults: equal weights 1 per head and no label smoothing (``label_smoothing``
is a config value; MEAN's base code uses 0.1 only inside InfoNCE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def multi_head_cross_entropy(logits: Sequence[torch.Tensor], labels: torch.Tensor, label_smoothing: float = 0.0,
                             weights: Sequence[float] | None = None) -> torch.Tensor:
    """``Σ_i w_i · CE(logits[i], labels)`` (each CE averaged over the batch).

    ``logits``: one B×K tensor per head; ``labels``: B int64 class indices in [0, K). ``weights`` defaults to 1 per
    head. Returns a scalar tensor.
    """
    if len(logits) == 0:
        raise ValueError("multi_head_cross_entropy: no heads")
    w = [1.0] * len(logits) if weights is None else list(weights)
    if len(w) != len(logits):
        raise ValueError(f"multi_head_cross_entropy: {len(w)} weights for {len(logits)} heads")
    total = logits[0].new_zeros(())
    for wi, z in zip(w, logits, strict=True):
        total = total + wi * F.cross_entropy(z, labels, label_smoothing=label_smoothing)
    return total


__all__ = ["multi_head_cross_entropy"]
