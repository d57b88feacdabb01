"""Metrics for localization runs: error statistics, recall@k of the retrieved tiles, sigma honesty.

Positions are in one projected map CRS (metres). A retrieved tile counts as correct when the ground point under the
image centre lies inside its square footprint (axis-aligned, north-up tiles: |Δe|, |Δn| ≤ size/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def tile_contains(center_e: np.ndarray, center_n: np.ndarray, size_m: np.ndarray, e: float, n: float) -> np.ndarray:
    """Boolean array: does each tile (centres and sides in metres) contain the point (e, n)?"""
    half = np.asarray(size_m, np.float64) / 2.0
    return (np.abs(np.asarray(center_e) - e) <= half) & (np.abs(np.asarray(center_n) - n) <= half)


def recall_at_k(hit_lists: list[np.ndarray], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k in percent from one boolean hit array per query (ranked best first)."""
    out = {}
    for k in ks:
        hits = [bool(np.any(h[:k])) for h in hit_lists]
        out[f"recall@{k}"] = 100.0 * float(np.mean(hits)) if hits else float("nan")
    return out


@dataclass
class ErrorSummary:
    """Summary of horizontal errors (metres) over a run; fractions in 0..1."""

    queries: int
    fixes: int
    fix_rate: float
    median_error_m: float
    p95_error_m: float
    max_error_m: float
    mean_sigma_m: float
    within_2sigma_fraction: float  # over fixes: true error ≤ 2 × reported 1-sigma
    wrong_confident_fixes: int  # fixes with error > 50 m (a flight controller would trust them)

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in vars(self).items()}


def summarize_errors(errors_m: np.ndarray, sigmas_m: np.ndarray, is_fix: np.ndarray,
                     wrong_threshold_m: float = 50.0) -> ErrorSummary:
    """Errors and reported 1-sigmas (metres, one per query; NaN where no fix) → :class:`ErrorSummary`."""
    errors_m, sigmas_m, is_fix = np.asarray(errors_m, float), np.asarray(sigmas_m, float), np.asarray(is_fix, bool)
    fe, fs = errors_m[is_fix], sigmas_m[is_fix]
    nan = float("nan")
    return ErrorSummary(
        queries=len(errors_m), fixes=int(is_fix.sum()),
        fix_rate=float(is_fix.mean()) if len(is_fix) else nan,
        median_error_m=float(np.median(fe)) if len(fe) else nan,
        p95_error_m=float(np.percentile(fe, 95)) if len(fe) else nan,
        max_error_m=float(fe.max()) if len(fe) else nan,
        mean_sigma_m=float(fs.mean()) if len(fs) else nan,
        within_2sigma_fraction=float(np.mean(fe <= 2.0 * fs)) if len(fe) else nan,
        wrong_confident_fixes=int(np.sum(fe > wrong_threshold_m)),
    )
