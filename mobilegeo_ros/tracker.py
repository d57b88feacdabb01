"""The camera-rate tracker: one camera frame's journey from image to published fix (ROS-free).

The node (:mod:`mobilegeo_ros.ros.pipeline`), ``mobilegeo localize``, the demo and the bag replay all call
:meth:`Tracker.process` with a frame (RGB ``uint8`` H×W×3), its stamp (seconds) and the priors valid at that stamp,
and publish the :class:`TrackResult` it returns. Per frame:

1. **Track** (:class:`FrameToFrame`): corners of the previous frame (downscaled to ``tracker.track_width_px``) are
   followed by pyramidal Lucas-Kanade optical flow with a forward-backward check; a RANSAC homography between the two
   frames is chained onto the map registration of the last keyframe, ``H_cur = H_prev @ F`` (view pixels → map
   metres). The covariance grows with the tracked distance (``tracker.drift_fraction``) and per frame
   (``tracker.drift_per_frame_m``) and resets at each verified keyframe.
2. **Keyframe?** Without a track, every frame is localized from scratch: retrieval over the index (student embedding
   → faiss top-k, the MSRM-selected window of recent embeddings fused) and registration against the map around the
   best tiles (:meth:`mobilegeo_ros.localizer.Localizer.localize_embeddings`). While tracking, a keyframe is registered
   against the map window around the tracked position — no retrieval — on a schedule (``tracker.keyframe_every_s``),
   when the tracked sigma exceeds ``tracker.keyframe_sigma_m``, or when less than ``tracker.keyframe_min_overlap`` of
   the keyframe is still in view. With ``tracker.keyframe_policy: msrm`` a frame due by the schedule is skipped while
   its thumbnail shares more than ``tracker.keyframe_max_mi`` nats of mutual information with the last keyframe's
   (:mod:`mobilegeo_ros.msrm`: the MobileGeo idea of spending compute only on views that add information).
3. **Relocalization.** A verified keyframe farther from the track than the chi-square gate is never a silent jump:
   retrieval and registration over the gated area around the track, then over the whole index, decide; the track
   jumps only to a verified position (``TrackResult.relocalized``), else the track is dropped (no fix).
4. **Status** by :func:`mobilegeo_ros.estimator.status.decide_status`: verified | tracked | retrieval | no fix.
5. **Position**: the drone's nadir point. With the camera intrinsics (``hfov_deg`` prior, from ``camera_info``) the
   full camera pose is solved on the map (:mod:`mobilegeo_ros.estimator.pose`): altitude above ground and attitude
   are outputs; without them the sigma covers the unknown tilt.
6. **Filter**: constant-velocity Kalman filter in local ENU (outlier gate, velocity); the published covariance never
   drops below the latest single fix's (:func:`covariance_upper_bound`).

With ``background=True`` (the node at camera rate, ``node.keyframes_in_background``) the keyframes of a live track
are registered in a worker thread: frames keep being tracked meanwhile, and the keyframe result for an earlier frame
is carried to the current frame through the chain of frame-to-frame homographies since that frame. Without a track
(start, lost) the frame is localized inline: there is nothing to publish meanwhile.

Units: metres (map CRS: easting/northing; local ENU: e/n/u), seconds, degrees (compass heading clockwise from north).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from mobilegeo_ros.config import Config
from mobilegeo_ros.estimator.kalman import ConstantVelocityFilter, chi2_2dof_quantile
from mobilegeo_ros.estimator.refine import Registration, centre_geometry
from mobilegeo_ros.estimator.status import FixStatus, RegistrationOutcome, decide_status
from mobilegeo_ros.geo.elevation import GroundElevation
from mobilegeo_ros.geo.enu import LocalENU
from mobilegeo_ros.geo.render import CameraModel, CameraPose, render_view
from mobilegeo_ros.io import FlightStackFix
from mobilegeo_ros.localizer import Fix, Localizer, Priors
from mobilegeo_ros.msrm import mi_from_cosine, select_views, thumbnail_descriptors


#: 1-sigma assumed for an altitude prior (a barometer / rangefinder message carries none), metres.
ALTITUDE_PRIOR_SIGMA_M = 1.0
#: 1-sigma of the altitude of a camera pose solved on the map, as a share of it (test_tracker: within 5 %).
ALTITUDE_SOLVED_SIGMA_FRACTION = 0.05


@dataclass
class TrackResult:
    """One frame's result, ready to publish.

    Positions: the drone's nadir point in the index's map CRS (``easting``, ``northing``) and WGS84 (``lat``, ``lon``)
    — after the filter when ``node.filter_enabled`` — and local ENU metres (``e``, ``n``, ``u``; the node's ``map``
    frame). ``cov_en`` 2×2 m² (east, north); ``vel_en`` m/s, ``vel_cov`` m²/s²; ``altitude_m`` height above ground
    (the altitude prior, else the solved camera pose); ``alt_m`` height above the WGS84 ellipsoid = ground height at
    the fix (:class:`mobilegeo_ros.geo.elevation.GroundElevation`: ``node.dem_file``, else ``node.ground_alt_m``) +
    ``altitude_m``; NaN when unknown. ``u``: the ENU up coordinate in the ``map`` frame, whose origin is the ground at
    the index origin, when ``alt_m`` and the origin's ground height are known; else ``altitude_m`` (flat ground at the
    origin's level).
    ``stage_ms``: wall time per stage of this frame (flow, embed, localize, register, pose, filter).
    """

    status: FixStatus
    reason: str
    stamp_s: float = math.nan
    lat: float = math.nan
    lon: float = math.nan
    easting: float = math.nan
    northing: float = math.nan
    alt_m: float = math.nan
    altitude_m: float = math.nan
    altitude_sigma_m: float = math.nan  # 1-sigma of altitude_m (prior, or solved camera pose)
    e: float = math.nan
    n: float = math.nan
    u: float = math.nan
    cov_en: np.ndarray = field(default_factory=lambda: np.full((2, 2), math.nan))
    raw_lat: float = math.nan  # the frame's own fix before the Kalman smoothing (= lat when the filter is off)
    raw_lon: float = math.nan
    raw_cov_en: np.ndarray = field(default_factory=lambda: np.full((2, 2), math.nan))
    vel_en: np.ndarray | None = None
    vel_cov: np.ndarray | None = None
    heading_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    score: float = math.nan
    inliers: int = 0
    keyframe: bool = False  # a map registration was applied on this frame
    tracked_m: float = 0.0  # ground distance tracked since the last keyframe (0 on keyframes), metres
    relocalized: bool = False  # the track jumped to a verified position that disagreed with it
    latency_s: float = 0.0
    views_used: int = 0
    filter_event: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)
    fix: Fix | None = field(default=None, repr=False)  # the frame's own localization when one ran
    frame: Any = field(default=None, repr=False)  # the caller's frame object (the node's message fields)

    @property
    def sigma_m(self) -> float:
        """1-sigma horizontal error (metres): sqrt(trace(cov_en) / 2), NaN without a fix."""
        return float(math.sqrt(max(np.trace(self.cov_en), 0.0) / 2.0)) if self.status.is_fix else math.nan

    def as_dict(self) -> dict:
        """JSON-friendly summary (NaN → None)."""
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)

        return {"status": self.status.value, "stamp_s": num(self.stamp_s), "lat": num(self.lat),
                "lon": num(self.lon), "easting": num(self.easting), "northing": num(self.northing),
                "sigma_m": num(self.sigma_m), "altitude_m": num(self.altitude_m), "heading_deg": num(self.heading_deg),
                "pitch_deg": num(self.pitch_deg), "roll_deg": num(self.roll_deg), "score": num(self.score),
                "inliers": self.inliers, "keyframe": self.keyframe, "relocalized": self.relocalized,
                "tracked_m": num(self.tracked_m), "latency_ms": 1e3 * self.latency_s, "reason": self.reason}

    def flight_stack_fix(self, cfg: Config) -> FlightStackFix:
        """The value the NMEA/MAVLink bridges send: their altitude is above mean sea level, ``alt_m`` minus
        ``node.geoid_separation_m``, and unknown (None) when either is unknown."""
        valid = self.status.is_fix
        geoid_m = cfg.node.geoid_separation_m
        msl_known = valid and math.isfinite(self.alt_m) and math.isfinite(geoid_m)
        se = math.sqrt(self.cov_en[0, 0]) if valid else 0.0
        sn = math.sqrt(self.cov_en[1, 1]) if valid else 0.0
        ve = vn = sv = None
        if valid and self.vel_en is not None:
            ve, vn = float(self.vel_en[0]), float(self.vel_en[1])
            sv = math.sqrt(max(self.vel_cov[0, 0], self.vel_cov[1, 1])) if self.vel_cov is not None else None
        return FlightStackFix(
            stamp_s=self.stamp_s, valid=valid, lat=self.lat if valid else 0.0, lon=self.lon if valid else 0.0,
            alt_m=self.alt_m - geoid_m if msl_known else None,
            geoid_separation_m=geoid_m if valid and math.isfinite(geoid_m) else None,
            sigma_alt_m=self.altitude_sigma_m if msl_known and math.isfinite(self.altitude_sigma_m) else None,
            sigma_east_m=se, sigma_north_m=sn,
            vel_east_mps=ve, vel_north_mps=vn, sigma_vel_mps=sv,
            heading_deg=self.heading_deg if valid else None, satellites=cfg.node.satellites_reported)


# ---------------------------------------------------------------------------------------------------------------------
# Frame-to-frame motion


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


class FrameToFrame:
    """Homography between consecutive frames from sparse optical flow (pyramidal Lucas-Kanade, forward-backward
    checked, RANSAC). Frames are downscaled to ``track_width_px``; homographies are returned in full-resolution
    continuous view pixels."""

    def __init__(self, width_px: int = 320, max_corners: int = 300, min_inliers: int = 25):
        self.width_px, self.max_corners, self.min_inliers = width_px, max_corners, min_inliers
        # 15×15 windows on 3 pyramid levels at 320 px follow the ~5-20 px motion between frames at 10-30 Hz; the
        # LK calls are most of a tracked frame's CPU (profiled: 21×21 windows, 4 levels cost 12 ms of 23 ms)
        self._lk = {"winSize": (15, 15), "maxLevel": 2,
                    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03)}

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """RGB H×W×3 → (grey tracking image, scale = tracking pixels per view pixel)."""
        h, w = image.shape[:2]
        scale = min(1.0, self.width_px / w)
        small = image if scale == 1.0 else cv2.resize(image, (max(16, round(w * scale)), max(16, round(h * scale))),
                                                        interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
        return grey, grey.shape[1] / w

    def motion(self, prev: np.ndarray, cur: np.ndarray, scale: float) -> tuple[np.ndarray, int, float] | str:
        """``(F, inliers, rmse_px)`` with ``F`` (3×3) mapping current view pixels → previous view pixels, or the
        reason (a string) the motion could not be measured."""
        if prev.shape != cur.shape:
            return "frame size changed"
        p0 = cv2.goodFeaturesToTrack(prev, self.max_corners, 0.01, 7, blockSize=7)
        if p0 is None or len(p0) < self.min_inliers:
            return f"{0 if p0 is None else len(p0)} corners to track < {self.min_inliers}"
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **self._lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **self._lk)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (np.linalg.norm((back - p0).reshape(-1, 2), axis=1) < 1.0)
        if ok.sum() < self.min_inliers:
            return f"{int(ok.sum())} corners followed < {self.min_inliers}"
        a, b = p1.reshape(-1, 2)[ok], p0.reshape(-1, 2)[ok]
        f_cv, mask = cv2.findHomography(a, b, cv2.RANSAC, 1.0, maxIters=500, confidence=0.995)
        if f_cv is None or mask is None or int(mask.sum()) < self.min_inliers:
            return f"{0 if mask is None else int(mask.sum())} flow inliers < {self.min_inliers}"
        inl = mask.ravel().astype(bool)
        proj = cv2.perspectiveTransform(a[inl].reshape(-1, 1, 2), f_cv).reshape(-1, 2)
        rmse = float(np.sqrt(np.mean(np.sum((proj - b[inl]) ** 2, 1)))) / scale
        # OpenCV pixel centres are integers, ours at +0.5; then tracking pixels → view pixels.
        s = np.diag([scale, scale, 1.0])
        f = np.linalg.inv(s) @ _translate(0.5, 0.5) @ f_cv @ _translate(-0.5, -0.5) @ s
        return f / f[2, 2], int(inl.sum()), rmse


def image_overlap(t_cur_to_ref: np.ndarray, width_px: int, height_px: int) -> float:
    """Share (0..1) of a reference image still in view: the area of the current image's footprint in the
    reference image (``t_cur_to_ref``: current view pixels → reference view pixels), clipped to it."""
    corners = np.array([[0, 0], [width_px, 0], [width_px, height_px], [0, height_px]], np.float64)
    q = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), t_cur_to_ref).reshape(-1, 2)
    if not np.all(np.isfinite(q)):
        return 0.0
    area, _ = cv2.intersectConvexConvex(q.astype(np.float32), corners.astype(np.float32))
    return float(max(0.0, area) / (width_px * height_px))


def homography_centre(h: np.ndarray, width_px: int, height_px: int) -> tuple[float, float, float, float]:
    """``(e, n, heading_deg, gsd_m)`` of a view→map homography at the image centre, as a registration measures them
    (:func:`mobilegeo_ros.estimator.refine.centre_geometry`)."""
    e, n, heading, jac = centre_geometry(h, width_px, height_px)
    return e, n, heading, math.sqrt(abs(float(np.linalg.det(jac))))


# ---------------------------------------------------------------------------------------------------------------------
# Keyframe registrations (inline or in a worker thread)


@dataclass
class _Keyframe:
    """A map registration of frame ``seq``: ``h_map`` (its view pixels → map), the drone position and covariance at
    that frame."""

    seq: int
    h_map: np.ndarray
    easting: float
    northing: float
    cov_en: np.ndarray
    relocalized: bool = False
    reason: str = ""


@dataclass
class _Attempt:
    """The result of one keyframe job: a verified keyframe, or the registration outcome and its reason."""

    seq: int
    keyframe: _Keyframe | None
    outcome: RegistrationOutcome
    reason: str
    fix: Fix | None = None
    drop_track: bool = False  # the track was contradicted and nothing verified where it or the keyframe is
    ms: dict[str, float] = field(default_factory=dict)


class _Worker:
    """One background thread running one keyframe job at a time (1-slot)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[int, Callable[[], _Attempt]] | None = None
        self._busy = False
        self._done: list[_Attempt] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="keyframe_worker", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy or self._job is not None

    def submit(self, seq: int, job: Callable[[], _Attempt]) -> bool:
        with self._cond:
            if self._busy or self._job is not None or self._closed:
                return False
            self._job = (seq, job)
            self._cond.notify()
            return True

    def results(self) -> list[_Attempt]:
        with self._cond:
            out, self._done = self._done, []
            return out

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job is queued or running: True, or False after ``timeout_s`` seconds."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while (self._busy or self._job is not None) and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # a running registration is not interrupted: wait for it (an interpreter exiting while a daemon thread is
        # inside OpenCV aborts the process: "terminate called without an active exception")
        self._thread.join(timeout=15.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                seq, job = self._job
                self._job, self._busy = None, True
            try:
                result = job()
            except Exception as e:  # noqa: BLE001 - a failed registration is reported as such, never kills the thread
                result = _Attempt(seq, None, RegistrationOutcome.UNVERIFIED, f"{type(e).__name__}: {e}")
            with self._cond:
                self._done.append(result)
                self._busy = False
                self._cond.notify_all()


# ---------------------------------------------------------------------------------------------------------------------
# The tracker


@dataclass
class WarmUp:
    """What :meth:`Tracker.warm_up` did: ``seconds`` of wall time, the ``status`` and ``reason`` of its first frame
    (``verified`` when the view cut from the map registered: the whole path ran), ``map_levels`` map-feature pyramid
    levels made ready (those of at most ``WARM_UP_MAX_CHUNKS`` chunks), ``map_loads``
    (:meth:`mobilegeo_ros.localizer.Localizer.map_loads`) after it."""

    seconds: float
    status: FixStatus
    reason: str
    map_levels: int
    map_loads: int


#: Ground distance between the two warm-up frames (the second is tracked), metres.
WARM_UP_STEP_M = 1.0
#: The warm-up readies the map-feature levels of at most this many chunks (``refine.CHUNK_BLOCKS``² blocks each): all
#: levels of a map of a few km², the coarse ones of a large map.
WARM_UP_MAX_CHUNKS = 16


@dataclass
class _Track:
    """The live track: ``h_map`` maps the current frame's view pixels → map metres; ``cov_en`` (2×2 m²) is the
    drone position covariance (keyframe + growth); ``to_keyframe`` maps current view pixels → the keyframe's."""

    h_map: np.ndarray
    cov_en: np.ndarray
    keyframe_stamp_s: float
    verified_stamp_s: float
    to_keyframe: np.ndarray
    keyframe_thumb: np.ndarray
    tracked_m: float = 0.0
    frames: int = 0


class Tracker:
    """Frames → :class:`TrackResult` (see the module docstring). One thread calls :meth:`process`."""

    def __init__(self, localizer: Localizer, cfg: Config, background: bool = False):
        """``background``: register keyframes in a worker thread (the node, ``node.keyframes_in_background``);
        False runs them inline, so results are deterministic (CLI, demo, tests)."""
        self.loc, self.cfg = localizer, cfg
        tc = cfg.tracker
        self.flow = FrameToFrame(tc.track_width_px, tc.track_features, tc.min_track_inliers)
        self.ground = GroundElevation.from_config(cfg.node)  # GeoError for an unusable node.dem_file
        origin_ground_m = self.ground.height_at(localizer.origin_lat, localizer.origin_lon)
        self._origin_ground_known = math.isfinite(origin_ground_m)
        # the map frame's origin: the ground at the index origin (the ellipsoid there when its height is unknown)
        self.enu = LocalENU(localizer.origin_lat, localizer.origin_lon,
                            origin_ground_m if self._origin_ground_known else 0.0)
        self._worker = _Worker() if background else None
        self.reset()

    # -- state ------------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the track, the filter, the window and pending keyframes (a new flight, or time went backwards)."""
        n = self.cfg.node
        self.filter = ConstantVelocityFilter(accel_psd=n.filter_accel_psd, gate_probability=n.filter_gate_probability,
                                             max_rejections=n.filter_max_rejections, max_gap_s=n.filter_max_gap_s)
        self.track: _Track | None = None
        self.window: deque[tuple[float, np.ndarray]] = deque()  # (stamp s, embedding) of retrieval frames
        self._prev: tuple[np.ndarray, float] | None = None  # (grey, scale) of the previous frame
        self._prev_stamp = -math.inf
        self._seq = 0
        self._pending: dict[int, np.ndarray] = {}  # frame seq → current view px → that frame's view px
        self._last_attempt_s = -math.inf
        self._registered_heading: tuple[float, float] | None = None  # (stamp s, compass deg)
        self._last_score = math.nan  # retrieval score of the last localization (tracked frames carry it)
        if self._worker is not None:
            self._worker.results()  # finished keyframe jobs belong to the forgotten track
        self.counts = {"verified": 0, "tracked": 0, "retrieval": 0, "no_fix": 0, "keyframes": 0,
                       "keyframe_attempts": 0, "keyframes_skipped_msrm": 0, "relocalizations": 0, "track_lost": 0}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self.ground.close()
        self.loc.close()

    def warm_up(self, timeout_s: float = 60.0) -> WarmUp:
        """Run the real path once before the first camera frame, then forget it (the node calls this before it
        announces ready).

        Without it the first frame pays the one-time costs, seconds on a real map: reading the orthophoto, the map-side
        keypoints (read from ``INDEX_DIR/map_features``, or detected block by block and cached there), the model's first
        forward pass, the first faiss search. Here every map-feature level of at most ``WARM_UP_MAX_CHUNKS`` chunks is
        made ready (all of a small map's, so no later altitude change stalls a frame either; on a large map the fine
        levels are read or detected where the drone flies), then a nadir view cut from the map itself over the index's
        centre (the ``render`` camera: ``render.image_width_px`` × ``render.image_height_px``, ``render.hfov_deg``, at
        the altitude where the view's central square spans the index's smallest tile, as retrieval expects; a textured
        noise image when ``refine.enabled`` is false and no map is read) goes through :meth:`process` (retrieval,
        registration, pose, filter) and a second view ``WARM_UP_STEP_M`` east is tracked (optical flow). Last,
        :meth:`reset` forgets the track, the filter, the window, the counts and any keyframe job (waited for up to
        ``timeout_s``): the warm-up leaves nothing behind. Exceptions (an unreadable map, a map-feature cache of another
        map) propagate.
        """
        t0 = time.perf_counter()
        cam = CameraModel.from_config(self.cfg.render)
        tile_m = float(np.min(self.loc.index.columns["size_m"]))
        alt = tile_m * cam.focal_px / min(cam.width_px, cam.height_px)
        levels = 0
        if self.cfg.refine.enabled:
            for source in range(len(self.loc.sources)):  # every map file of the index
                features = self.loc.refiner(source).map_features
                for level in range(features.max_level + 1):
                    rows, cols = features.chunk_grid(level)
                    if rows * cols <= WARM_UP_MAX_CHUNKS:
                        features.ensure_level(level)
                        levels += 1
            e, n = self.loc.wgs84_to_map(self.loc.origin_lat, self.loc.origin_lon)
            # the nadir views' footprints (half diagonal) plus the step, and a margin for the pyramid's blur
            reach = alt * math.hypot(cam.width_px, cam.height_px) / (2.0 * cam.focal_px) + WARM_UP_STEP_M + 20.0
            ortho = self.loc.refiner().map_window(e, n, reach)
            views = [render_view(ortho, CameraPose(e + de, n, alt, 0.0), cam) for de in (0.0, WARM_UP_STEP_M)]
        else:
            rng = np.random.default_rng(0)
            noise = rng.integers(0, 256, (cam.height_px, cam.width_px, 3), dtype=np.uint8)
            img = cv2.GaussianBlur(noise, (0, 0), 3.0)
            views = [img, np.ascontiguousarray(np.roll(img, 2, axis=1))]
        priors = Priors(altitude_m=alt, hfov_deg=cam.hfov_deg)
        first = self.process(views[0], 0.0, priors)
        if self.track is not None:
            self.process(views[1], 0.1, priors)
        if self._worker is not None:
            self._worker.wait_idle(timeout_s)
        self.reset()
        return WarmUp(time.perf_counter() - t0, first.status, first.reason, levels, self.loc.map_loads())

    # -- the frame's journey ----------------------------------------------------------------------------------------
    def process(self, image: np.ndarray, stamp_s: float, priors: Priors | None = None, frame: Any = None
                ) -> TrackResult:
        """Localize one frame (RGB uint8 H×W×3, image stamp in seconds, priors valid at the stamp)."""
        t0 = time.perf_counter()
        stage: dict[str, float] = {}
        tc = self.cfg.tracker
        priors = priors or Priors()
        if stamp_s < self._prev_stamp:
            self.reset()  # time went backwards (bag loop, clock reset): the old track is from elsewhere
        seq = self._seq
        self._seq += 1
        h_px, w_px = image.shape[:2]

        # 1. frame-to-frame motion, chained onto the track and onto pending keyframe jobs
        t = time.perf_counter()
        grey, scale = self.flow.prepare(image)
        lost_reason = ""
        if self._prev is not None and (self.track is not None or self._pending) and tc.enabled:
            m = self.flow.motion(self._prev[0], grey, scale)
            if isinstance(m, str):
                lost_reason = f"track lost: {m}"
                self._pending.clear()
                self._registered_heading = None  # no visual continuity: the last heading says nothing now
                if self.track is not None:
                    self.counts["track_lost"] += 1
                self.track = None
            else:
                f, _, _ = m
                for k in self._pending:
                    self._pending[k] = self._pending[k] @ f
                if self.track is not None:
                    self._advance(self.track, f, w_px, h_px)
        elif self.track is not None:
            self.track = None  # tracking disabled or no previous frame
        self._prev, self._prev_stamp = (grey, scale), stamp_s
        stage["flow"] = 1e3 * (time.perf_counter() - t)
        if self.track is not None:
            why = self._track_limit(self.track, stamp_s)
            if why:
                lost_reason = f"track lost: {why}"
                self.counts["track_lost"] += 1
                self.track = None

        priors = self._with_heading_feedback(stamp_s, priors)
        # 2. keyframe: run one (inline) or collect finished ones (background)
        attempts: list[_Attempt] = []
        job = self._keyframe_job(seq, image, stamp_s, priors, grey, w_px, h_px)
        if job is not None:
            self.counts["keyframe_attempts"] += 1
            self._last_attempt_s = stamp_s
            # Without a track there is nothing to publish meanwhile: localize this frame inline (frames arriving
            # meanwhile are dropped by the node's mailbox). Only keyframes of a live track go to the worker.
            if self._worker is None or self.track is None:
                attempts.append(job())
                self._pending[seq] = np.eye(3)
            elif self._worker.submit(seq, job):
                self._pending[seq] = np.eye(3)
        if self._worker is not None:
            attempts.extend(self._worker.results())
        applied: _Keyframe | None = None
        outcome, reason, own_fix = RegistrationOutcome.NONE, lost_reason, None
        for att in attempts:
            to_cur = self._pending.pop(att.seq, None)
            if att.seq == seq:
                stage.update(att.ms)
            if att.fix is not None and att.seq == seq:
                own_fix = att.fix
            if att.drop_track:
                self.track = None
                outcome, reason = RegistrationOutcome.UNVERIFIED, att.reason
                continue
            if att.keyframe is None:
                if att.seq == seq:
                    outcome, reason = att.outcome, att.reason
                continue
            if to_cur is None:
                continue  # the chain from that frame to this one broke: the result cannot be carried over
            applied = self._apply_keyframe(att.keyframe, to_cur, stamp_s, grey, att.seq == seq)
            outcome = RegistrationOutcome.VERIFIED if att.seq == seq else outcome
            reason = att.keyframe.reason
        for k in [k for k in self._pending if k < seq - 300]:
            del self._pending[k]

        # 3. status, 4. position
        retrieval_fix = own_fix is not None and own_fix.status is FixStatus.RETRIEVAL
        status = decide_status(outcome, tracked=self.track is not None and outcome is not RegistrationOutcome.VERIFIED,
                               retrieval_fix=retrieval_fix, refine_enabled=self.cfg.refine.enabled,
                               fallback=self.cfg.refine.fallback)
        res = TrackResult(status=status, reason=reason, stamp_s=stamp_s, frame=frame, fix=own_fix,
                          keyframe=applied is not None, relocalized=bool(applied and applied.relocalized))
        t = time.perf_counter()
        if status is FixStatus.VERIFIED and own_fix is not None and own_fix.status is FixStatus.VERIFIED:
            self._place_from_fix(res, own_fix)
        elif status in (FixStatus.VERIFIED, FixStatus.TRACKED) and self.track is not None:
            self._place_from_track(res, priors, w_px, h_px)
            res.tracked_m = self.track.tracked_m
            if status is FixStatus.TRACKED and not res.reason:
                res.reason = (f"tracked {self.track.frames} frames / {self.track.tracked_m:.0f} m from the keyframe "
                              f"at {self.track.keyframe_stamp_s:.2f} s")
        elif status is FixStatus.RETRIEVAL and own_fix is not None:
            self._place_from_fix(res, own_fix)
        stage["pose"] = 1e3 * (time.perf_counter() - t)
        if own_fix is not None and math.isfinite(own_fix.score):
            self._last_score = float(own_fix.score)
        res.score = self._last_score if res.status.is_fix else (float(own_fix.score) if own_fix else math.nan)
        if own_fix is not None:
            res.views_used = own_fix.views_used
            if not res.inliers:
                res.inliers = own_fix.inliers
            if res.heading_deg is None and own_fix.heading_deg is not None:
                res.heading_deg = own_fix.heading_deg
        if res.status is FixStatus.NO_FIX and not res.reason:
            res.reason = own_fix.reason if own_fix is not None else "waiting for a keyframe registration"

        # 6. filter, 7. ellipsoidal altitude at the published position
        t = time.perf_counter()
        self._filter(res, priors)
        self._ellipsoidal_altitude(res)
        stage["filter"] = 1e3 * (time.perf_counter() - t)
        if res.status is FixStatus.VERIFIED and res.heading_deg is not None:
            self._registered_heading = (stamp_s, float(res.heading_deg))
        self.counts[res.status.value] += 1
        res.stage_ms = stage
        res.latency_s = time.perf_counter() - t0
        return res

    # -- tracking ---------------------------------------------------------------------------------------------------
    def _advance(self, track: _Track, f: np.ndarray, w_px: int, h_px: int) -> None:
        """Chain one frame-to-frame homography (current → previous view pixels) onto the track; grow its sigma."""
        tc = self.cfg.tracker
        e0, n0, _, _ = homography_centre(track.h_map, w_px, h_px)
        track.h_map = track.h_map @ f
        track.h_map = track.h_map / track.h_map[2, 2]
        track.to_keyframe = track.to_keyframe @ f
        e1, n1, _, _ = homography_centre(track.h_map, w_px, h_px)
        step = math.hypot(e1 - e0, n1 - n0)
        if not math.isfinite(step):
            step = 1e3
        track.tracked_m += step
        track.frames += 1
        grow = (tc.drift_fraction * step) ** 2 + tc.drift_per_frame_m**2
        track.cov_en = track.cov_en + np.eye(2) * grow

    def _track_limit(self, track: _Track, stamp_s: float) -> str:
        tc = self.cfg.tracker
        sigma = math.sqrt(max(np.trace(track.cov_en), 0.0) / 2.0)
        if tc.max_track_sigma_m > 0 and sigma > tc.max_track_sigma_m:
            return f"tracked sigma {sigma:.1f} m > tracker.max_track_sigma_m {tc.max_track_sigma_m:g} m"
        if tc.max_track_s > 0 and stamp_s - track.verified_stamp_s > tc.max_track_s:
            return f"no verified keyframe for {stamp_s - track.verified_stamp_s:.1f} s > tracker.max_track_s"
        return ""

    def _keyframe_due(self, track: _Track, stamp_s: float, grey: np.ndarray, w_px: int, h_px: int) -> bool:
        tc = self.cfg.tracker
        since = stamp_s - self._last_attempt_s
        sigma = math.sqrt(max(np.trace(track.cov_en), 0.0) / 2.0)
        forced = sigma > tc.keyframe_sigma_m or image_overlap(track.to_keyframe, w_px, h_px) < tc.keyframe_min_overlap
        if forced and since >= tc.keyframe_every_s / 4.0:
            return True
        if since < tc.keyframe_every_s:
            return False
        if tc.keyframe_policy == "msrm":
            rho = float(thumbnail_descriptors([grey])[0] @ track.keyframe_thumb)
            if mi_from_cosine(rho) > tc.keyframe_max_mi:
                self.counts["keyframes_skipped_msrm"] += 1
                return False
        return True

    def _keyframe_job(self, seq: int, image: np.ndarray, stamp_s: float, priors: Priors, grey: np.ndarray,
                      w_px: int, h_px: int) -> Callable[[], _Attempt] | None:
        """The keyframe registration to run for this frame, or None when none is due."""
        if self.track is None:
            return lambda: self._localize_job(seq, image, stamp_s, priors, None)
        if self._worker is not None and self._worker.busy:
            return None  # one keyframe at a time; this frame is tracked meanwhile
        if not self.cfg.refine.enabled or not self._keyframe_due(self.track, stamp_s, grey, w_px, h_px):
            return None
        track = dataclasses.replace(self.track)
        return lambda: self._gated_job(seq, image, stamp_s, priors, track)

    def _localize_job(self, seq: int, image: np.ndarray, stamp_s: float, priors: Priors,
                      track: _Track | None) -> _Attempt:
        """Retrieval + registration (no track, or relocalization): the frame localized on its own."""
        ms: dict[str, float] = {}
        t = time.perf_counter()
        if self.cfg.index.heading == "query_rotations":
            fix = self.loc.localize([image], priors)
        else:
            emb = self.loc.embed([image])[0]
            ms["embed"] = 1e3 * (time.perf_counter() - t)
            if not np.all(np.isfinite(emb)):
                raise FloatingPointError("the model returned a non-finite embedding")
            stack = self._window_embeddings(stamp_s, emb)
            t = time.perf_counter()
            fix = self.loc.localize_embeddings(stack, priors, image=image)
        ms["localize"] = 1e3 * (time.perf_counter() - t)
        if fix.status is FixStatus.VERIFIED and fix.registration is not None:
            # The track carries the solved pose's covariance, or (no intrinsics) the registered centre's: the
            # unknown-tilt allowance is added per frame when the drone is placed.
            cov = fix.cov_en if fix.pose is not None else fix.registration.cov_en
            kf = _Keyframe(seq, fix.registration.homography, fix.easting, fix.northing, cov, reason=fix.reason)
            return _Attempt(seq, kf, RegistrationOutcome.VERIFIED, fix.reason, fix=fix, ms=ms)
        outcome = (RegistrationOutcome.AMBIGUOUS if fix.reason.startswith("ambiguous")
                   else RegistrationOutcome.UNVERIFIED)
        return _Attempt(seq, None, outcome, fix.reason, fix=fix, ms=ms)

    def _window_embeddings(self, stamp_s: float, emb: np.ndarray) -> np.ndarray:
        """Add a retrieval embedding to the window; the MSRM-selected views (newest first kept) → k×D."""
        node = self.cfg.node
        self.window.append((stamp_s, emb))
        if node.window_s > 0:
            while self.window and stamp_s - self.window[0][0] > node.window_s:
                self.window.popleft()
        while len(self.window) > node.window_size:
            self.window.popleft()
        stack = np.stack([w[1] for w in self.window])
        return stack[select_views(stack, node.max_views, node.max_view_similarity)]

    def _gated_job(self, seq: int, image: np.ndarray, stamp_s: float, priors: Priors, track: _Track) -> _Attempt:
        """Register a keyframe against the map window around the tracked position; relocalize on disagreement."""
        ms: dict[str, float] = {}
        h_px, w_px = image.shape[:2]
        ce, cn, heading, gsd = homography_centre(track.h_map, w_px, h_px)
        sigma = math.sqrt(max(np.trace(track.cov_en), 0.0) / 2.0)
        half_m = 0.5 * math.hypot(w_px, h_px) * gsd + 3.0 * sigma + self.cfg.refine.window_margin_m
        gated = dataclasses.replace(priors, yaw_deg=priors.finite("yaw_deg") if priors.finite("yaw_deg") is not None
                                    else heading)
        t = time.perf_counter()
        choice = self.loc.register_near(image, gated, ce, cn, heading, half_m, gsd_m=gsd)
        ms["register"] = 1e3 * (time.perf_counter() - t)
        if choice.status != "refined":
            outcome = (RegistrationOutcome.AMBIGUOUS if choice.status == "ambiguous"
                       else RegistrationOutcome.UNVERIFIED)
            return _Attempt(seq, None, outcome, f"keyframe not verified: {choice.reason}", ms=ms)
        reg = choice.best
        placed = self.loc.drone_position(reg, priors, w_px, h_px)
        if isinstance(placed, str):
            return _Attempt(seq, None, RegistrationOutcome.UNVERIFIED, placed, ms=ms)
        e, n, cov, _, pose = placed
        kf = _Keyframe(seq, reg.homography, e, n, cov if pose is not None else reg.cov_en,
                       reason=f"keyframe: {choice.reason}")
        pe, pn = self._track_position(track, priors, w_px, h_px)
        if self._agrees(kf, pe, pn, track.cov_en):
            return _Attempt(seq, kf, RegistrationOutcome.VERIFIED, kf.reason, ms=ms)
        # 3. relocalization: never a silent jump
        d = math.hypot(kf.easting - pe, kf.northing - pn)
        t = time.perf_counter()
        lat, lon = self.loc.map_to_wgs84(pe, pn)
        # The search gate around the track; the localizer widens it ring by ring to the whole index while nothing
        # verifies (estimator.gate_widening), and reports where it found the keyframe.
        around = dataclasses.replace(priors, lat=lat, lon=lon, radius_m=3.0 * sigma + d + half_m)
        att = self._localize_job(seq, image, stamp_s, around, None)
        if att.keyframe is not None:
            search = att.fix.search if att.fix is not None else None
            scope = ("around the track" if search is None or search.mode == "gate" else
                     "over the whole index" if search.mode == "index" else
                     f"within {search.radius_m:.0f} m of the track")
            att.keyframe.relocalized = not self._agrees(att.keyframe, pe, pn, track.cov_en)
            att.keyframe.reason = f"relocalized {scope}: keyframe {d:.0f} m from the track; {att.keyframe.reason}"
            att.ms.update(ms)
            att.ms["relocalize"] = 1e3 * (time.perf_counter() - t)
            return att
        ms["relocalize"] = 1e3 * (time.perf_counter() - t)
        return _Attempt(seq, None, RegistrationOutcome.UNVERIFIED,
                        f"keyframe {d:.0f} m from the track and no verified relocalization: track dropped",
                        drop_track=True, ms=ms)

    def _agrees(self, kf: _Keyframe, pe: float, pn: float, track_cov: np.ndarray) -> bool:
        tc = self.cfg.tracker
        d = np.array([kf.easting - pe, kf.northing - pn])
        if float(np.hypot(*d)) <= tc.gate_floor_m:
            return True
        s = np.asarray(kf.cov_en, float) + np.asarray(track_cov, float)
        try:
            m2 = float(d @ np.linalg.solve(s, d))
        except np.linalg.LinAlgError:
            return False
        return m2 <= chi2_2dof_quantile(tc.gate_probability)

    def _apply_keyframe(self, kf: _Keyframe, to_cur: np.ndarray, stamp_s: float, grey: np.ndarray,
                        current: bool) -> _Keyframe:
        """Reset the track onto a verified keyframe (of this frame, or carried over from an earlier one)."""
        h_cur = kf.h_map @ to_cur
        h_cur = h_cur / h_cur[2, 2]
        cov = np.asarray(kf.cov_en, float).copy()
        if not current and self.track is not None:
            # carried over from an earlier frame: the motion since then adds the track's growth
            cov = cov + np.eye(2) * (self.cfg.tracker.drift_per_frame_m**2)
        if kf.relocalized:
            self.counts["relocalizations"] += 1
            self.filter.reset()
        self.counts["keyframes"] += 1
        if not self.cfg.tracker.enabled:
            return kf  # every frame on its own: no track to keep
        thumb = thumbnail_descriptors([grey])[0]
        self.track = _Track(h_map=h_cur, cov_en=cov, keyframe_stamp_s=stamp_s, verified_stamp_s=stamp_s,
                            to_keyframe=np.asarray(to_cur, float).copy(), keyframe_thumb=thumb)
        return kf

    # -- placing the drone --------------------------------------------------------------------------------------------
    def _track_position(self, track: _Track, priors: Priors, w_px: int, h_px: int) -> tuple[float, float]:
        placed = self.loc.drone_position(self._as_registration(track, w_px, h_px), priors, w_px, h_px)
        if isinstance(placed, str):
            e, n, _, _ = homography_centre(track.h_map, w_px, h_px)
            return e, n
        return placed[0], placed[1]

    @staticmethod
    def _as_registration(track: _Track, w_px: int, h_px: int) -> Registration:
        e, n, heading, gsd = homography_centre(track.h_map, w_px, h_px)
        return Registration(True, "tracked", center_e=e, center_n=n, heading_deg=heading, cov_en=track.cov_en,
                            gsd_m=gsd, homography=track.h_map)

    def _place_from_track(self, res: TrackResult, priors: Priors, w_px: int, h_px: int) -> None:
        reg = self._as_registration(self.track, w_px, h_px)
        placed = self.loc.drone_position(reg, priors, w_px, h_px)
        if isinstance(placed, str):
            res.status, res.reason = FixStatus.NO_FIX, placed
            return
        e, n, cov, alt, pose = placed
        res.easting, res.northing, res.cov_en, res.altitude_m = e, n, np.asarray(cov, float), alt
        res.heading_deg = priors.finite("yaw_deg") if priors.finite("yaw_deg") is not None else reg.heading_deg
        if pose is not None:
            res.pitch_deg, res.roll_deg = pose.pitch_deg, pose.roll_deg
        res.lat, res.lon = self.loc.map_to_wgs84(e, n)

    @staticmethod
    def _place_from_fix(res: TrackResult, fix: Fix) -> None:
        res.easting, res.northing, res.lat, res.lon = fix.easting, fix.northing, fix.lat, fix.lon
        res.cov_en = np.asarray(fix.cov_en, float)
        res.altitude_m, res.heading_deg, res.inliers = fix.altitude_m, fix.heading_deg, fix.inliers
        if fix.pose is not None:
            res.pitch_deg, res.roll_deg = fix.pose.pitch_deg, fix.pose.roll_deg

    # -- filter and outputs ------------------------------------------------------------------------------------------
    def _filter(self, res: TrackResult, priors: Priors) -> None:
        node = self.cfg.node
        alt = priors.finite("altitude_m")
        if alt is None and math.isfinite(res.altitude_m):
            alt = res.altitude_m
        res.altitude_sigma_m = ALTITUDE_PRIOR_SIGMA_M if priors.finite("altitude_m") is not None else (
            ALTITUDE_SOLVED_SIGMA_FRACTION * alt if alt is not None else math.nan)
        if alt is not None:
            res.altitude_m = float(alt)
            res.u = float(alt)  # until the ground height at the fix places it in the map frame (_ellipsoidal)
        if not res.status.is_fix:
            return
        if not (math.isfinite(res.lat) and math.isfinite(res.lon)):
            res.status, res.reason = FixStatus.NO_FIX, (f"position ({res.easting:.6g}, {res.northing:.6g}) m has no "
                                                        "WGS84 coordinates (off the map projection)")
            return
        cov = np.asarray(res.cov_en, float).reshape(2, 2)
        if not np.all(np.isfinite(cov)) or np.linalg.eigvalsh(0.5 * (cov + cov.T))[0] <= 0:
            cov = np.eye(2) * max(res.sigma_m if math.isfinite(res.sigma_m) else 1.0, 1.0) ** 2
        e, n, _ = self.enu.to_enu(res.lat, res.lon, self.enu.origin_h)
        res.raw_lat, res.raw_lon, res.raw_cov_en = res.lat, res.lon, cov
        if not node.filter_enabled:
            res.e, res.n, res.cov_en = float(e), float(n), cov
            return
        r = self.filter.update(res.stamp_s, (float(e), float(n)), cov)
        res.filter_event = r.event
        if r.event == "rejected":
            res.status = FixStatus.NO_FIX
            res.reason = (f"rejected by the temporal filter: fix {math.sqrt(r.mahalanobis2):.1f} sigma from the "
                          "predicted track")
            return
        res.e, res.n = float(r.position[0]), float(r.position[1])
        res.cov_en = covariance_upper_bound(r.position_cov, cov)
        res.vel_en, res.vel_cov = r.velocity, r.velocity_cov
        res.lat, res.lon, _ = self.enu.to_wgs84(res.e, res.n, 0.0)
        res.easting, res.northing = self.loc.wgs84_to_map(res.lat, res.lon)

    def _ellipsoidal_altitude(self, res: TrackResult) -> None:
        """``alt_m`` (above the WGS84 ellipsoid) and the map-frame ``u`` of a fix from the ground height under it."""
        if not (res.status.is_fix and math.isfinite(res.altitude_m) and math.isfinite(res.lat)
                and math.isfinite(res.lon)):
            return
        ground_m = self.ground.height_at(res.lat, res.lon)
        if not math.isfinite(ground_m):
            return
        res.alt_m = ground_m + res.altitude_m
        if self._origin_ground_known:
            res.u = float(self.enu.to_enu(res.lat, res.lon, res.alt_m)[2])

    def _with_heading_feedback(self, stamp_s: float, priors: Priors) -> Priors:
        """Priors with the heading registered on a recent frame as the yaw prior when none is known (it narrows the
        search; a wrong one is not self-sustaining: candidates that contradict it fail verification)."""
        reg = self._registered_heading
        window = self.cfg.node.heading_feedback_s
        if reg is None or window <= 0 or not 0.0 <= stamp_s - reg[0] <= window or self.track is not None:
            return priors
        if priors.finite("yaw_deg") is not None:
            return priors
        return dataclasses.replace(priors, yaw_deg=reg[1])


def covariance_upper_bound(filtered: np.ndarray, single: np.ndarray) -> np.ndarray:
    """The smallest-effort covariance that bounds both the filter's and the latest single fix's (2×2, m²).

    Consecutive fixes share their errors (the same off-centre or wrong tile is matched frame after frame; tracked
    frames inherit their keyframe's error), so averaging them does not shrink the true error the way a Kalman filter
    assumes for independent measurements. The published uncertainty therefore never drops below the latest fix's:
    ``filtered + positive part(single - filtered)``, which is ⪰ both in the positive-semidefinite order.
    """
    diff = 0.5 * ((single - filtered) + (single - filtered).T)
    w, v = np.linalg.eigh(diff)
    return filtered + (v * np.clip(w, 0.0, None)) @ v.T


__all__ = ["FrameToFrame", "TrackResult", "Tracker", "WarmUp", "covariance_upper_bound", "homography_centre",
           "image_overlap"]
