"""Official University-1652 metric code against hand-computed rankings."""

import numpy as np
import pytest

from mobilegeo_ros.eval.retrieval_metrics import compute_ap_cmc, retrieval_metrics


def test_ap_hand_computed_two_positives():
    # ranking [g0, g1, g2, g3], positives at 0-based ranks 1 and 3:
    # k=1: P = 1/2, P_old = 0/1 -> 1/4 ; k=2: P = 2/4, P_old = 1/3 -> 5/12 ; AP = ½(1/4 + 5/12) = 1/3
    ap, cmc = compute_ap_cmc(np.array([0, 1, 2, 3]), np.array([1, 3]), np.array([], int))
    assert ap == pytest.approx(1 / 3)
    assert cmc.tolist() == [0, 1, 1, 1]


def test_single_positive_ap_and_junk_removed():
    for r in range(4):
        ap, _ = compute_ap_cmc(np.arange(5), np.array([r]), np.array([], int))
        assert ap == pytest.approx(1.0 if r == 0 else 1 / (2 * (r + 1)))
    # junk g0 ahead of the positive g1 is removed: the positive becomes rank 0
    ap, cmc = compute_ap_cmc(np.array([0, 1, 2]), np.array([1]), np.array([0]))
    assert ap == 1.0 and cmc[0] == 1
    _, cmc = compute_ap_cmc(np.arange(3), np.array([], int), np.array([], int))
    assert cmc[0] == -1


def test_metrics_hand_computed_rankings():
    # 1-D "features" on a circle so the dot products give a chosen ranking
    angles = np.radians([0.0, 10.0, 20.0, 30.0])
    gallery = np.stack([np.cos(angles), np.sin(angles)], 1)
    gl = np.array([7, 8, 9, -1])
    q = np.stack([np.cos(np.radians([1.0, 29.0])), np.sin(np.radians([1.0, 29.0]))], 1)
    ql = np.array([7, 8])
    # query 0 ranking: g0(7) g1 g2 g3 -> rank 0, AP 1. query 1 ranking: g3(junk) g2 g1(8) g0 -> junk removed, the
    # positive at rank 1: AP = 1/4, CMC from index 1
    m = retrieval_metrics(q, ql, gallery, gl)
    assert m["recall@1"] == pytest.approx(50.0)
    assert m["recall@5"] == pytest.approx(100.0) and m["recall@10"] == pytest.approx(100.0)
    assert m["AP"] == pytest.approx((1.0 + 0.25) / 2 * 100)
    assert m["recall@top1%"] == pytest.approx(50.0)  # round(0.04) = 0 -> CMC[0]


def test_query_without_match_counts_in_the_denominator():
    g = np.eye(3, dtype=np.float32)
    m = retrieval_metrics(g[:2], np.array([0, 5]), g, np.array([0, 1, 2]))
    assert m["recall@1"] == pytest.approx(50.0) and m["AP"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        retrieval_metrics(g, np.array([0]), g, np.array([0, 1, 2]))
