"""Everything the ROS node does between a received message and a published result, without rclpy.

The node (:mod:`mobilegeo_ros.ros.node`) only copies message fields into plain values, hands them to this module and
publishes what comes back, so the logic here is testable without ROS:

* :class:`LatestMailbox`: 1-slot hand-over from the executor thread to the inference worker; a frame that was not
  picked up in time is replaced (and counted as dropped), so nothing queues without bound.
* :class:`PriorState`: the latest IMU attitude, altitude and GNSS prior, each ignored once older than
  ``node.prior_timeout_s``.
* :class:`LocalizationPipeline`: decode -> embed (once per frame, cached in the window) -> sliding window ->
  :func:`mobilegeo_ros.msrm.select_views` -> :meth:`Localizer.localize_embeddings` (with the newest image for the
  geometric refinement on every ``refine.every_n_frames``-th frame) -> Kalman filter -> :class:`Output`.
* :class:`Stats` and :func:`diagnostic_level`: counters and the OK/WARN/ERROR/STALE decision of ``/diagnostics``.

IMU convention (REP-103): ``sensor_msgs/Imu.orientation`` rotates the body frame FLU (x forward, y left, z up) into
the world frame ENU (x east, y north, z up). The ENU yaw (counter-clockwise from east) of the body x axis becomes the
compass heading ``90 - yaw`` (clockwise from north); the camera is assumed mounted with its image top edge towards
the body's forward axis plus ``node.camera_yaw_offset_deg``. ROS pitch > 0 is nose down and roll > 0 is right side
down; for a camera rigidly fixed looking down (``node.use_imu_tilt``) they tilt the optical axis backwards and to the
left, i.e. camera ``pitch_deg = -pitch`` and ``roll_deg = -roll`` in the geo.render convention.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilegeo_ros.config import Config
from mobilegeo_ros.estimator.kalman import ConstantVelocityFilter
from mobilegeo_ros.geo.enu import LocalENU
from mobilegeo_ros.io import FlightStackFix
from mobilegeo_ros.io.images import ImageDecodeError, decode_compressed, decode_image
from mobilegeo_ros.msrm import select_views

#: Variance (m²) published for an unknown coordinate (altitude without a prior, yaw without a heading).
UNKNOWN_VARIANCE = 1.0e6


# ---------------------------------------------------------------------------------------------------------------------
# Frames and the 1-slot mailbox


@dataclass
class Frame:
    """One received camera message as plain values. ``kind``: ``raw`` (``fields`` = Image fields for
    :func:`decode_image`) or ``compressed`` (``fields`` = ``format, data``). ``stamp_s``: header stamp, seconds;
    ``stamp``: the header stamp object, passed back untouched for the outputs. ``received_s``: monotonic receipt."""

    kind: str
    fields: dict[str, Any]
    stamp_s: float
    stamp: Any = None
    received_s: float = field(default_factory=time.monotonic)
    frame_id: str = ""


class LatestMailbox:
    """A 1-slot mailbox: :meth:`put` replaces an unread item (returns True when it did, i.e. a frame was dropped);
    :meth:`get` blocks up to ``timeout`` seconds and returns None when nothing arrived or after :meth:`close`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


# ---------------------------------------------------------------------------------------------------------------------
# Priors


def quaternion_to_attitude(x: float, y: float, z: float, w: float) -> tuple[float, float, float]:
    """REP-103 orientation (body FLU in world ENU) -> ``(heading_deg, pitch_deg, roll_deg)``.

    ``heading_deg``: compass heading of the body x axis, clockwise from north in [0, 360). ``pitch_deg`` (> 0 nose
    down) and ``roll_deg`` (> 0 right side down) are the ROS (ZYX intrinsic) angles. Raises ValueError for a
    non-finite or zero quaternion.
    """
    q = np.array([x, y, z, w], float)
    norm = float(np.linalg.norm(q))
    if not np.all(np.isfinite(q)) or norm < 1e-6:
        raise ValueError(f"imu orientation: not a rotation quaternion (x, y, z, w) = {q.tolist()}")
    x, y, z, w = q / norm
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    pitch = math.asin(max(-1.0, min(1.0, 2.0 * (w * y - z * x))))
    roll = math.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    heading = (90.0 - math.degrees(yaw)) % 360.0
    return heading, math.degrees(pitch), math.degrees(roll)


def heading_to_quaternion(heading_deg: float) -> tuple[float, float, float, float]:
    """Compass heading (clockwise from north) -> ENU orientation quaternion (x, y, z, w), level attitude."""
    yaw = math.radians(90.0 - heading_deg)
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


class PriorState:
    """Latest priors with their receipt times (monotonic seconds); thread-safe."""

    def __init__(self, cfg: Config):
        self.node = cfg.node
        self._lock = threading.Lock()
        self._attitude: tuple[float, tuple[float, float, float]] | None = None
        self._altitude: tuple[float, float] | None = None
        self._gnss: tuple[float, float, float, float] | None = None  # t, lat, lon, radius
        self._hfov_deg: float | None = None

    def set_hfov(self, hfov_deg: float) -> None:
        """Horizontal field of view from camera_info (degrees); it does not expire."""
        with self._lock:
            self._hfov_deg = float(hfov_deg)

    def set_imu(self, x: float, y: float, z: float, w: float, now: float | None = None) -> None:
        """An IMU orientation; ValueError (nothing stored) for NaN or zero quaternions."""
        att = quaternion_to_attitude(x, y, z, w)
        with self._lock:
            self._attitude = (time.monotonic() if now is None else now, att)

    def set_altitude(self, altitude_m: float, now: float | None = None) -> None:
        """Height above the ground (m); ValueError for NaN or negative values."""
        if not math.isfinite(altitude_m) or altitude_m <= 0:
            raise ValueError(f"altitude: {altitude_m} m is not a positive height above ground")
        with self._lock:
            self._altitude = (time.monotonic() if now is None else now, float(altitude_m))

    def set_gnss(self, lat: float, lon: float, status: int, cov_diag: tuple[float, float] | None,
                 now: float | None = None) -> None:
        """A GNSS fix bounding the search: radius = ``gnss_prior_radius_m`` + 3-sigma when a covariance is known.
        ``status`` < 0 (NO_FIX) or a non-finite position clears the prior."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if status < 0 or not (math.isfinite(lat) and math.isfinite(lon)):
                self._gnss = None
                return
            radius = self.node.gnss_prior_radius_m
            if cov_diag is not None and all(math.isfinite(c) and c > 0 for c in cov_diag):
                radius += 3.0 * math.sqrt(max(cov_diag))
            self._gnss = (t, float(lat), float(lon), radius)

    def priors(self, now: float | None = None):
        """The :class:`mobilegeo_ros.localizer.Priors` valid at ``now`` (monotonic seconds)."""
        from mobilegeo_ros.localizer import Priors

        now = time.monotonic() if now is None else now
        fresh = self.node.prior_timeout_s
        p = Priors()
        with self._lock:
            p.hfov_deg = self._hfov_deg
            if self._attitude and now - self._attitude[0] <= fresh:
                heading, pitch, roll = self._attitude[1]
                p.yaw_deg = (heading + self.node.camera_yaw_offset_deg) % 360.0
                if self.node.use_imu_tilt:
                    p.pitch_deg, p.roll_deg = -pitch, -roll
            if self._altitude and now - self._altitude[0] <= fresh:
                p.altitude_m = self._altitude[1]
            if self._gnss and now - self._gnss[0] <= fresh:
                _, p.lat, p.lon, p.radius_m = self._gnss
        return p


# ---------------------------------------------------------------------------------------------------------------------
# Statistics and diagnostics


@dataclass
class Stats:
    """Counters shown in /diagnostics (updated from several threads under ``lock``)."""

    received: int = 0
    dropped: int = 0
    rejected: int = 0  # undecodable frames
    errors: int = 0  # backend exceptions
    processed: int = 0
    fixes: int = 0
    no_fixes: int = 0
    filter_rejected: int = 0
    prior_errors: int = 0
    last_error: str = ""
    last_error_s: float = -math.inf
    last_image_s: float = -math.inf
    last_score: float = math.nan
    last_status: str = ""
    last_reason: str = ""
    window: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=100))
    receipts_s: deque = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note_received(self, now: float) -> None:
        with self.lock:
            self.received += 1
            self.last_image_s = now
            self.receipts_s.append(now)

    def note_error(self, kind: str, message: str, now: float | None = None) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            self.last_error = message
            self.last_error_s = time.monotonic() if now is None else now

    def input_rate_hz(self, now: float, horizon_s: float = 5.0) -> float:
        with self.lock:
            recent = [t for t in self.receipts_s if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = np.array(self.latencies_s, float)
            return {
                "received": self.received, "dropped": self.dropped, "rejected": self.rejected, "errors": self.errors,
                "processed": self.processed, "fixes": self.fixes, "no_fixes": self.no_fixes,
                "filter_rejected": self.filter_rejected, "prior_errors": self.prior_errors,
                "last_error": self.last_error, "last_error_s": self.last_error_s, "last_image_s": self.last_image_s,
                "last_score": self.last_score, "last_status": self.last_status, "last_reason": self.last_reason,
                "window": self.window,
                "latency_last_ms": 1e3 * lat[-1] if len(lat) else math.nan,
                "latency_mean_ms": 1e3 * lat.mean() if len(lat) else math.nan,
                "latency_p99_ms": 1e3 * float(np.percentile(lat, 99)) if len(lat) else math.nan,
            }


OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


def diagnostic_level(snap: dict[str, Any], prev: dict[str, Any] | None, now: float,
                     stale_timeout_s: float) -> tuple[int, str]:
    """(level, message) for /diagnostics from a :meth:`Stats.snapshot` and the previous report's snapshot.

    STALE: no image for ``stale_timeout_s`` (or none yet). ERROR: a backend exception since the last report.
    WARN: frames rejected (undecodable) since the last report, or the last result was no fix. OK otherwise.
    """
    prev = prev or {}
    if now - snap["last_image_s"] > stale_timeout_s:
        return STALE, ("no image received yet" if snap["received"] == 0
                       else f"no image for {now - snap['last_image_s']:.1f} s")
    if snap["errors"] > prev.get("errors", 0):
        return ERROR, f"inference failed: {snap['last_error']}"
    if snap["rejected"] > prev.get("rejected", 0):
        return WARN, f"rejected {snap['rejected'] - prev.get('rejected', 0)} frame(s): {snap['last_error']}"
    if snap["last_status"] == "no_fix":
        return WARN, f"no fix: {snap['last_reason']}"
    if snap["last_status"] == "":
        return OK, "waiting for the first result"
    return OK, "fix"


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class Output:
    """One result, ready to publish. ``status``: ``fix`` / ``no_fix``. Positions: WGS84 degrees, ENU metres in the
    ``map`` frame; covariances m² (position, ENU 2×2) and m²/s² (velocity); ``alt_m`` NaN when unknown."""

    frame: Frame
    status: str
    reason: str
    lat: float = math.nan
    lon: float = math.nan
    alt_m: float = math.nan
    e: float = math.nan
    n: float = math.nan
    u: float = math.nan
    cov_en: np.ndarray = field(default_factory=lambda: np.full((2, 2), math.nan))
    vel_en: np.ndarray | None = None
    vel_cov: np.ndarray | None = None
    heading_deg: float | None = None
    score: float = math.nan
    latency_s: float = 0.0
    views_used: int = 0
    filter_event: str = ""

    def flight_stack_fix(self, cfg: Config) -> FlightStackFix:
        """The value the NMEA/MAVLink bridges send."""
        valid = self.status == "fix"
        se = math.sqrt(self.cov_en[0, 0]) if valid else 0.0
        sn = math.sqrt(self.cov_en[1, 1]) if valid else 0.0
        ve = vn = sv = None
        if valid and self.vel_en is not None:
            ve, vn = float(self.vel_en[0]), float(self.vel_en[1])
            sv = math.sqrt(max(self.vel_cov[0, 0], self.vel_cov[1, 1])) if self.vel_cov is not None else None
        return FlightStackFix(
            stamp_s=self.frame.stamp_s, valid=valid, lat=self.lat if valid else 0.0, lon=self.lon if valid else 0.0,
            alt_m=self.alt_m if valid and math.isfinite(self.alt_m) else None, sigma_east_m=se, sigma_north_m=sn,
            vel_east_mps=ve, vel_north_mps=vn, sigma_vel_mps=sv,
            heading_deg=self.heading_deg if valid else None, satellites=cfg.node.satellites_reported)


class LocalizationPipeline:
    """decode -> embed -> window -> select_views -> localize -> Kalman filter. One thread calls :meth:`process`."""

    def __init__(self, localizer, cfg: Config, stats: Stats | None = None):
        self.loc, self.cfg = localizer, cfg
        self.stats = stats or Stats()
        self.enu = LocalENU(localizer.origin_lat, localizer.origin_lon, cfg.node.ground_alt_m)
        self.window: deque[tuple[float, np.ndarray, np.ndarray]] = deque()  # (stamp_s, embedding, image)
        self.filter = self._new_filter()
        self._registered_heading: tuple[float, float] | None = None  # (stamp s, compass deg) of the last registration
        self.needs_images = cfg.index.heading == "query_rotations"
        self.frames = 0  # frames localized so far (selects the ones that are refined)

    def _new_filter(self) -> ConstantVelocityFilter:
        n = self.cfg.node
        return ConstantVelocityFilter(accel_psd=n.filter_accel_psd, gate_probability=n.filter_gate_probability,
                                      max_rejections=n.filter_max_rejections, max_gap_s=n.filter_max_gap_s)

    def decode(self, frame: Frame) -> np.ndarray:
        """The frame's RGB image; raises ImageDecodeError."""
        maxpx = self.cfg.node.max_image_pixels
        if frame.kind == "compressed":
            return decode_compressed(frame.fields["format"], frame.fields["data"], max_pixels=maxpx)
        return decode_image(**frame.fields, max_pixels=maxpx)

    def _update_window(self, stamp_s: float, emb: np.ndarray, image: np.ndarray) -> None:
        node = self.cfg.node
        if self.window and stamp_s < self.window[-1][0]:
            self.window.clear()  # time went backwards (bag loop, clock reset): the old views are from elsewhere
        self.window.append((stamp_s, emb, image if self.needs_images else None))
        if node.window_s > 0:
            while self.window and stamp_s - self.window[0][0] > node.window_s:
                self.window.popleft()
        while len(self.window) > node.window_size:
            self.window.popleft()

    def process(self, frame: Frame, priors=None) -> Output | None:
        """Localize one frame. Returns None when the frame was rejected (undecodable) or the backend failed; both
        are counted in :attr:`stats` with the reason in ``last_error`` and never raise."""
        t0 = time.perf_counter()
        try:
            image = self.decode(frame)
        except ImageDecodeError as e:
            self.stats.note_error("rejected", f"{frame.kind} image: {e}")
            return None
        if not math.isfinite(frame.stamp_s):
            self.stats.note_error("rejected", f"header stamp is not finite: {frame.stamp_s}")
            return None
        priors = self._with_heading_feedback(frame.stamp_s, priors)
        try:
            emb = self.loc.embed([image])[0]
            if not np.all(np.isfinite(emb)):
                # A device fault (e.g. an fp16 overflow) gave NaN/inf: drop this frame only; kept in the window it
                # would poison every fused query until it ages out.
                raise FloatingPointError("the model returned a non-finite embedding")
            self._update_window(frame.stamp_s, emb, image)
            stack = np.stack([w[1] for w in self.window])
            idx = select_views(stack, self.cfg.node.max_views, self.cfg.node.max_view_similarity)
            every = self.cfg.refine.every_n_frames
            refine = self.cfg.refine.enabled and every > 0 and self.frames % every == 0
            self.frames += 1
            if self.needs_images:
                fix = self.loc.localize([self.window[i][2] for i in idx], priors, refine=refine)
            else:
                fix = self.loc.localize_embeddings(stack[idx], priors, image=image if refine else None)
            out = self._to_output(frame, fix, priors)
            if fix.status == "fix" and getattr(fix, "refined", False) and fix.registered_heading_deg is not None:
                self._registered_heading = (frame.stamp_s, float(fix.registered_heading_deg))
        except Exception as e:  # noqa: BLE001 - a backend failure must not kill the node; it is counted and shown
            self.stats.note_error("errors", f"{type(e).__name__}: {e} "
                                            f"({traceback.extract_tb(e.__traceback__)[-1].name})")
            return None
        out.latency_s = time.perf_counter() - t0
        with self.stats.lock:
            self.stats.processed += 1
            self.stats.window = len(self.window)
            self.stats.latencies_s.append(out.latency_s)
            self.stats.last_score = out.score
            self.stats.last_status, self.stats.last_reason = out.status, out.reason
            if out.status == "fix":
                self.stats.fixes += 1
            else:
                self.stats.no_fixes += 1
            if out.filter_event == "rejected":
                self.stats.filter_rejected += 1
        return out

    def _with_heading_feedback(self, stamp_s: float, priors):
        """Priors for this frame, with the heading registered on a recent frame as the yaw prior when none is known.

        The registration measures the heading to about a degree; a drone turns slowly compared with the frame rate,
        so that heading bounds the next frames' search (gallery rotations within half a step, registration
        verification) until ``node.heading_feedback_s`` has passed by the frames' stamps. A wrong heading is not
        self-sustaining: candidates that contradict it fail verification, so no new heading is registered and the
        prior expires.
        """
        from mobilegeo_ros.localizer import Priors

        reg = self._registered_heading
        window = self.cfg.node.heading_feedback_s
        if reg is None or window <= 0 or not 0.0 <= stamp_s - reg[0] <= window:
            return priors
        priors = priors if priors is not None else Priors()
        if priors.finite("yaw_deg") is not None:
            return priors
        return dataclasses.replace(priors, yaw_deg=reg[1])

    def _to_output(self, frame: Frame, fix, priors) -> Output:
        alt_prior = None if priors is None else priors.finite("altitude_m")
        out = Output(frame=frame, status=fix.status, reason=fix.reason, score=float(fix.score),
                     heading_deg=fix.heading_deg, views_used=fix.views_used)
        if alt_prior is not None:
            out.alt_m = alt_prior + self.cfg.node.ground_alt_m
        if fix.status != "fix":
            return out
        cov = np.asarray(fix.cov_en, float).reshape(2, 2)
        if not np.all(np.isfinite(cov)) or np.linalg.eigvalsh(0.5 * (cov + cov.T))[0] <= 0:
            cov = np.eye(2) * max(float(fix.sigma_m), 1.0) ** 2
        e, n, _ = self.enu.to_enu(fix.lat, fix.lon, self.cfg.node.ground_alt_m)
        out.u = alt_prior if alt_prior is not None else math.nan
        if not self.cfg.node.filter_enabled:
            out.e, out.n, out.cov_en = e, n, cov
            out.lat, out.lon = fix.lat, fix.lon
            return out
        r = self.filter.update(frame.stamp_s, (e, n), cov)
        out.filter_event = r.event
        if r.event == "rejected":
            out.status = "no_fix"
            out.reason = (f"rejected by the temporal filter: fix {math.sqrt(r.mahalanobis2):.1f} sigma from the "
                          f"predicted track")
            return out
        out.e, out.n = float(r.position[0]), float(r.position[1])
        out.cov_en = covariance_upper_bound(r.position_cov, cov)
        out.vel_en, out.vel_cov = r.velocity, r.velocity_cov
        out.lat, out.lon, _ = self.enu.to_wgs84(out.e, out.n, 0.0)
        return out


def covariance_upper_bound(filtered: np.ndarray, single: np.ndarray) -> np.ndarray:
    """The smallest-effort covariance that bounds both the filter's and the latest single fix's (2×2, m²).

    Consecutive fixes share their errors (the same off-centre or wrong tile is matched frame after frame), so
    averaging them does not shrink the true error the way a Kalman filter assumes for independent measurements. The
    published uncertainty therefore never drops below the latest fix's: ``filtered + positive part(single -
    filtered)``, which is ⪰ both in the positive-semidefinite order.
    """
    diff = 0.5 * ((single - filtered) + (single - filtered).T)
    w, v = np.linalg.eigh(diff)
    return filtered + (v * np.clip(w, 0.0, None)) @ v.T


__all__ = [
    "ERROR", "OK", "STALE", "UNKNOWN_VARIANCE", "WARN", "Frame", "covariance_upper_bound", "LatestMailbox", "LocalizationPipeline", "Output",
    "PriorState", "Stats", "diagnostic_level", "heading_to_quaternion", "quaternion_to_attitude",
]
