"""Cross-view retrieval metrics exactly as the official University-1652 evaluation computes them.

Reference: ``layumi/University1652-Baseline`` ``evaluate_gpu.py`` (identical in MEAN ``sample4geo/evaluate/
university.py`` and PFED ``Tools/evaluate_norm.py``). Per query: score = gallery · query (features L2-normalised),
ranking ``np.argsort(score)[::-1]``; good = gallery entries with the query's label, junk = gallery label −1 (removed
from the ranking); CMC[j] = 1 for j ≥ the rank of the first good match; AP is the trapezoidal average
``Σ_k (1/n)·½(P_old,k + P_k)`` with ``P_k = k/(r_k+1)``, ``P_old,k = (k−1)/r_k`` (1 when ``r_k = 0``). Queries without
any good match are skipped in the sums but the averages still divide by the number of all queries (as the official
script does). Recall@K = CMC[K−1]; Recall@top1% = CMC[round(0.01·|gallery|)] (Python's round). Values × 100.
"""

from __future__ import annotations

import numpy as np


def compute_ap_cmc(index: np.ndarray, good_index: np.ndarray, junk_index: np.ndarray) -> tuple[float, np.ndarray]:
    """The official ``compute_mAP``: (AP, CMC int array of the full gallery length; CMC[0] = −1 if no good match)."""
    cmc = np.zeros(len(index), dtype=np.int64)
    if good_index.size == 0:
        cmc[0] = -1
        return 0.0, cmc
    index = index[np.isin(index, junk_index, invert=True)]
    ngood = len(good_index)
    rows_good = np.flatnonzero(np.isin(index, good_index))
    cmc[rows_good[0]:] = 1
    ap = 0.0
    for i in range(ngood):
        d_recall = 1.0 / ngood
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap += d_recall * (old_precision + precision) / 2
    return ap, cmc


def retrieval_metrics(query_f: np.ndarray, query_labels: np.ndarray, gallery_f: np.ndarray,
                      gallery_labels: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10, Recall@top1% and AP (percent) of queries (Q×D) against a gallery (G×D) with int labels."""
    qf, gf = np.asarray(query_f, np.float32), np.asarray(gallery_f, np.float32)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1] or len(qf) != len(ql) or len(gf) != len(gl):
        raise ValueError(f"retrieval_metrics: shapes query {qf.shape}/{ql.shape}, gallery {gf.shape}/{gl.shape}")
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError("retrieval_metrics: empty query or gallery")
    cmc_sum = np.zeros(len(gl), dtype=np.float64)
    ap_sum = 0.0
    junk = np.flatnonzero(gl == -1)
    scores = qf @ gf.T
    for i in range(len(ql)):
        index = np.argsort(scores[i])[::-1]
        ap, cmc = compute_ap_cmc(index, np.flatnonzero(gl == ql[i]), junk)
        if cmc[0] == -1:
            continue
        cmc_sum += cmc
        ap_sum += ap
    cmc_mean = cmc_sum / len(ql)

    def at(k: int) -> float:
        return float(cmc_mean[min(k, len(cmc_mean) - 1)] * 100)

    return {"recall@1": at(0), "recall@5": at(4), "recall@10": at(9), "recall@top1%": at(round(len(gl) * 0.01)),
            "AP": float(ap_sum / len(ql) * 100), "queries": int(len(ql)), "gallery": int(len(gl))}


__all__ = ["compute_ap_cmc", "retrieval_metrics"]
