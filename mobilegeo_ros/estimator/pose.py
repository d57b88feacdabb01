"""Full camera pose from a registration on the (flat) map: the drone's position, altitude above ground and attitude.

A registration gives a homography ``H`` from view pixels ``(u, v, 1)`` to map metres ``(e, n, 1)`` on the ground plane
``Z = 0`` (:mod:`mobilegeo_ros.estimator.refine`). With the camera intrinsics ``K`` (from ``camera_info`` or the field
of view, principal point at the image centre) a planar scene fixes the whole camera pose: in the convention of
:mod:`mobilegeo_ros.geo.render` a ground point projects as ``(u, v, 1) ~ K Rᵀ [e₁ e₂ -C] (e, n, 1)``, so
``K⁻¹ H⁻¹ = λ [Rᵀe₁, Rᵀe₂, -RᵀC]`` (Zhang 2000; Hartley & Zisserman §8.1). This module

1. decomposes ``H`` into ``R`` (camera-to-world, ENU) and the camera centre ``C = (e, n, altitude)`` in closed form
   (:func:`pose_from_homography`);
2. refines the pose on the inlier correspondences by Levenberg-Marquardt PnP (``cv2.solvePnP`` iterative), and
   propagates the reprojection residuals to the covariance of the drone's ground position ``(C_e, C_n)``
   (``s²·(JᵀJ)⁻¹`` through the numerical Jacobian of ``C = -Rᵀt``) (:func:`solve_camera_pose`).

The published position is the drone's **nadir point** ``(C_e, C_n)`` — not the ground point under the image centre,
which is off by ``altitude·tan(tilt)`` (≈ 32 m at 120 m and 15°). Attitude angles follow
:class:`mobilegeo_ros.geo.render.CameraPose`: ``yaw_deg`` compass heading of the image top edge, ``pitch_deg`` > 0 tilts
the optical axis towards the image top, ``roll_deg`` > 0 towards the image right.

Units: metres (map CRS, ENU), degrees, pixels (continuous, centre of pixel (0, 0) at (0.5, 0.5)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class CameraPoseEstimate:
    """A camera pose solved on the map. ``cov_en`` (2×2, m²) is the covariance of the nadir point ``(easting,
    northing)`` from the reprojection residuals (before any calibration scale); ``rmse_px`` the inlier reprojection
    RMS; ``tilt_deg`` the angle of the optical axis from the vertical."""

    easting: float
    northing: float
    altitude_m: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    cov_en: np.ndarray
    rmse_px: float = math.nan

    @property
    def tilt_deg(self) -> float:
        c = math.cos(math.radians(self.pitch_deg)) * math.cos(math.radians(self.roll_deg))
        return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def intrinsics(width_px: int, height_px: int, hfov_deg: float) -> np.ndarray:
    """3×3 ``K`` of an ideal pinhole camera with square pixels and the principal point at the image centre
    (continuous pixels, as :attr:`mobilegeo_ros.geo.render.CameraModel.K`)."""
    f = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width_px / 2.0], [0.0, f, height_px / 2.0], [0.0, 0.0, 1.0]])


def attitude_from_rotation(r: np.ndarray) -> tuple[float, float, float]:
    """Camera-to-world rotation (3×3, columns: camera x, y, z in ENU) → ``(yaw_deg, pitch_deg, roll_deg)`` of
    :func:`mobilegeo_ros.geo.render.camera_rotation` (``R = R_nadir(yaw) R_x(pitch) R_y(roll)``)."""
    # Column y of R is R_nadir(yaw) (0, cos pitch, sin pitch): its horizontal part is cos(pitch)·(-sin ψ, -cos ψ).
    yaw = math.atan2(-r[0, 1], -r[1, 1])
    cp, sp = math.cos(yaw), math.sin(yaw)
    r_nadir = np.array([[cp, -sp, 0.0], [-sp, -cp, 0.0], [0.0, 0.0, -1.0]])
    q = r_nadir.T @ r  # = R_x(pitch) R_y(roll)
    pitch = math.atan2(q[2, 1], q[1, 1])
    roll = math.atan2(q[0, 2], q[0, 0])
    return math.degrees(yaw) % 360.0, math.degrees(pitch), math.degrees(roll)


def pose_from_homography(h_view_to_map: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ``(R, C)`` from a view→map homography: ``R`` camera-to-world (3×3), ``C`` camera centre
    ``(e, n, altitude)`` (metres, altitude above the ground plane). Raises ValueError for a degenerate homography
    (singular, or a camera that would sit below the ground)."""
    h = np.asarray(h_view_to_map, float)
    # Decompose relative to the ground point under the principal point: in absolute UTM coordinates (~10⁶ m) the
    # orthonormalisation error of a noisy R would be multiplied by the coordinates themselves.
    p0 = h @ np.array([k[0, 2], k[1, 2], 1.0])
    if abs(p0[2]) < 1e-12:
        raise ValueError("degenerate homography (principal point at infinity)")
    origin = p0[:2] / p0[2]
    h = np.array([[1.0, 0.0, -origin[0]], [0.0, 1.0, -origin[1]], [0.0, 0.0, 1.0]]) @ h
    try:
        g = np.linalg.inv(h)  # map (e, n, 1) -> view (u, v, 1)
        m = np.linalg.inv(k) @ g
    except np.linalg.LinAlgError:
        raise ValueError("singular homography") from None
    norm = 0.5 * (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1]))
    if not math.isfinite(norm) or norm < 1e-15:
        raise ValueError("degenerate homography")
    for sign in (1.0, -1.0):
        a = sign * m / norm  # [Rᵀe₁, Rᵀe₂, -RᵀC]
        a3 = np.cross(a[:, 0], a[:, 1])
        u, _, vt = np.linalg.svd(np.c_[a[:, 0], a[:, 1], a3])
        rt = u @ vt  # nearest rotation (Rᵀ)
        if np.linalg.det(rt) < 0:
            continue
        c = -rt.T @ a[:, 2]
        if c[2] > 0:
            return rt.T, c + np.r_[origin, 0.0]
    raise ValueError("the homography puts the camera below the ground plane")


def solve_camera_pose(view_px: np.ndarray, map_en: np.ndarray, k: np.ndarray,
                      h_view_to_map: np.ndarray | None = None) -> CameraPoseEstimate:
    """Camera pose from ground correspondences: ``view_px`` (N×2 continuous view pixels) ↔ ``map_en`` (N×2 map
    metres on Z = 0), N ≥ 6. Initialised from ``h_view_to_map`` (or a homography fitted to the points), refined by
    iterative PnP; the covariance of the nadir point comes from the reprojection residuals. Raises ValueError when
    the pose cannot be solved (too few or degenerate points, camera below ground)."""
    view_px = np.asarray(view_px, np.float64).reshape(-1, 2)
    map_en = np.asarray(map_en, np.float64).reshape(-1, 2)
    n = len(view_px)
    if n < 6 or len(map_en) != n:
        raise ValueError(f"pose needs at least 6 correspondences, got {n}")
    if h_view_to_map is None:
        # Fitted in centred coordinates: raw UTM values (~10⁶ m) make the DLT ill-conditioned.
        mean = map_en.mean(0)
        h_rel, _ = cv2.findHomography(view_px, map_en - mean, 0)
        if h_rel is None:
            raise ValueError("no homography through the correspondences")
        h_view_to_map = np.array([[1.0, 0.0, mean[0]], [0.0, 1.0, mean[1]], [0.0, 0.0, 1.0]]) @ h_rel
    r, c = pose_from_homography(h_view_to_map, k)
    # Work relative to the points' centroid: metres-scale numbers keep PnP well conditioned in a UTM frame.
    origin = map_en.mean(0)
    obj = np.c_[map_en - origin, np.zeros(n)]
    # OpenCV's pixel centres are at integers; ours at +0.5.
    img = view_px - 0.5
    k_cv = k.copy()
    k_cv[0, 2] -= 0.5
    k_cv[1, 2] -= 0.5
    rvec, _ = cv2.Rodrigues(r.T)
    tvec = -r.T @ (c - np.r_[origin, 0.0])
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, k_cv, None, rvec.copy(), tvec.reshape(3, 1).copy())
    proj, jac = cv2.projectPoints(obj, rvec, tvec, k_cv, None)
    resid = (proj.reshape(-1, 2) - img).ravel()
    rmse = float(np.sqrt(np.mean(np.sum(resid.reshape(-1, 2) ** 2, 1))))
    j = jac[:, :6]
    s2 = float(resid @ resid) / max(1, 2 * n - 6)
    try:
        cov_p = s2 * np.linalg.inv(j.T @ j)
    except np.linalg.LinAlgError:
        raise ValueError("degenerate correspondences (singular pose Jacobian)") from None

    def centre(p: np.ndarray) -> np.ndarray:
        rot, _ = cv2.Rodrigues(p[:3])
        return -rot.T @ p[3:]

    p0 = np.r_[rvec.ravel(), tvec.ravel()]
    c0 = centre(p0)
    jc = np.zeros((3, 6))
    for i in range(6):
        d = np.zeros(6)
        d[i] = 1e-6 * max(1.0, abs(p0[i]))
        jc[:, i] = (centre(p0 + d) - centre(p0 - d)) / (2 * d[i])
    cov_c = jc @ cov_p @ jc.T
    if c0[2] <= 0 or not np.all(np.isfinite(cov_c)):
        raise ValueError("the solved camera is below the ground or its covariance is not finite")
    rot, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = attitude_from_rotation(rot.T)
    return CameraPoseEstimate(easting=float(c0[0] + origin[0]), northing=float(c0[1] + origin[1]),
                              altitude_m=float(c0[2]), yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                              cov_en=0.5 * (cov_c[:2, :2] + cov_c[:2, :2].T), rmse_px=rmse)


def pose_from_homography_estimate(h_view_to_map: np.ndarray, k: np.ndarray) -> CameraPoseEstimate:
    """:func:`pose_from_homography` as a :class:`CameraPoseEstimate` (no covariance: NaN), for homographies without
    correspondences (a track chained frame to frame)."""
    r, c = pose_from_homography(h_view_to_map, k)
    yaw, pitch, roll = attitude_from_rotation(r)
    return CameraPoseEstimate(float(c[0]), float(c[1]), float(c[2]), yaw, pitch, roll, np.full((2, 2), np.nan))


__all__ = ["CameraPoseEstimate", "attitude_from_rotation", "intrinsics", "pose_from_homography",
           "pose_from_homography_estimate", "solve_camera_pose"]
