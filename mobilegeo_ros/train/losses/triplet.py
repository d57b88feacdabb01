"""Batch-hard triplet loss on the retrieval embedding (drone and satellite features together).

Paper (MobileGeo figure objective 1): a "cross-domain triplet loss from drone & satellite features" on the GeM
output. Margin and mining are not stated (GAP). Our default follows the MEAN base code (``TripletLoss(margin=0.3)``,
batch-hard mining over the concatenated drone+satellite features with their class labels): for every anchor the
farthest same-class sample and the nearest other-class sample, Euclidean distance, ``relu(d_ap − d_an + margin)``.
Whether features are L2-normalised first is a config value (default: yes, the retrieval space is cosine).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """B×B Euclidean distances of the rows of a B×D tensor (difference form: exact gradients off the diagonal)."""
    diff = x[:, None, :] - x[None, :, :]
    return diff.pow(2).sum(-1).clamp_min(eps).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       normalize: bool = True) -> torch.Tensor:
    """Mean over valid anchors of ``relu(max_{p: y_p=y_a, p≠a} d(a,p) − min_{n: y_n≠y_a} d(a,n) + margin)``.

    ``features``: B×D; ``labels``: B ints. Anchors without a positive or without a negative are skipped; a batch
    with no valid anchor gives 0 (connected to the graph). Returns a scalar tensor.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"batch_hard_triplet: features B×D and labels B expected, got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    x = F.normalize(features, dim=1) if normalize else features
    d = pairwise_distances(x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap = d.masked_fill(~pos_mask, float("-inf")).amax(1)
    d_an = d.masked_fill(~neg_mask, float("inf")).amin(1)
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


__all__ = ["batch_hard_triplet", "pairwise_distances"]
