"""Constant-velocity Kalman filter in a local ENU plane, with a Mahalanobis outlier gate.

State ``x = [e, n, ve, vn]`` (metres, metres, m/s, m/s); measurements are 2-D positions ``z = [e, n]`` with a 2×2
covariance ``R`` (m², east/north) — the localizer's ``Fix.cov_en``. Time in seconds (any epoch, e.g. the image stamp).

Process noise: continuous white-noise acceleration with spectral density ``q`` (m²/s³) on each axis, so over ``dt``
``Q_axis = q * [[dt³/3, dt²/2], [dt²/2, dt]]``. The gate rejects a measurement whose squared Mahalanobis distance
``d² = yᵀ S⁻¹ y`` (innovation ``y``, innovation covariance ``S``) exceeds the chi-square 2-dof quantile of
``gate_probability`` (``-2 ln(1 - p)``; 0.999 -> 13.8). The filter re-initialises on the current measurement after
``max_rejections`` consecutive rejections (the track was lost), after a gap longer than ``max_gap_s`` and when time
goes backwards (bag loop, clock reset); each case is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def chi2_2dof_quantile(p: float) -> float:
    """Quantile of the chi-square distribution with 2 degrees of freedom: ``-2 ln(1 - p)``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"gate_probability: {p} must be in (0, 1)")
    return -2.0 * math.log1p(-p)


@dataclass(frozen=True)
class FilterResult:
    """Outcome of one :meth:`ConstantVelocityFilter.update`.

    ``event``: ``init`` (first measurement), ``update`` (accepted), ``rejected`` (outside the gate; state is the
    prediction), ``reset_gap`` / ``reset_rejections`` / ``reset_time_backwards`` (re-initialised on this measurement).
    ``position`` (2,) m, ``velocity`` (2,) m/s, ``covariance`` (4×4) over ``[e, n, ve, vn]``, ``mahalanobis2`` the
    squared distance of the measurement to the prediction (NaN on init/reset).
    """

    event: str
    t: float
    position: np.ndarray
    velocity: np.ndarray
    covariance: np.ndarray
    mahalanobis2: float

    @property
    def accepted(self) -> bool:
        return self.event != "rejected"

    @property
    def position_cov(self) -> np.ndarray:
        """2×2 position covariance (m²)."""
        return self.covariance[:2, :2]

    @property
    def velocity_cov(self) -> np.ndarray:
        """2×2 velocity covariance (m²/s²)."""
        return self.covariance[2:, 2:]


class ConstantVelocityFilter:
    """Constant-velocity Kalman filter on ENU positions; see the module docstring for the model.

    Parameters: ``accel_psd`` q (m²/s³, > 0), ``gate_probability`` (0..1; ``None`` disables the gate),
    ``max_rejections`` consecutive rejections before a reset (>= 1), ``max_gap_s`` longest prediction interval before a
    reset (s), ``initial_speed_sigma`` 1-sigma of the unknown initial velocity (m/s).
    """

    def __init__(self, accel_psd: float = 1.0, gate_probability: float | None = 0.999, max_rejections: int = 3,
                 max_gap_s: float = 5.0, initial_speed_sigma: float = 15.0):
        if not accel_psd > 0:
            raise ValueError(f"accel_psd: {accel_psd} must be > 0 (m^2/s^3)")
        if max_rejections < 1:
            raise ValueError(f"max_rejections: {max_rejections} must be >= 1")
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s: {max_gap_s} must be > 0 (s)")
        self.q = float(accel_psd)
        self.gate = chi2_2dof_quantile(gate_probability) if gate_probability is not None else math.inf
        self.max_rejections = int(max_rejections)
        self.max_gap_s = float(max_gap_s)
        self.initial_speed_sigma = float(initial_speed_sigma)
        self.x: np.ndarray | None = None
        self.P: np.ndarray | None = None
        self.t: float | None = None
        self.consecutive_rejections = 0
        self.counts = {"updates": 0, "rejected": 0, "resets": 0, "time_backwards": 0, "gaps": 0}

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def reset(self) -> None:
        """Forget the track; the next measurement initialises it."""
        self.x = self.P = self.t = None
        self.consecutive_rejections = 0

    def _transition(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        q = self.q
        Q = np.zeros((4, 4))
        Q[0, 0] = Q[1, 1] = q * dt**3 / 3.0
        Q[0, 2] = Q[2, 0] = Q[1, 3] = Q[3, 1] = q * dt**2 / 2.0
        Q[2, 2] = Q[3, 3] = q * dt
        return F, Q

    def predict(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted state (4,) and covariance (4×4) at time ``t`` without changing the filter."""
        if self.x is None:
            raise RuntimeError("predict: the filter has no state yet")
        dt = max(0.0, float(t) - self.t)
        F, Q = self._transition(dt)
        return F @ self.x, F @ self.P @ F.T + Q

    def _init(self, t: float, z: np.ndarray, R: np.ndarray, event: str) -> FilterResult:
        self.x = np.array([z[0], z[1], 0.0, 0.0])
        self.P = np.zeros((4, 4))
        self.P[:2, :2] = R
        self.P[2, 2] = self.P[3, 3] = self.initial_speed_sigma**2
        self.t = t
        self.consecutive_rejections = 0
        if event != "init":
            self.counts["resets"] += 1
        return self._result(event, math.nan)

    def _result(self, event: str, d2: float, x=None, P=None) -> FilterResult:
        x = self.x if x is None else x
        P = self.P if P is None else P
        return FilterResult(event, self.t, x[:2].copy(), x[2:].copy(), P.copy(), d2)

    def update(self, t: float, z, R) -> FilterResult:
        """Fold in a position measurement ``z`` = (e, n) metres with covariance ``R`` (2×2, m²) taken at ``t`` (s)."""
        t = float(t)
        z = np.asarray(z, float).reshape(2)
        R = np.asarray(R, float).reshape(2, 2)
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(R)) and math.isfinite(t)):
            raise ValueError(f"update: non-finite measurement t={t}, z={z.tolist()}, R={R.tolist()}")
        R = 0.5 * (R + R.T)
        if np.linalg.eigvalsh(R)[0] <= 0:
            raise ValueError(f"update: measurement covariance is not positive definite: {R.tolist()}")
        if self.x is None:
            return self._init(t, z, R, "init")
        dt = t - self.t
        if dt < 0:
            self.counts["time_backwards"] += 1
            return self._init(t, z, R, "reset_time_backwards")
        if dt > self.max_gap_s:
            self.counts["gaps"] += 1
            return self._init(t, z, R, "reset_gap")
        x_pred, P_pred = self.predict(t)
        H = np.zeros((2, 4))
        H[0, 0] = H[1, 1] = 1.0
        y = z - H @ x_pred
        S = H @ P_pred @ H.T + R
        d2 = float(y @ np.linalg.solve(S, y))
        if d2 > self.gate:
            self.consecutive_rejections += 1
            self.counts["rejected"] += 1
            if self.consecutive_rejections >= self.max_rejections:
                return self._init(t, z, R, "reset_rejections")
            # the prediction becomes the state so that the uncertainty keeps growing while measurements are refused
            self.x, self.P, self.t = x_pred, P_pred, t
            return self._result("rejected", d2)
        K = P_pred @ H.T @ np.linalg.inv(S)
        self.x = x_pred + K @ y
        # Joseph form keeps P positive definite; the products leave round-off asymmetry (seen at ~1e-9 relative with a
        # near-singular 4e7 m² measurement covariance), removed by symmetrising
        IKH = np.eye(4) - K @ H
        P = IKH @ P_pred @ IKH.T + K @ R @ K.T
        self.P = 0.5 * (P + P.T)
        self.t = t
        self.consecutive_rejections = 0
        self.counts["updates"] += 1
        return self._result("update", d2)


__all__ = ["ConstantVelocityFilter", "FilterResult", "chi2_2dof_quantile"]
