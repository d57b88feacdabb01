"""Everything the ROS node does between a received message and a published result, without rclpy.

The node (:mod:`mobilegeo_ros.ros.node`) only copies message fields into plain values, hands them to this module and
publishes what comes back, so the logic here is testable without ROS:

* :class:`LatestMailbox`: 1-slot hand-over from the executor thread to the inference worker; a frame that was not
  picked up in time is replaced (and counted as dropped), so nothing queues without bound.
* :class:`PriorState`: the IMU attitude, altitude and GNSS prior of an image, matched to its header stamp (short
  buffers of stamped samples; interpolated, or the nearest sample within ``node.prior_timeout_s``).
* :class:`LocalizationPipeline`: decode -> :class:`mobilegeo_ros.tracker.Tracker` (the core: tracking, keyframes,
  status, pose, filter; the same code ``mobilegeo localize``, the demo and replay run) -> :class:`Output`.
* :class:`Stats` and :func:`diagnostic_level`: counters and the OK/WARN/ERROR/STALE decision of ``/diagnostics``.

IMU convention (REP-103): ``sensor_msgs/Imu.orientation`` rotates the body frame FLU (x forward, y left, z up) into
the world frame ENU (x east, y north, z up). The ENU yaw (counter-clockwise from east) of the body x axis becomes the
compass heading ``90 - yaw`` (clockwise from north); the camera is assumed mounted with its image top edge towards
the body's forward axis plus ``node.camera_yaw_offset_deg``. ROS pitch > 0 is nose down and roll > 0 is right side
down; for a camera rigidly fixed looking down (``node.use_imu_tilt``) they tilt the optical axis backwards and to the
left, i.e. camera ``pitch_deg = -pitch`` and ``roll_deg = -roll`` in the geo.render convention.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from mobilegeo_ros.config import Config
from mobilegeo_ros.io.images import ImageDecodeError, decode_compressed, decode_image
from mobilegeo_ros.localizer import Priors
from mobilegeo_ros.tracker import TrackResult, Tracker, WarmUp

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


#: Samples of a prior older than its newest one by more than ``node.prior_timeout_s`` + this are dropped (seconds of
#: header stamps): an image is matched to priors at most ``node.prior_timeout_s`` from its stamp, and images reach the
#: worker a little after the priors stamped with them.
PRIOR_HISTORY_S = 5.0
#: At most this many samples are kept per prior (a 400 Hz IMU fills 5 s with 2000).
PRIOR_MAX_SAMPLES = 4096


class StampedSeries:
    """Time-ordered samples ``(stamp_s, value)`` of one prior (header stamps, seconds); not locked (PriorState is).

    Bounded by age and count: samples older than the newest by more than ``horizon_s``, and the oldest beyond
    ``max_samples``, are dropped. A sample older than the newest by more than ``horizon_s`` (a bag played again, a
    reset clock) starts the series afresh, so a new flight never reads the old one's samples.
    """

    def __init__(self, horizon_s: float, max_samples: int = PRIOR_MAX_SAMPLES):
        self.horizon_s, self.max_samples = float(horizon_s), int(max_samples)
        self._stamps: list[float] = []
        self._values: list[Any] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def clear(self) -> None:
        self._stamps.clear()
        self._values.clear()

    def add(self, stamp_s: float, value: Any) -> None:
        if not math.isfinite(stamp_s):
            raise ValueError(f"header stamp {stamp_s} is not finite")
        if self._stamps and stamp_s < self._stamps[-1] - self.horizon_s:
            self.clear()
        i = bisect.bisect_right(self._stamps, stamp_s)
        self._stamps.insert(i, stamp_s)
        self._values.insert(i, value)
        cut = max(bisect.bisect_left(self._stamps, self._stamps[-1] - self.horizon_s),
                  len(self._stamps) - self.max_samples)
        if cut > 0:
            del self._stamps[:cut], self._values[:cut]

    def around(self, at_s: float, tolerance_s: float) -> list[tuple[float, Any]]:
        """The samples that give the prior at ``at_s``: the two around it, ``[(t0, v0), (t1, v1)]`` with
        ``t0 < at_s < t1``, when both are within ``tolerance_s`` of it; else the one sample stamped ``at_s`` or the
        nearer of the two that is within ``tolerance_s``; else ``[]``."""
        if not math.isfinite(at_s):
            return []
        i = bisect.bisect_left(self._stamps, at_s)
        if i < len(self._stamps) and self._stamps[i] == at_s:
            return [(at_s, self._values[i])]
        near = [(self._stamps[k], self._values[k]) for k in (i - 1, i)
                if 0 <= k < len(self._stamps) and abs(self._stamps[k] - at_s) <= tolerance_s]
        if len(near) == 2:
            return near
        return near[:1]


def _fraction(samples: list[tuple[float, Any]], at_s: float) -> float:
    """Where ``at_s`` lies between two samples' stamps: 0 at the first, 1 at the second."""
    (t0, _), (t1, _) = samples
    return (at_s - t0) / (t1 - t0)


def slerp(q0: tuple[float, ...], q1: tuple[float, ...], fraction: float) -> tuple[float, float, float, float]:
    """Spherical linear interpolation of unit quaternions ``(x, y, z, w)`` along the shorter arc: the rotation a
    ``fraction`` (0..1) of the way from ``q0`` to ``q1`` at a constant angular rate (headings 350° and 10° meet at
    0°, not 180°)."""
    a, b = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(a @ b)
    if dot < 0.0:  # q and -q are the same rotation: take the shorter way round
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly the same rotation: linear, then normalised
        q = a + fraction * (b - a)
    else:
        theta = math.acos(dot)
        q = (math.sin((1.0 - fraction) * theta) * a + math.sin(fraction * theta) * b) / math.sin(theta)
    q = q / np.linalg.norm(q)
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


class PriorState:
    """The priors of one image, matched to its header stamp; thread-safe.

    Every prior is a short :class:`StampedSeries` of stamped samples (header stamps in seconds; the node stamps
    messages with a zero stamp, and the unstamped ``std_msgs/Float64`` altitude, with its clock at receipt, which is the
    bag's clock under ``use_sim_time``). :meth:`priors` answers for an image stamp: the IMU orientation is slerped and
    the altitude interpolated linearly between the two samples around the stamp when both are within
    ``node.prior_timeout_s`` of it, else the nearest sample within that tolerance is used, else the prior is unknown.
    A stamped rangefinder altitude (``sensor_msgs/Range``) wins over the ``Float64`` one when both match. The GNSS
    prior (a search area, not a measurement) is the nearest sample within the tolerance, not interpolated.
    """

    def __init__(self, cfg: Config):
        self.node = cfg.node
        horizon = self.node.prior_timeout_s + PRIOR_HISTORY_S
        self._lock = threading.Lock()
        self._imu = StampedSeries(horizon)  # unit quaternions (x, y, z, w): body FLU in ENU
        self._range = StampedSeries(horizon)  # height above ground from a downward rangefinder, m
        self._altitude = StampedSeries(horizon)  # height above ground from std_msgs/Float64, m
        self._gnss = StampedSeries(horizon)  # (lat, lon, radius m)
        self._hfov_deg: float | None = None

    def set_hfov(self, hfov_deg: float) -> None:
        """Horizontal field of view from camera_info (degrees); it does not expire."""
        with self._lock:
            self._hfov_deg = float(hfov_deg)

    def set_imu(self, x: float, y: float, z: float, w: float, stamp_s: float) -> None:
        """An IMU orientation (REP-103, body FLU in ENU) at ``stamp_s``; ValueError (nothing stored) for a NaN or zero
        quaternion or a non-finite stamp."""
        quaternion_to_attitude(x, y, z, w)  # validates
        q = np.array([x, y, z, w], float)
        q /= np.linalg.norm(q)
        with self._lock:
            self._imu.add(float(stamp_s), tuple(float(c) for c in q))

    def set_altitude(self, altitude_m: float, stamp_s: float) -> None:
        """Height above the ground (m) at ``stamp_s``; ValueError for NaN or non-positive values."""
        if not math.isfinite(altitude_m) or altitude_m <= 0:
            raise ValueError(f"altitude: {altitude_m} m is not a positive height above ground")
        with self._lock:
            self._altitude.add(float(stamp_s), float(altitude_m))

    def set_range(self, range_m: float, min_range_m: float, max_range_m: float, stamp_s: float) -> None:
        """A downward rangefinder's distance to the ground (``sensor_msgs/Range``, m; taken as the height above
        ground) at ``stamp_s``; ValueError for a non-finite (REP-117: +-Inf = nothing within range) or non-positive
        range, or one outside the sensor's ``[min_range_m, max_range_m]`` when the message gives that interval
        (``0 <= min < max``)."""
        if not math.isfinite(range_m) or range_m <= 0:
            raise ValueError(f"range: {range_m} m is not a positive distance to the ground")
        interval = math.isfinite(min_range_m) and math.isfinite(max_range_m) and 0 <= min_range_m < max_range_m
        if interval and not min_range_m <= range_m <= max_range_m:
            raise ValueError(f"range: {range_m} m is outside the sensor's [{min_range_m}, {max_range_m}] m")
        with self._lock:
            self._range.add(float(stamp_s), float(range_m))

    def set_gnss(self, lat: float, lon: float, status: int, cov_diag: tuple[float, float] | None,
                 stamp_s: float) -> None:
        """A GNSS fix bounding the search: radius = ``gnss_prior_radius_m`` + 3-sigma when a covariance is known.
        ``status`` < 0 (NO_FIX) or a non-finite position clears the prior."""
        with self._lock:
            if status < 0 or not (math.isfinite(lat) and math.isfinite(lon)):
                self._gnss.clear()
                return
            radius = self.node.gnss_prior_radius_m
            if cov_diag is not None and all(math.isfinite(c) and c > 0 for c in cov_diag):
                radius += 3.0 * math.sqrt(max(cov_diag))
            self._gnss.add(float(stamp_s), (float(lat), float(lon), radius))

    def priors(self, at_stamp_s: float) -> Priors:
        """The :class:`mobilegeo_ros.localizer.Priors` of an image stamped ``at_stamp_s`` (header stamp, seconds)."""
        tol = self.node.prior_timeout_s
        p = Priors()
        with self._lock:
            p.hfov_deg = self._hfov_deg
            imu = self._imu.around(at_stamp_s, tol)
            altitude = self._range.around(at_stamp_s, tol) or self._altitude.around(at_stamp_s, tol)
            gnss = self._gnss.around(at_stamp_s, tol)
        if imu:
            q = imu[0][1] if len(imu) == 1 else slerp(imu[0][1], imu[1][1], _fraction(imu, at_stamp_s))
            heading, pitch, roll = quaternion_to_attitude(*q)
            p.yaw_deg = (heading + self.node.camera_yaw_offset_deg) % 360.0
            if self.node.use_imu_tilt:
                p.pitch_deg, p.roll_deg = -pitch, -roll
        if altitude:
            a0 = altitude[0][1]
            p.altitude_m = a0 if len(altitude) == 1 else a0 + _fraction(altitude, at_stamp_s) * (altitude[1][1] - a0)
        if gnss:
            _, (p.lat, p.lon, p.radius_m) = min(gnss, key=lambda s: abs(s[0] - at_stamp_s))
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
    first_latency_s: float = math.nan  # the first processed frame's latency (after the warm-up)
    by_status: dict = field(default_factory=dict)  # published results per FixStatus value
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
                "window": self.window, "by_status": dict(self.by_status),
                "latency_last_ms": 1e3 * lat[-1] if len(lat) else math.nan,
                "latency_mean_ms": 1e3 * lat.mean() if len(lat) else math.nan,
                "latency_p99_ms": 1e3 * float(np.percentile(lat, 99)) if len(lat) else math.nan,
                "latency_first_ms": 1e3 * self.first_latency_s,
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
# The pipeline: decode, then the core tracker

#: One published result: the core tracker's, with the node's :class:`Frame` attached as ``frame``.
Output = TrackResult


class LocalizationPipeline:
    """decode -> :meth:`mobilegeo_ros.tracker.Tracker.process` (the same path as ``mobilegeo localize``, the demo
    and replay) -> :class:`Output`, counted in :attr:`stats`. One thread calls :meth:`process`."""

    def __init__(self, localizer, cfg: Config, stats: Stats | None = None):
        self.loc, self.cfg = localizer, cfg
        self.stats = stats or Stats()
        if cfg.node.opencv_threads > 0:
            cv2.setNumThreads(cfg.node.opencv_threads)
        self.tracker = Tracker(localizer, cfg, background=cfg.node.keyframes_in_background)
        self.warm: WarmUp | None = None

    def warm_up(self) -> WarmUp:
        """The core's warm-up (:meth:`mobilegeo_ros.tracker.Tracker.warm_up`: model, faiss search, map features,
        a view cut from the map through the whole path, then a fresh tracker) before the first frame. Exceptions
        propagate (the node refuses to start)."""
        self.warm = self.tracker.warm_up()
        return self.warm

    def map_loads_since_warm_up(self) -> int:
        """Map loads (:meth:`mobilegeo_ros.localizer.Localizer.map_loads`: the orthophoto, map-feature levels, map
        blocks) since :meth:`warm_up`; 0 while no frame paid a start-up cost. -1 before the warm-up."""
        return -1 if self.warm is None else self.loc.map_loads() - self.warm.map_loads

    def decode(self, frame: Frame) -> np.ndarray:
        """The frame's RGB image; raises ImageDecodeError."""
        maxpx = self.cfg.node.max_image_pixels
        if frame.kind == "compressed":
            return decode_compressed(frame.fields["format"], frame.fields["data"], max_pixels=maxpx)
        return decode_image(**frame.fields, max_pixels=maxpx)

    def close(self) -> None:
        self.tracker.close()

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
        try:
            out = self.tracker.process(image, frame.stamp_s, priors, frame=frame)
        except Exception as e:  # noqa: BLE001 - a backend failure must not kill the node; it is counted and shown
            self.stats.note_error("errors", f"{type(e).__name__}: {e} "
                                            f"({traceback.extract_tb(e.__traceback__)[-1].name})")
            return None
        out.latency_s = time.perf_counter() - t0
        with self.stats.lock:
            if self.stats.processed == 0:
                self.stats.first_latency_s = out.latency_s
            self.stats.processed += 1
            self.stats.window = len(self.tracker.window)
            self.stats.latencies_s.append(out.latency_s)
            self.stats.last_score = out.score
            self.stats.last_status, self.stats.last_reason = out.status.value, out.reason
            self.stats.by_status[out.status.value] = self.stats.by_status.get(out.status.value, 0) + 1
            if out.status.is_fix:
                self.stats.fixes += 1
            else:
                self.stats.no_fixes += 1
            if out.filter_event == "rejected":
                self.stats.filter_rejected += 1
        return out


__all__ = [
    "ERROR", "OK", "STALE", "UNKNOWN_VARIANCE", "WARN", "Frame", "LatestMailbox", "LocalizationPipeline", "Output",
    "PriorState", "StampedSeries", "Stats", "diagnostic_level", "heading_to_quaternion", "quaternion_to_attitude",
    "slerp",
]
