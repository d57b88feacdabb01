"""MSRM (mobilegeo_ros.msrm): the Gaussian MI of unit embeddings, greedy MI view selection (order, threshold,
degenerate windows, equivalence with the former cosine pruning) and the information-weighted fusion the benchmarks
compare (test/msrm_variants.py), against values computed by hand."""

import math

import numpy as np
import pytest

from mobilegeo_ros.msrm import mi_from_cosine, mutual_information, select_views
from msrm_variants import cosine_pruning, fuse, information_weights


def _unit(rows):
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_mi_from_cosine_hand_values():
    # −½·ln(1 − ρ²): ρ = 0.6 → −½·ln 0.64 = ln 1.25; ρ = 0.8 → −½·ln 0.36 = ln(5/3)
    assert mi_from_cosine(0.0) == 0.0
    assert mi_from_cosine(0.6) == pytest.approx(math.log(1.25), rel=1e-12)
    assert mi_from_cosine(0.8) == pytest.approx(math.log(5.0 / 3.0), rel=1e-12)
    assert mi_from_cosine(-0.8) == pytest.approx(math.log(5.0 / 3.0), rel=1e-12)
    assert mi_from_cosine(0.995) == pytest.approx(2.3038367, abs=1e-6)
    assert mi_from_cosine(1.0) == math.inf
    assert mi_from_cosine(1.0 + 1e-7) == math.inf  # float rounding of identical rows is not NaN
    np.testing.assert_allclose(mi_from_cosine(np.array([0.0, 0.6])), [0.0, math.log(1.25)])


def test_mutual_information_matrix():
    e = _unit([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    mi = mutual_information(e)
    assert mi.shape == (3, 3)
    assert np.isinf(np.diag(mi)).all()
    assert mi[0, 1] == pytest.approx(math.log(1.25), rel=1e-6) and mi[1, 0] == mi[0, 1]
    assert mi[0, 2] == pytest.approx(0.0, abs=1e-12) and mi[1, 2] == pytest.approx(0.0, abs=1e-12)
    # rows are normalised first: scaling a row does not change its MI
    np.testing.assert_allclose(mutual_information(e * np.array([[3.0], [0.5], [2.0]])), mi, rtol=1e-6)


# Newest view n=(1,0,0). Cosines to it: a 0.8, b 0.6, c 0. c first (MI 0); then max-MI to {n, c}: a max(0.8, 0.6)
# → ln(5/3) = 0.511, b max(0.6, 0) → ln 1.25 = 0.223, so b, then a.
ORDER = _unit([[0.8, 0.6, 0], [0.6, 0, 0.8], [0, 1, 0], [1, 0, 0]])


def test_selection_order_is_most_new_information_first():
    assert select_views(ORDER, 1).tolist() == [3]
    assert select_views(ORDER, 2).tolist() == [2, 3]
    assert select_views(ORDER, 3).tolist() == [1, 2, 3]
    assert select_views(ORDER, 4).tolist() == [0, 1, 2, 3]
    assert select_views(ORDER, 99).tolist() == [0, 1, 2, 3]
    assert select_views(ORDER, 4).dtype == np.int64


def test_selection_threshold_in_nats_and_from_max_similarity():
    # a (0.511 nats) is over 0.3, b (0.223 nats) is under it; 0.2 stops before b
    assert select_views(ORDER, 4, max_mi=0.3).tolist() == [1, 2, 3]
    assert select_views(ORDER, 4, max_mi=0.2).tolist() == [2, 3]
    assert select_views(ORDER, 4, max_mi=0.0).tolist() == [2, 3]  # c has exactly zero MI
    # positional max_similarity (the node's call): cosine 0.7 → I(0.7) = 0.3367 nats, between b and a
    assert select_views(ORDER, 4, 0.7).tolist() == [1, 2, 3]
    assert select_views(ORDER, 4, 0.85).tolist() == [0, 1, 2, 3]
    assert select_views(ORDER, 4, 1.1).tolist() == [0, 1, 2, 3]
    # negative max_similarity: threshold 0, only the orthogonal view joins
    assert select_views(ORDER, 4, -0.5).tolist() == [2, 3]


def test_ties_go_to_the_newer_view():
    e = _unit([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert select_views(e, 2).tolist() == [1, 2]


def test_anticorrelated_view_counts_as_redundant():
    # cosine −1 to the newest: the former pruning took it first (lowest cosine); under the Gaussian model it carries
    # no new information and a mean would cancel it, so it is pruned and the ρ = 0.6 view is taken instead
    e = _unit([[-1, 0], [0.6, 0.8], [1, 0]])
    assert cosine_pruning(e, 3).tolist() == [0, 1, 2]
    assert select_views(e, 3).tolist() == [1, 2]


def test_degenerate_windows():
    assert select_views(_unit([[0.3, 0.4]]), 5).tolist() == [0]
    same = _unit([[1, 2, 3]] * 3)
    assert select_views(same, 3).tolist() == [2]
    # no threshold: identical views (MI = +inf) are still added one by one, none twice
    assert select_views(same, 3, 1.1).tolist() == [0, 1, 2]
    assert select_views(same, 3, max_mi=math.inf).tolist() == [0, 1, 2]
    # the existing ROS-pipeline case: rows 0, 1 duplicate row 3 (cosine ≈ 0.9999995 > 0.995)
    e = _unit([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0.001, 0]])
    assert select_views(e, 4).tolist() == [2, 3]


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, 0.0], [np.nan, 1.0]]), r"rows \[1\] contain NaN"),
    (np.array([[1.0, 0.0], [np.inf, 1.0]]), "NaN or inf"),
    (np.array([[1.0, 0.0], [0.0, 0.0]]), "zero vectors"),
    (np.zeros((0, 4)), "non-empty"),
    (np.ones(4), "N×D"),
])
def test_bad_embeddings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        select_views(bad, 2)
    with pytest.raises(ValueError, match=match):
        fuse(bad)


def test_bad_parameters_are_refused():
    for mv in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="max_views"):
            select_views(ORDER, mv)
    with pytest.raises(ValueError, match="max_similarity"):
        select_views(ORDER, 2, float("nan"))
    with pytest.raises(ValueError, match="max_mi"):
        select_views(ORDER, 2, max_mi=-0.1)


def test_default_threshold_reproduces_the_former_cosine_pruning():
    # non-negative embeddings (as GeM-pooled ReLU6 features are): identical selections for any settings
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 16))
        base = rng.random((1, 24))
        # windows of near-duplicates and distinct views, so both the threshold and the order matter
        emb = _unit(base + rng.random((n, 24)) * rng.choice([0.01, 0.1, 1.0], size=(n, 1)))
        emb[rng.random(n) < 0.2] = emb[-1]
        mv = int(rng.integers(1, n + 2))
        ms = float(rng.choice([0.9, 0.99, 0.995, 0.9999, 1.1]))
        assert select_views(emb, mv, ms).tolist() == cosine_pruning(emb, mv, ms).tolist(), (trial, n, mv, ms)


def test_information_weights_hand_values():
    # identical pair + orthogonal view: the pair counts once → ½, ½, 1
    np.testing.assert_allclose(information_weights(_unit([[1, 0], [1, 0], [0, 1]])), [0.5, 0.5, 1.0])
    # cosine 0.6 pair + orthogonal view: 1 / (1 + 0.36) for the pair
    w = information_weights(_unit([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]]))
    np.testing.assert_allclose(w, [1 / 1.36, 1 / 1.36, 1.0], rtol=1e-6)
    # mutually orthogonal views: a plain mean
    np.testing.assert_allclose(information_weights(np.eye(4)), np.ones(4))


def test_fuse_information_weighted_hand_values():
    e = _unit([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    # w = (1/1.36, 1/1.36, 1): v = (1.6/1.36, 0.8/1.36, 1) = (1.17647, 0.58824, 1), |v| = 1.65230
    f = fuse(e, [0, 1, 2])
    assert f.dtype == np.float32 and f.shape == (3,)
    np.testing.assert_allclose(f, [0.712025, 0.356013, 0.605221], atol=1e-5)
    assert fuse(e) == pytest.approx(f)
    # duplicates do not outvote: (a, a, b) fuses to (a + b)/√2, a plain mean to (2a + b)/√5
    d = _unit([[1, 0], [1, 0], [0, 1]])
    np.testing.assert_allclose(fuse(d, [0, 1, 2]), [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    np.testing.assert_allclose(fuse(d, [0, 1, 2], np.ones(3)), [2 / 5 ** 0.5, 1 / 5 ** 0.5], atol=1e-6)
    # selected subset and explicit weights
    np.testing.assert_allclose(fuse(e, np.array([0, 2]), [3.0, 1.0]), np.array([3, 0, 1]) / 10 ** 0.5, atol=1e-6)
    # one view: the (normalised) view itself
    np.testing.assert_allclose(fuse(np.array([[3.0, 4.0]]), [0]), [0.6, 0.8], atol=1e-7)


def test_fuse_refuses_bad_input():
    e = _unit([[1, 0], [0, 1]])
    for idx in ([], [2], [[0, 1]], [0.5]):
        with pytest.raises(ValueError, match="indices"):
            fuse(e, idx)
    for w in ([1.0], [1.0, -1.0], [0.0, 0.0], [1.0, np.nan]):
        with pytest.raises(ValueError, match="weights"):
            fuse(e, [0, 1], w)
    with pytest.raises(ValueError, match="cancel"):
        fuse(_unit([[1, 0], [-1, 0]]), [0, 1], [1.0, 1.0])


def test_thumbnail_descriptors_drive_selection_before_the_encoder():
    from mobilegeo_ros.msrm import thumbnail_descriptors

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    flat = np.full((48, 48, 3), 90, np.uint8)
    d = thumbnail_descriptors([a, b, a.copy(), flat], side_px=8)
    assert d.shape == (4, 64) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(d[0], d[2])  # identical images, identical descriptors
    # brightness/contrast changes do not change a zero-mean, unit-norm thumbnail (Pearson correlation)
    brighter = np.clip(a.astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
    assert float(thumbnail_descriptors([brighter], 8)[0] @ d[0]) > 0.99
    # the duplicate is the redundant view: with room for 3 of 4, MI selection drops one of the two copies of a
    kept = select_views(d, 3, 1.0)
    assert len(kept) == 3 and 1 in kept and 3 in kept and not (0 in kept and 2 in kept)
