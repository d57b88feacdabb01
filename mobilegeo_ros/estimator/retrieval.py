"""Top-k retrieved tiles → one position, an honest 1-sigma and a fix / no-fix decision.

Retrieval gives a ranked list of tiles with cosine scores; the camera is *somewhere* in one of them. We treat the
top-k list as a mixture: each tile i gets a weight w_i = softmax(s_i / T) (T = ``softmax_temperature``) and stands for a
uniform distribution over its square footprint (variance size²/12 per axis). The estimate is

* position: the weighted mean of the tile centres in the *winning cluster*. Tiles are grouped greedily, best score
  first, each group taking every tile within ``cluster_radius_m`` of its seed; the group with the largest total
  weight wins, so a wrong top-1 is outvoted when several runner-ups agree elsewhere;
* covariance (east/north, m²): the second moment of the *whole* mixture about that position, i.e. the within-tile
  variance plus the spread of every candidate, weighted. Distant runner-ups with non-negligible weight inflate sigma,
  which is what makes the sigma honest when retrieval is ambiguous;
* status ``no_fix`` when the best cosine is below ``min_score``, the winning cluster holds less than
  ``min_cluster_weight`` of the weight, or its lead over the second cluster is below ``min_margin``.

All positions are in the map CRS (metres, easting/northing); sizes in metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mobilegeo_ros.config import EstimatorConfig


@dataclass
class RetrievalEstimate:
    """Result of :func:`estimate` (map CRS, metres)."""

    status: str  # "fix" | "no_fix"
    easting: float
    northing: float
    cov_en: np.ndarray  # 2×2, m², (east, north)
    score: float  # cosine similarity of the best tile
    heading_deg: float | None  # rotation of the best gallery copy = camera yaw estimate (compass, degrees)
    best_row: int  # index row of the best match (-1 when there was none)
    cluster_share: float  # weight share of the winning cluster (0..1)
    margin: float  # winning cluster share minus the runner-up cluster's share
    reason: str = ""
    members: list[int] = field(default_factory=list)  # rows in the winning cluster
    ranked_rows: list[int] = field(default_factory=list)  # every candidate row, best score first

    @property
    def sigma_m(self) -> float:
        """1-sigma horizontal error (metres): sqrt of the mean of the two principal variances (DRMS / sqrt 2)."""
        return float(np.sqrt(max(np.trace(self.cov_en), 0.0) / 2.0))


def _no_fix(reason: str, score: float = float("nan")) -> RetrievalEstimate:
    return RetrievalEstimate(
        status="no_fix", easting=float("nan"), northing=float("nan"), cov_en=np.full((2, 2), np.nan), score=score,
        heading_deg=None, best_row=-1, cluster_share=0.0, margin=0.0, reason=reason,
    )


def estimate(
    scores: np.ndarray,
    rows: np.ndarray,
    center_e: np.ndarray,
    center_n: np.ndarray,
    size_m: np.ndarray,
    rotation_deg: np.ndarray,
    cfg: EstimatorConfig,
) -> RetrievalEstimate:
    """Estimate a position from the top-k distinct tiles of one query.

    :param scores: (k,) cosine similarities, any order; NaN entries are ignored.
    :param rows: (k,) index rows of those tiles (-1 = padding, ignored).
    :param center_e, center_n: (k,) tile centres in the map CRS, metres.
    :param size_m: (k,) tile side lengths, metres.
    :param rotation_deg: (k,) rotation of the matched gallery copy (compass heading of the tile's top edge).
    """
    scores = np.asarray(scores, np.float64)
    rows = np.asarray(rows, np.int64)
    valid = (rows >= 0) & np.isfinite(scores)
    if not valid.any():
        return _no_fix("no candidate tiles")
    s, r = scores[valid], rows[valid]
    ce, cn = np.asarray(center_e, np.float64)[valid], np.asarray(center_n, np.float64)[valid]
    size, rot = np.asarray(size_m, np.float64)[valid], np.asarray(rotation_deg, np.float64)[valid]

    w = np.exp((s - s.max()) / cfg.softmax_temperature)
    w /= w.sum()
    radius = cfg.cluster_radius_m or float(size.min())

    # Greedy clustering from the best score down: each cluster is seeded by its best tile.
    order = np.argsort(-s)
    label = np.full(len(s), -1)
    seeds: list[int] = []
    for i in order:
        if label[i] >= 0:
            continue
        near = (np.hypot(ce - ce[i], cn - cn[i]) <= radius) & (label < 0)
        label[near] = len(seeds)
        seeds.append(int(i))
    share = np.array([w[label == c].sum() for c in range(len(seeds))])
    win = int(np.argmax(share))
    ranked = np.sort(share)[::-1]
    margin = float(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0))

    members = label == win
    wm = w[members] / w[members].sum()
    e = float(wm @ ce[members])
    n = float(wm @ cn[members])

    # Mixture second moment about (e, n): within-tile uniform variance + spread of all candidates.
    de, dn = ce - e, cn - n
    within = w @ (size**2 / 12.0)
    cov = np.array([[w @ (de * de) + within, w @ (de * dn)], [w @ (de * dn), w @ (dn * dn) + within]])
    floor = cfg.sigma_floor_m or float(size[seeds[win]]) / 4.0
    cov *= cfg.sigma_scale**2
    sig2 = np.trace(cov) / 2.0
    if sig2 < floor**2:
        cov += np.eye(2) * (floor**2 - sig2)

    best = seeds[win]
    result = RetrievalEstimate(
        status="fix", easting=e, northing=n, cov_en=cov, score=float(s.max()), heading_deg=float(rot[best] % 360.0),
        best_row=int(r[best]), cluster_share=float(share[win]), margin=margin, members=[int(x) for x in r[members]],
        ranked_rows=[int(x) for x in r[order]],
    )
    if s.max() < cfg.min_score:
        result.status, result.reason = "no_fix", f"best score {s.max():.3f} < min_score {cfg.min_score:.3f}"
    elif share[win] < cfg.min_cluster_weight:
        result.status = "no_fix"
        result.reason = f"ambiguous: winning cluster holds {share[win]:.2f} < {cfg.min_cluster_weight:.2f} of the weight"
    elif margin < cfg.min_margin:
        result.status, result.reason = "no_fix", f"ambiguous: margin {margin:.2f} < {cfg.min_margin:.2f}"
    return result
