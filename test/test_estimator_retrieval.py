"""Top-k tiles → position, honest sigma, fix / no-fix (hand-checkable cases)."""

import numpy as np
import pytest

from mobilegeo_ros.config import EstimatorConfig
from mobilegeo_ros.estimator.retrieval import estimate


def _run(scores, centers, size=100.0, rot=None, **cfg):
    centers = np.asarray(centers, float)
    k = len(scores)
    return estimate(np.asarray(scores, float), np.arange(k), centers[:, 0], centers[:, 1], np.full(k, size),
                    np.zeros(k) if rot is None else np.asarray(rot, float), EstimatorConfig(**cfg))


def test_single_confident_tile_gives_its_centre_and_tile_sized_sigma():
    est = _run([0.9, 0.2, 0.1], [[500, 500], [0, 0], [1000, 0]], softmax_temperature=0.02)
    assert est.status == "fix"
    assert est.easting == pytest.approx(500) and est.northing == pytest.approx(500)
    # Runner-ups carry weight exp(-35) ≈ 0: sigma is the uniform-in-tile sigma 100/sqrt(12) = 28.9 m.
    assert est.sigma_m == pytest.approx(100 / np.sqrt(12), rel=1e-3)
    assert est.cluster_share == pytest.approx(1.0)


def test_weighted_mean_inside_the_winning_cluster():
    # Two adjacent tiles with equal scores: the estimate is midway.
    est = _run([0.8, 0.8, 0.1], [[0, 0], [60, 0], [5000, 5000]], cluster_radius_m=100)
    assert est.easting == pytest.approx(30) and est.northing == pytest.approx(0)
    assert est.members == [0, 1]


def test_wrong_top1_is_outvoted_by_an_agreeing_cluster():
    # Top-1 is alone far away; four slightly weaker tiles agree on another place.
    scores = [0.81, 0.80, 0.80, 0.80, 0.80]
    centers = [[5000, 5000], [0, 0], [50, 0], [0, 50], [50, 50]]
    est = _run(scores, centers, cluster_radius_m=100, softmax_temperature=0.02, min_cluster_weight=0.5)
    assert est.status == "fix"
    assert np.hypot(est.easting - 25, est.northing - 25) < 1e-6
    # ...and the far-away candidate inflates the reported sigma (honest uncertainty).
    assert est.sigma_m > 1000


def test_ambiguous_evidence_is_no_fix():
    # Two clusters far apart with equal weight: neither holds the required share.
    est = _run([0.8, 0.8], [[0, 0], [3000, 0]], min_cluster_weight=0.6)
    assert est.status == "no_fix" and "ambiguous" in est.reason
    # Margin rule: shares 0.5 / 0.5 → margin 0.
    est = _run([0.8, 0.8], [[0, 0], [3000, 0]], min_cluster_weight=0.0, min_margin=0.1)
    assert est.status == "no_fix" and "margin" in est.reason


def test_low_score_is_no_fix_and_empty_input_is_no_fix():
    est = _run([0.1, 0.05], [[0, 0], [100, 0]], min_score=0.3)
    assert est.status == "no_fix" and "min_score" in est.reason
    empty = estimate(np.zeros(0), np.zeros(0, int), *[np.zeros(0)] * 4, EstimatorConfig())
    assert empty.status == "no_fix" and empty.best_row == -1
    padded = estimate(np.array([np.nan]), np.array([-1]), *[np.zeros(1)] * 4, EstimatorConfig())
    assert padded.status == "no_fix"


def test_heading_comes_from_the_best_copy_and_sigma_floor_and_scale_apply():
    est = _run([0.9, 0.3], [[0, 0], [10, 0]], rot=[135, 0], sigma_floor_m=40)
    assert est.heading_deg == 135
    assert est.sigma_m == pytest.approx(40, rel=1e-6)
    scaled = _run([0.9, 0.3], [[0, 0], [10, 0]], sigma_scale=2.0)
    base = _run([0.9, 0.3], [[0, 0], [10, 0]])
    assert scaled.sigma_m == pytest.approx(2 * base.sigma_m, rel=1e-6)


def test_no_fix_estimates_carry_no_position_at_all():
    """Every no-fix path leaves nothing a consumer could mistake for a position (mutation survivors of _no_fix)."""
    empty = estimate(np.zeros(0), np.zeros(0, int), *[np.zeros(0)] * 4, EstimatorConfig())
    for est in (empty, estimate(np.array([np.nan]), np.array([-1]), *[np.zeros(1)] * 4, EstimatorConfig())):
        assert est.status == "no_fix" and est.reason
        assert isinstance(est.easting, float) and np.isnan(est.easting) and np.isnan(est.northing)
        assert est.cov_en.shape == (2, 2) and np.all(np.isnan(est.cov_en)) and np.isnan(est.sigma_m)
        assert est.heading_deg is None and est.best_row == -1
        assert est.cluster_share == 0.0 and est.margin == 0.0
    assert empty.reason == "no candidate tiles"
    assert np.isnan(empty.score)
