"""Variants of MSRM that the product does not use, kept as references for the tests and the benchmarks
(``benchmarks/ablate_msrm.py``, ``benchmarks/msrm_views.py``): the former cosine pruning that
:func:`mobilegeo_ros.msrm.select_views` replaced, and information-weighted fusion (the localizer fuses the kept views
with a plain mean). The model behind the weights is described in :mod:`mobilegeo_ros.msrm`."""

from __future__ import annotations

import numpy as np

from mobilegeo_ros.msrm import _unit_rows


def cosine_pruning(emb: np.ndarray, max_views: int, max_similarity: float = 0.995) -> np.ndarray:
    """The former ``msrm.select_views``: greedy farthest-point pruning in cosine similarity, newest view first;
    indices ascending."""
    n = len(emb)
    sim = emb @ emb.T
    kept = [n - 1]
    closest = sim[n - 1].copy()
    closest[n - 1] = np.inf
    while len(kept) < min(max_views, n):
        j = n - 1 - int(np.argmin(closest[::-1]))
        if closest[j] > max_similarity:
            break
        kept.append(j)
        closest = np.maximum(closest, sim[j])
        closest[kept] = np.inf
    return np.array(sorted(kept), dtype=np.int64)


def information_weights(embeddings: np.ndarray) -> np.ndarray:
    """Fusion weight of each of k views: ``1 / Σ_j ρ_ij²`` (the inverse of its effective number of copies, module
    docstring). k×D → k float64 in (1/k, 1]; raises ValueError for NaN/inf/zero rows."""
    emb = _unit_rows(embeddings, "information_weights")
    rho2 = np.minimum(np.square(emb @ emb.T), 1.0)
    np.fill_diagonal(rho2, 1.0)
    return 1.0 / rho2.sum(axis=1)


def fuse(embeddings: np.ndarray, indices: np.ndarray | list[int] | None = None,
         weights: np.ndarray | list[float] | None = None) -> np.ndarray:
    """One L2-normalised D float32 vector from the views ``indices`` (default: all) of an N×D window.

    ``weights`` (one per index, finite, ≥ 0, not all 0) default to :func:`information_weights` of the chosen views;
    pass ones for a plain mean. Raises ValueError for NaN/inf/zero rows, bad indices or weights, or views that
    cancel (fused norm ≈ 0).
    """
    emb = _unit_rows(embeddings, "fuse")
    idx = np.arange(len(emb)) if indices is None else np.asarray(indices)
    if idx.ndim != 1 or len(idx) == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"fuse: indices must be a non-empty 1-D integer array, got {idx!r}")
    if idx.min() < -len(emb) or idx.max() >= len(emb):
        raise ValueError(f"fuse: indices {idx.tolist()} out of range for {len(emb)} views")
    sel = emb[idx]
    if weights is None:
        w = information_weights(sel)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(idx),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"fuse: weights must be {len(idx)} finite values >= 0, not all zero; got {w!r}")
    v = (w[:, None] * sel).sum(axis=0)
    norm = float(np.linalg.norm(v))
    if norm <= 1e-9 * float(w.sum()):
        raise ValueError("fuse: the weighted views cancel out (fused embedding has zero norm)")
    return (v / norm).astype(np.float32)
