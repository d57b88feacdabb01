"""Constant-velocity Kalman filter: hand-checked updates, gate, resets, and a simulated noisy track with outliers."""

import math

import numpy as np
import pytest

from mobilegeo_ros.estimator.kalman import ConstantVelocityFilter, chi2_2dof_quantile


def test_chi2_quantile():
    assert chi2_2dof_quantile(0.95) == pytest.approx(5.991, abs=1e-3)
    assert chi2_2dof_quantile(0.999) == pytest.approx(13.816, abs=1e-3)
    with pytest.raises(ValueError, match="gate_probability"):
        chi2_2dof_quantile(1.0)


def test_init_then_two_simultaneous_measurements_average():
    kf = ConstantVelocityFilter(accel_psd=1.0, initial_speed_sigma=2.0)
    r = kf.update(10.0, (0.0, 0.0), np.eye(2))
    assert r.event == "init" and r.position.tolist() == [0.0, 0.0] and r.velocity.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(r.position_cov, np.eye(2))
    np.testing.assert_allclose(r.velocity_cov, 4.0 * np.eye(2))
    # same time stamp: no prediction, so the update is the precision-weighted mean of two equal measurements
    r = kf.update(10.0, (2.0, 0.0), np.eye(2))
    assert r.event == "update"
    np.testing.assert_allclose(r.position, [1.0, 0.0])
    np.testing.assert_allclose(r.position_cov, 0.5 * np.eye(2))
    # d2 = |y|^2 / (P + R) = 4 / 2
    assert r.mahalanobis2 == pytest.approx(2.0)


def test_process_noise_growth_by_hand():
    kf = ConstantVelocityFilter(accel_psd=3.0, initial_speed_sigma=1.0)
    kf.update(0.0, (0.0, 0.0), np.eye(2) * 4.0)
    x, P = kf.predict(2.0)
    # P_ee = P0 + dt^2 * sv^2 + q dt^3 / 3 = 4 + 4 + 8 ; P_ev = dt sv^2 + q dt^2 / 2 = 2 + 6 ; P_vv = 1 + q dt = 7
    assert P[0, 0] == pytest.approx(16.0) and P[0, 2] == pytest.approx(8.0) and P[2, 2] == pytest.approx(7.0)
    assert P[0, 1] == pytest.approx(0.0)


def test_velocity_from_precise_measurements():
    kf = ConstantVelocityFilter(accel_psd=0.01)
    for k in range(20):
        r = kf.update(k * 0.5, (5.0 * k * 0.5, -2.0 * k * 0.5), np.eye(2) * 1e-4)
    np.testing.assert_allclose(r.velocity, [5.0, -2.0], atol=1e-2)
    np.testing.assert_allclose(r.position, [47.5, -19.0], atol=1e-2)


def test_gate_rejects_then_resets_after_n():
    kf = ConstantVelocityFilter(accel_psd=1.0, max_rejections=3, initial_speed_sigma=1.0)
    kf.update(0.0, (0.0, 0.0), np.eye(2))
    r = kf.update(0.1, (500.0, 0.0), np.eye(2))
    assert r.event == "rejected" and not r.accepted and r.mahalanobis2 > 1000
    assert abs(r.position[0]) < 1.0  # the state is the prediction, not the outlier
    assert kf.update(0.2, (500.0, 0.0), np.eye(2)).event == "rejected"
    r = kf.update(0.3, (500.0, 0.0), np.eye(2))
    assert r.event == "reset_rejections" and r.position.tolist() == [500.0, 0.0]
    assert kf.counts["rejected"] == 3 and kf.counts["resets"] == 1
    # a good measurement in between clears the streak
    kf.update(0.4, (900.0, 0.0), np.eye(2))
    assert kf.consecutive_rejections == 1
    assert kf.update(0.5, (500.5, 0.0), np.eye(2)).event == "update"
    assert kf.consecutive_rejections == 0


def test_gap_and_time_backwards_reset():
    kf = ConstantVelocityFilter(max_gap_s=2.0)
    kf.update(100.0, (0.0, 0.0), np.eye(2))
    r = kf.update(103.0, (1.0, 1.0), np.eye(2))
    assert r.event == "reset_gap" and kf.counts["gaps"] == 1
    r = kf.update(50.0, (7.0, 7.0), np.eye(2))
    assert r.event == "reset_time_backwards" and r.position.tolist() == [7.0, 7.0]
    assert kf.counts["time_backwards"] == 1 and kf.counts["resets"] == 2
    assert kf.update(50.5, (7.0, 7.5), np.eye(2)).event == "update"


def test_gate_disabled_accepts_everything():
    kf = ConstantVelocityFilter(gate_probability=None)
    kf.update(0.0, (0.0, 0.0), np.eye(2))
    assert kf.update(0.1, (1e4, 0.0), np.eye(2)).event == "update"


def test_bad_measurements():
    kf = ConstantVelocityFilter()
    with pytest.raises(ValueError, match="non-finite"):
        kf.update(0.0, (math.nan, 0.0), np.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        kf.update(0.0, (0.0, 0.0), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="accel_psd"):
        ConstantVelocityFilter(accel_psd=0.0)


def test_simulated_track_rejects_outliers_and_beats_raw_noise():
    rng = np.random.default_rng(7)
    dt, n, sigma = 0.1, 300, 8.0
    t = np.arange(n) * dt
    v = np.array([12.0, -4.0])
    truth = np.array([100.0, 200.0]) + t[:, None] * v
    z = truth + rng.normal(0, sigma, (n, 2))
    outliers = set(range(15, n, 23))
    for i in outliers:
        z[i] += rng.choice([-1, 1], 2) * rng.uniform(150, 400, 2)
    R = np.eye(2) * sigma**2
    kf = ConstantVelocityFilter(accel_psd=0.5, gate_probability=0.999)
    est, rejected = [], set()
    for i in range(n):
        r = kf.update(t[i], z[i], R)
        est.append(r.position)
        if r.event == "rejected":
            rejected.add(i)
    est = np.array(est)
    assert rejected == outliers  # every outlier refused, no good measurement refused
    good = np.array(sorted(set(range(n)) - outliers))
    raw_rmse = np.sqrt(np.mean(np.sum((z[good] - truth[good]) ** 2, 1)))
    settled = np.arange(30, n)
    kf_rmse = np.sqrt(np.mean(np.sum((est[settled] - truth[settled]) ** 2, 1)))
    assert kf_rmse < 0.5 * raw_rmse, (kf_rmse, raw_rmse)
    np.testing.assert_allclose(r.velocity, v, atol=1.5)
    # the reported covariance is consistent with the actual error (within a factor of 3)
    assert 1 / 3 < kf_rmse**2 / np.trace(r.position_cov) < 3


# --- guards found by mutation testing (docs/testing.md): the published covariance, resets, counters, validation ---


def test_prediction_covariance_every_entry_by_hand():
    kf = ConstantVelocityFilter(accel_psd=2.0, initial_speed_sigma=1.5)
    r = kf.update(0.0, (10.0, -5.0), np.diag([4.0, 9.0]))  # east and north differ: a swapped axis shows
    assert r.t == 0.0 and math.isnan(r.mahalanobis2)
    x, P = kf.predict(3.0)
    # P0 = diag(4, 9, 2.25, 2.25); F P0 F^T: e,e = 4 + 3^2 * 2.25 = 24.25, n,n = 9 + 20.25 = 29.25, e,ve = 3 * 2.25
    # = 6.75, ve,ve = 2.25. Q (q = 2, dt = 3): q dt^3/3 = 18, q dt^2/2 = 9, q dt = 6. Axes do not couple.
    expected = np.array([[42.25, 0.0, 15.75, 0.0],
                         [0.0, 47.25, 0.0, 15.75],
                         [15.75, 0.0, 8.25, 0.0],
                         [0.0, 15.75, 0.0, 8.25]])
    np.testing.assert_allclose(P, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x, [10.0, -5.0, 0.0, 0.0])
    # predict() does not change the filter
    assert kf.t == 0.0 and kf.P[0, 0] == 4.0


def test_resets_restart_from_the_new_measurement_covariance():
    kf = ConstantVelocityFilter(max_gap_s=2.0, initial_speed_sigma=3.0)
    kf.update(100.0, (0.0, 0.0), np.eye(2))
    # exactly max_gap_s is not "longer than": an update, not a reset
    assert kf.update(102.0, (0.5, 0.0), np.eye(2)).event == "update"
    R_new = np.array([[2.0, 0.5], [0.5, 3.0]])
    for k, (t, event) in enumerate([(104.5, "reset_gap"), (107.0, "reset_gap"), (50.0, "reset_time_backwards"),
                                    (40.0, "reset_time_backwards")], start=1):
        r = kf.update(t, (7.0, k), R_new)
        assert r.event == event and r.t == t and math.isnan(r.mahalanobis2)
        assert r.position.tolist() == [7.0, float(k)] and r.velocity.tolist() == [0.0, 0.0]
        np.testing.assert_array_equal(r.position_cov, R_new)  # not the old track's covariance, not NaN
        np.testing.assert_array_equal(r.velocity_cov, 9.0 * np.eye(2))
        np.testing.assert_array_equal(r.covariance[:2, 2:], np.zeros((2, 2)))
    assert kf.counts == {"updates": 1, "rejected": 0, "resets": 4, "time_backwards": 2, "gaps": 2}
    for k in range(3):
        kf.update(40.1 + 0.1 * k, (7.0, 4.0), R_new)
    assert kf.counts["updates"] == 4


def test_default_initial_velocity_sigma_is_15_m_s():
    # the node does not set it: the velocity covariance it publishes after a (re)start is 15^2 m^2/s^2
    r = ConstantVelocityFilter().update(0.0, (0.0, 0.0), np.eye(2))
    np.testing.assert_array_equal(r.velocity_cov, 225.0 * np.eye(2))


def test_reset_forgets_the_track():
    kf = ConstantVelocityFilter()
    kf.update(0.0, (0.0, 0.0), np.eye(2))
    kf.update(0.5, (1.0, 0.0), np.eye(2))
    kf.reset()
    assert not kf.initialized and kf.consecutive_rejections == 0
    with pytest.raises(RuntimeError, match="no state"):
        kf.predict(1.0)
    r = kf.update(1.0, (50.0, 60.0), 4.0 * np.eye(2))
    assert r.event == "init" and r.position.tolist() == [50.0, 60.0]
    np.testing.assert_array_equal(r.position_cov, 4.0 * np.eye(2))
    assert kf.counts["resets"] == 0  # a requested reset is not a lost track


def test_a_single_rejection_resets_when_max_rejections_is_1():
    kf = ConstantVelocityFilter(max_rejections=1)
    kf.update(0.0, (0.0, 0.0), np.eye(2))
    assert kf.update(0.1, (500.0, 0.0), np.eye(2)).event == "reset_rejections"


def test_measurement_forms_and_parameter_validation():
    kf = ConstantVelocityFilter()
    r = kf.update(0.0, np.array([[3.0], [4.0]]), [[1, 0], [0, 1]])  # a column vector, an integer covariance
    assert r.position.tolist() == [3.0, 4.0] and r.position_cov.dtype == float
    with pytest.raises(ValueError, match="positive definite"):
        kf.update(0.0, (0.0, 0.0), np.diag([1.0, -1.0]))  # one negative eigenvalue
    with pytest.raises(ValueError, match="gate_probability"):
        chi2_2dof_quantile(0.0)  # a zero gate would refuse every measurement
    with pytest.raises(ValueError, match="max_rejections"):
        ConstantVelocityFilter(max_rejections=0)
    with pytest.raises(ValueError, match="max_gap_s"):
        ConstantVelocityFilter(max_gap_s=0.0)
    assert ConstantVelocityFilter(max_gap_s=0.5).max_gap_s == 0.5
    with pytest.raises(RuntimeError, match="no state"):
        ConstantVelocityFilter().predict(0.0)
