"""Synthetic drone flights over an orthophoto: a smooth closed loop flown at constant ground speed.

The track is a random smooth closed curve (an ellipse whose radius is perturbed by a few low harmonics) centred in the
map and shrunk by a margin so that the camera footprint stays inside the orthophoto at every pose (worst case over
the altitude range and the tilt limit). The drone flies it at ``speed_m_s`` (metres per second, ground speed).

Attitude model (a multirotor with the camera rigidly fixed to the body, looking down; the image top edge points along
the body's forward axis):

* heading = direction of the track (compass, clockwise from north) + a slowly varying crab angle (wind), amplitude
  ``yaw_noise_deg``;
* bank from the turn: a multirotor tilts towards the centre of the turn by ``atan(v² κ / g)`` (κ: signed curvature),
  plus a small nose-down cruise pitch (drag) and slowly varying gusts; both clipped to ``render_cfg.max_tilt_deg``.

In the :class:`~mobilegeo_ros.geo.render.CameraPose` convention (``pitch_deg`` > 0 tilts the optical axis towards the
image top, ``roll_deg`` > 0 towards the image right), a nose-down body (REP-103 pitch > 0) gives ``pitch_deg < 0`` and
a left bank (REP-103 roll < 0, left side down) gives ``roll_deg > 0``: camera ``pitch_deg = -ros_pitch``,
``roll_deg = -ros_roll``, ``yaw_deg = heading`` (see :func:`body_attitude`).

Altitude (above the flat ground, metres): a slow sinusoid spanning ``render_cfg.altitude_m`` over the flight, or a
constant when ``altitude_m`` is given. Everything is a deterministic function of ``seed``.
"""

from __future__ import annotations

import math

import numpy as np

from mobilegeo_ros.config import RenderConfig
from mobilegeo_ros.geo.raster import GeoError, Orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, footprint

G = 9.80665  # m/s²

#: Default ground speed, m/s (a small survey multirotor).
DEFAULT_SPEED_M_S = 8.0
#: Default tilt limit of a flight, degrees (render_cfg.max_tilt_deg is for random training views and is larger).
SURVEY_MAX_TILT_DEG = 8.0


def footprint_radius(camera: CameraModel, altitude_m: float, max_tilt_deg: float) -> float:
    """Largest horizontal distance (metres) from the drone to a corner of its image footprint, over any yaw and any
    pitch/roll within ``±max_tilt_deg``. Raises GeoError when such a view reaches the horizon."""
    worst = 0.0
    for pitch in (-max_tilt_deg, 0.0, max_tilt_deg):
        for roll in (-max_tilt_deg, 0.0, max_tilt_deg):
            try:
                fp = footprint(CameraPose(0.0, 0.0, altitude_m, 0.0, pitch, roll), camera)
            except GeoError:
                raise GeoError(f"a camera tilted by {max_tilt_deg} deg with a {camera.hfov_deg} deg field of view "
                               "sees the horizon; reduce render.max_tilt_deg or render.hfov_deg") from None
            worst = max(worst, float(np.hypot(fp[:, 0], fp[:, 1]).max()))
    return worst


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amplitude: float, periods_s: tuple[float, ...]
                  ) -> np.ndarray:
    """A smooth zero-mean signal (sum of sinusoids with random phases), peak about ``amplitude``."""
    out = np.zeros_like(t)
    for p in periods_s:
        out += np.sin(2.0 * math.pi * t / p + rng.uniform(0.0, 2.0 * math.pi))
    return amplitude * out / len(periods_s)


def loop_track(center_e: float, center_n: float, half_e: float, half_n: float, rng: np.random.Generator,
               samples: int = 4096) -> np.ndarray:
    """A random smooth closed curve inside the ellipse of semi-axes ``half_e``, ``half_n`` (metres) around the centre.

    Returns ``samples×2`` (easting, northing) points, counter-clockwise, not repeating the first point.
    """
    theta = np.linspace(0.0, 2.0 * math.pi, samples, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3):
        r += rng.uniform(0.03, 0.10) * np.cos(k * theta + rng.uniform(0.0, 2.0 * math.pi))
    r *= 0.9 / r.max()  # the perturbed curve stays inside the ellipse
    rot = rng.uniform(0.0, 2.0 * math.pi)  # start point on the curve
    return np.stack([center_e + half_e * r * np.cos(theta + rot), center_n + half_n * r * np.sin(theta + rot)], 1)


def body_attitude(pose: CameraPose) -> tuple[float, float, float]:
    """REP-103 body attitude ``(heading_deg, ros_pitch_deg, ros_roll_deg)`` of a flight pose (rigid nadir camera,
    image top along the body forward axis): heading clockwise from north, pitch > 0 nose down, roll > 0 right side
    down."""
    return pose.yaw_deg % 360.0, -pose.pitch_deg, -pose.roll_deg


def flight_poses(ortho: Orthophoto, duration_s: float, rate_hz: float, seed: int, render_cfg: RenderConfig,
                 speed_m_s: float = DEFAULT_SPEED_M_S, altitude_m: float | None = None, yaw_noise_deg: float = 3.0,
                 gust_tilt_deg: float = 1.0, cruise_pitch_deg: float = 2.0, max_tilt_deg: float | None = None,
                 camera: CameraModel | None = None) -> list[tuple[float, CameraPose]]:
    """Poses of a synthetic flight sampled at ``rate_hz`` for ``duration_s`` seconds: ``[(t_s, CameraPose)]``.

    Args:
        ortho: the map flown over (positions in its CRS, metres).
        duration_s: flight length, seconds (``t`` runs from 0 in steps of ``1 / rate_hz``, end excluded).
        rate_hz: pose (camera frame) rate, Hz.
        seed: same seed, same flight.
        render_cfg: camera (``image_width_px``, ``image_height_px``, ``hfov_deg``), ``altitude_m`` range and the tilt
            limit ``max_tilt_deg``.
        speed_m_s: ground speed, m/s.
        altitude_m: constant altitude above ground (default: slowly varying over ``render_cfg.altitude_m``).
        yaw_noise_deg: amplitude of the slowly varying crab angle (heading minus track direction), degrees.
        gust_tilt_deg: amplitude of the slowly varying pitch/roll from gusts, degrees.
        cruise_pitch_deg: nose-down body pitch while cruising (camera ``pitch_deg`` = minus this), degrees.
        max_tilt_deg: pitch and roll are clipped to this, degrees (default: ``render_cfg.max_tilt_deg`` but at most
            :data:`SURVEY_MAX_TILT_DEG`, a calm survey flight); the map margin is sized for it.
        camera: overrides the camera described by ``render_cfg``.

    Raises:
        GeoError: the footprint does not fit inside the map, a view reaches the horizon, or bad arguments.
    """
    if not (duration_s > 0 and rate_hz > 0 and speed_m_s > 0):
        raise GeoError(f"flight: duration ({duration_s} s), rate ({rate_hz} Hz) and speed ({speed_m_s} m/s) must "
                       "be positive")
    camera = camera if camera is not None else CameraModel.from_config(render_cfg)
    rng = np.random.default_rng(seed)
    a0, a1 = (altitude_m, altitude_m) if altitude_m is not None else render_cfg.altitude_m
    if not 0 < a0 <= a1:
        raise GeoError(f"flight: altitude range [{a0}, {a1}] m must be positive")
    max_tilt = float(min(render_cfg.max_tilt_deg, SURVEY_MAX_TILT_DEG) if max_tilt_deg is None else max_tilt_deg)
    margin = footprint_radius(camera, a1, max_tilt)
    left, bottom, right, top = ortho.bounds
    half_e, half_n = (right - left) / 2.0 - margin, (top - bottom) / 2.0 - margin
    if half_e < 5.0 or half_n < 5.0:
        raise GeoError(f"the camera footprint (up to {margin:.0f} m from the drone at {a1:.0f} m altitude) leaves no "
                       f"room to fly inside the map ({right - left:.0f} × {top - bottom:.0f} m); lower "
                       "render.altitude_m or use a larger map")
    track = loop_track((left + right) / 2.0, (bottom + top) / 2.0, half_e, half_n, rng)

    # Arc-length parametrisation of the closed curve.
    closed = np.vstack([track, track[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    s_nodes = np.concatenate([[0.0], np.cumsum(seg)])
    perimeter = float(s_nodes[-1])
    # Tangent direction and signed curvature (κ > 0: turning left) at the nodes, by central differences.
    d1 = (np.roll(track, -1, 0) - np.roll(track, 1, 0)) / 2.0
    d2 = np.roll(track, -1, 0) - 2.0 * track + np.roll(track, 1, 0)
    speed2 = np.maximum((d1**2).sum(1), 1e-12)
    kappa = (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed2**1.5

    t = np.arange(0.0, duration_s - 1e-9, 1.0 / rate_hz)
    s = (speed_m_s * t) % perimeter
    e = np.interp(s, s_nodes, closed[:, 0])
    n = np.interp(s, s_nodes, closed[:, 1])
    node_s = s_nodes[:-1]
    # Interpolate the tangent vector (not its angle, which jumps by 2π once around the loop).
    enu_dir = np.arctan2(np.interp(s, node_s, d1[:, 1], period=perimeter),
                         np.interp(s, node_s, d1[:, 0], period=perimeter))
    k = np.interp(s, node_s, kappa, period=perimeter)

    heading = (90.0 - np.degrees(enu_dir) + _smooth_noise(rng, t, yaw_noise_deg, (23.0, 41.0, 67.0))) % 360.0
    bank = np.degrees(np.arctan(speed_m_s**2 * k / G))  # > 0 when turning left: left side down
    ros_roll = -bank + _smooth_noise(rng, t, gust_tilt_deg, (5.3, 11.0, 17.0))
    ros_pitch = cruise_pitch_deg + _smooth_noise(rng, t, gust_tilt_deg, (4.1, 9.7, 19.0))
    ros_roll = np.clip(ros_roll, -max_tilt, max_tilt)
    ros_pitch = np.clip(ros_pitch, -max_tilt, max_tilt)
    if a1 > a0:
        period = max(duration_s, 60.0)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        alt = a0 + (a1 - a0) * (0.5 + 0.5 * np.sin(2.0 * math.pi * t / period + phase))
    else:
        alt = np.full_like(t, a0)

    return [(float(ti), CameraPose(float(ei), float(ni), float(ai), float(hi), float(-pi), float(-ri)))
            for ti, ei, ni, ai, hi, pi, ri in zip(t, e, n, alt, heading, ros_pitch, ros_roll, strict=True)]


__all__ = ["DEFAULT_SPEED_M_S", "SURVEY_MAX_TILT_DEG", "body_attitude", "flight_poses", "footprint_radius", "loop_track"]
