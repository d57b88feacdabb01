"""MSRM: multi-view selection and refinement for a window of views of one place (inference only; no training).

What the MobileGeo paper states (see /work/shared/research/papers.md §1.4): after the frozen student, MSRM uses
**mutual information** to **filter redundant drone views** and so reduce computation, then **refines** the multi-view
representation before retrieval; it adds no FLOPs to the single-image model. Its equations, the MI estimator, the
threshold and the fusion rule are not published anywhere we could read. **Everything below is our hypothesis**, chosen
to be cheap (an N×N Gram matrix of embeddings already computed) and to keep the node's behaviour unchanged with its
current parameters:

* **MI model.** Embeddings are unit vectors (N×D, L2-normalised rows). Two views are modelled as jointly Gaussian
  with correlation ρ = their cosine similarity; their mutual information is then ``I(ρ) = −½·log(1 − ρ²)`` nats
  (:func:`mi_from_cosine`): 0 for orthogonal views, +∞ for identical (or opposite) ones.
* **Selection** (:func:`select_views`). Greedy, newest view first (it is the one the fix is for), then repeatedly the
  view whose highest MI to the kept set is lowest (it brings the most new information), until ``max_views`` views are
  kept or every remaining view's MI to the kept set exceeds ``max_mi``. Ties go to the newer view.
  Default threshold: ``max_mi = I(max_similarity)`` with the existing ``max_similarity`` (cosine, config
  ``node.max_view_similarity``, default 0.995 → 2.304 nats). Because I is increasing in |ρ|, this selects exactly
  what the former cosine pruning selected whenever cosines are ≥ 0 — always the case for our embeddings, which are
  GeM-pooled ReLU6 features (non-negative). Changes against the former pruning, only reachable with negative
  cosines or settings: (1) an anti-correlated view (ρ < 0) counts as redundant by |ρ| (it carries the same
  information under the Gaussian model, and it would cancel in a mean); (2) ``max_similarity`` ≥ 1 disables the
  threshold as before, and a negative ``max_similarity`` now means threshold 0 (only views exactly orthogonal to all
  kept ones are added) instead of "only views anti-correlated below it".
* **Refinement** (not used by the localizer, which averages the kept views; the benchmarks
  ``benchmarks/ablate_msrm.py`` and ``benchmarks/msrm_views.py`` compare it, code in ``test/msrm_variants.py``). The
  kept views are averaged with information weights and re-normalised. The weight of view i is the inverse of its effective number of copies in the kept set,
  ``w_i = 1 / Σ_j ρ_ij² = 1 / (1 + Σ_{j≠i} (1 − exp(−2·I_ij)))``, since under the Gaussian model ρ² = 1 − e^{−2I} is
  the share of view i's variance that view j explains. Two identical views and one distinct view thus get weights
  ½, ½, 1 (the pair counts once); mutually orthogonal views get equal weights (a plain mean). Weights are in
  (1/k, 1] for k views, never zero, so the fusion is defined for any kept set.
"""

from __future__ import annotations

import math

import numpy as np


def mi_from_cosine(rho: np.ndarray | float) -> np.ndarray | float:
    """Mutual information (nats) of two unit embeddings with cosine ``rho`` under the Gaussian model:
    ``−½·log(1 − ρ²)``; |ρ| is clipped to 1 (float rounding of identical rows), where the MI is +∞. Same shape as
    ``rho``."""
    r2 = np.minimum(np.square(np.asarray(rho, dtype=np.float64)), 1.0)
    with np.errstate(divide="ignore"):
        mi = -0.5 * np.log1p(-r2)
    return float(mi) if np.ndim(mi) == 0 else mi


def _unit_rows(embeddings: np.ndarray, who: str) -> np.ndarray:
    """N×D float64 copy of ``embeddings`` with unit rows; refuses empty, non-2-D, non-finite and zero rows."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{who}: expected a non-empty N×D array of embeddings, got shape {emb.shape}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"{who}: embedding rows {np.flatnonzero(bad).tolist()} contain NaN or inf")
    norm = np.linalg.norm(emb, axis=1)
    if (norm <= 1e-12).any():
        raise ValueError(f"{who}: embedding rows {np.flatnonzero(norm <= 1e-12).tolist()} are zero vectors")
    return emb / norm[:, None]


def mutual_information(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise MI (nats) of the views of a window: N×D embeddings → N×N float64, symmetric, diagonal +∞.

    Rows are normalised first, so ρ is the cosine similarity. Raises ValueError for NaN/inf/zero rows."""
    emb = _unit_rows(embeddings, "mutual_information")
    mi = mi_from_cosine(emb @ emb.T)
    np.fill_diagonal(mi, np.inf)
    return mi


def select_views(embeddings: np.ndarray, max_views: int, max_similarity: float = 0.995, *,
                 max_mi: float | None = None) -> np.ndarray:
    """Indices (ascending) of at most ``max_views`` views of a window that carry the most new information.

    ``embeddings``: N×D float, rows L2-normalised (they are normalised again here), oldest first; the newest view
    (last row) is always kept. Greedy MI selection (module docstring): add the view with the lowest max-MI to the
    kept set, ties to the newer view, until ``max_views`` views or until every remaining view has MI > ``max_mi``
    (nats) to some kept view. ``max_mi`` defaults to :func:`mi_from_cosine` of ``max_similarity`` (a cosine; ≥ 1
    means no threshold, < 0 means threshold 0). Returns an int64 array of 1..min(max_views, N) indices.
    Raises ValueError for an empty or non-finite array, zero rows, ``max_views`` < 1 or a NaN threshold.
    """
    if isinstance(max_views, bool) or not isinstance(max_views, (int, np.integer)) or max_views < 1:
        raise ValueError(f"select_views: max_views must be an integer >= 1, got {max_views!r}")
    if max_mi is None:
        s = float(max_similarity)
        if math.isnan(s):
            raise ValueError(f"select_views: max_similarity must be a number, got {max_similarity!r}")
        max_mi = math.inf if s >= 1.0 else float(mi_from_cosine(max(s, 0.0)))
    elif math.isnan(float(max_mi)) or float(max_mi) < 0.0:
        raise ValueError(f"select_views: max_mi must be >= 0 nats, got {max_mi!r}")
    mi = mutual_information(np.asarray(embeddings))
    n = len(mi)
    kept = [n - 1]
    left = np.ones(n, dtype=bool)
    left[n - 1] = False
    closest = mi[n - 1].copy()  # highest MI of each view to the kept set
    while len(kept) < min(int(max_views), n):
        cand = np.flatnonzero(left)
        # reversed scan so that argmin prefers newer views on ties
        j = int(cand[len(cand) - 1 - int(np.argmin(closest[cand][::-1]))])
        if not closest[j] <= max_mi:
            break
        kept.append(j)
        left[j] = False
        closest = np.maximum(closest, mi[j])
    return np.array(sorted(kept), dtype=np.int64)


def thumbnail_descriptors(images: list[np.ndarray], side_px: int = 16) -> np.ndarray:
    """Cheap pre-encoder descriptors for MI selection *before* embedding (so pruned views cost no encoder call).

    Each H×W×3 uint8 RGB image (any size) → its grey ``side_px``² thumbnail (area-averaged), minus its mean, as a
    unit row: N×side_px² float32. Cosines of these rows are Pearson correlations of the thumbnails, i.e. the ρ of
    the module's Gaussian MI model, computed in microseconds per view. Hypothesis (ours, not the paper's): views
    whose thumbnails are highly correlated carry redundant information for the encoder as well. A flat image
    (no texture) gets a zero-mean row of zeros, which is replaced by a tiny constant so it stays a valid unit row.
    """
    import cv2

    rows = []
    for img in images:
        a = np.asarray(img)
        grey = a.astype(np.float32).mean(axis=2) if a.ndim == 3 else a.astype(np.float32)
        t = cv2.resize(grey, (side_px, side_px), interpolation=cv2.INTER_AREA).ravel()
        t = t - t.mean()
        norm = float(np.linalg.norm(t))
        rows.append(t / norm if norm > 1e-6 else np.full(t.shape, 1.0 / side_px, np.float32))
    return np.asarray(rows, dtype=np.float32)


__all__ = ["mi_from_cosine", "mutual_information", "select_views", "thumbnail_descriptors"]
