"""View selection for multi-view fusion: which views of a sliding window are worth fusing.

:func:`select_views` is the one interface the localizer and the ROS node use. This version is a greedy redundancy
pruning by embedding similarity (farthest-point selection in cosine distance). The full mutual-information MSRM
(multi-view selection by redundancy minimisation) of the MobileGeo paper arrives with the training issue behind this
same function and signature.
"""

from __future__ import annotations

import numpy as np


def select_views(embeddings: np.ndarray, max_views: int, max_similarity: float = 0.995) -> np.ndarray:
    """Indices (ascending) of at most ``max_views`` mutually least redundant views of a window.

    ``embeddings``: N×D float, rows L2-normalised, oldest first (the newest view is the last row and is always kept).
    Greedy: start from the newest view, then repeatedly add the view whose highest cosine similarity to the views
    already kept is lowest; stop at ``max_views`` or when every remaining view is a near duplicate (similarity above
    ``max_similarity``) of a kept one. Ties go to the newer view. Returns an int64 array of 1..max_views indices.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"select_views: expected a non-empty N×D array, got shape {emb.shape}")
    if max_views < 1:
        raise ValueError(f"select_views: max_views must be >= 1, got {max_views}")
    n = len(emb)
    sim = emb @ emb.T
    kept = [n - 1]
    # highest similarity of each view to the kept set
    closest = sim[n - 1].copy()
    closest[n - 1] = np.inf
    while len(kept) < min(max_views, n):
        # reversed scan so that argmin prefers newer views on ties
        j = n - 1 - int(np.argmin(closest[::-1]))
        if closest[j] > max_similarity:
            break
        kept.append(j)
        closest = np.maximum(closest, sim[j])
        closest[kept] = np.inf
    return np.array(sorted(kept), dtype=np.int64)


__all__ = ["select_views"]
