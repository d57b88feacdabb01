"""The localization pipeline shared by the CLI and the ROS node: views → embedding → tile index → fix.

``Localizer.localize(images, priors)`` takes one or more camera views (a sliding window; RGB uint8 H×W×3), prunes
redundant views (:func:`mobilegeo_ros.msrm.select_views`), fuses their embeddings, retrieves the top-k tiles, and
turns them into a :class:`Fix` with :func:`mobilegeo_ros.estimator.retrieval.estimate`.

Query preprocessing: the central square of the image is used (the index tiles are square); its ground side is known
when the altitude and field of view are, which selects the closest pyramid level.

Heading (``index.heading``):
* ``gallery_rotations``: the index holds rotated copies of each tile; a yaw prior keeps only the copies within half a
  rotation step of it, otherwise all copies compete and the best copy's rotation estimates the heading;
* ``query_rotations``: the index is north-up; the query is rotated to north-up with the yaw prior, or, without one,
  ``index.rotations`` rotated copies of the query are searched and the best is kept;
* ``none``: north-up views only.

Refinement (``refine.enabled``, :mod:`mobilegeo_ros.estimator.refine`): the newest view is registered with local
features and a homography against the orthophoto around the ``refine.top_k`` best tiles (the map the index was cut
from, read once on first use). The verified candidate with the most inliers gives a metre-level position, the heading
and a covariance from the inlier geometry; candidates failing verification are rejected; two verified candidates that
disagree give no fix; when none verifies there is no fix either (``refine.fallback: no_fix``, the default) or the
retrieval fix with its larger sigma (``refine.fallback: retrieval``).

Priors (all optional): attitude (yaw/pitch/roll, degrees, from the IMU) and altitude above ground (metres) move the
estimate from the ground point under the image centre to the point under the drone; a prior position with a radius
bounds the search.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pyproj import CRS, Transformer

from mobilegeo_ros.config import Config, MapConfig, from_dict
from mobilegeo_ros.estimator.refine import Choice, Refiner, choose, expected_gsd
from mobilegeo_ros.estimator.retrieval import RetrievalEstimate, estimate
from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, image_to_ground
from mobilegeo_ros.index.tile_index import (
    IndexFileError,
    IndexMismatchError,
    TileIndex,
    group_by_tile,
    identity_differences,
)
from mobilegeo_ros.model import EmbeddingModel, load_model
from mobilegeo_ros.model.weights import file_sha256


@dataclass
class Priors:
    """Optional side information for one query (degrees, metres, WGS84)."""

    yaw_deg: float | None = None  # compass heading of the image top edge
    pitch_deg: float | None = None
    roll_deg: float | None = None
    altitude_m: float | None = None  # above ground
    hfov_deg: float | None = None  # horizontal field of view of the camera (camera_info), for the footprint
    lat: float | None = None  # prior position (e.g. the last GNSS fix) ...
    lon: float | None = None
    radius_m: float | None = None  # ... and how far from it the camera can be

    def finite(self, name: str) -> float | None:
        """The prior as a float, or None when unknown: missing, not finite, or outside its physical range (a field
        of view not in (0, 180) degrees, a non-positive altitude, a negative radius), which no sensor reports."""
        value = getattr(self, name)
        if value is None or not math.isfinite(value):
            return None
        value = float(value)
        lo, hi = _PRIOR_RANGES.get(name, (-math.inf, math.inf))
        return value if lo < value < hi else None


#: Open intervals outside which a prior is treated as unknown (degrees, metres).
_PRIOR_RANGES = {"hfov_deg": (0.0, 180.0), "altitude_m": (0.0, math.inf), "radius_m": (-1e-300, math.inf),
                 "lat": (-90.000001, 90.000001)}


@dataclass
class Fix:
    """One localization result. Positions in the index's map CRS (metres) and WGS84 (degrees)."""

    status: str  # "fix" | "no_fix"
    lat: float
    lon: float
    easting: float
    northing: float
    sigma_m: float  # 1-sigma horizontal error, metres
    cov_en: np.ndarray  # 2×2 covariance (east, north), m²
    score: float  # cosine similarity of the best tile
    heading_deg: float | None  # compass heading of the image top edge (from the match or the prior)
    reason: str = ""
    tile_id: int = -1
    latency_s: float = 0.0
    views_used: int = 0
    refined: bool = False  # position and heading from the geometric registration (else retrieval only)
    inliers: int = 0  # homography inliers of the chosen registration
    registered_heading_deg: float | None = None  # heading measured by the registration (None when not refined)
    retrieval: RetrievalEstimate | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "status": self.status, "lat": self.lat, "lon": self.lon, "easting": self.easting,
            "northing": self.northing, "sigma_m": self.sigma_m, "score": self.score, "heading_deg": self.heading_deg,
            "tile_id": self.tile_id, "views_used": self.views_used, "latency_ms": 1e3 * self.latency_s,
            "refined": self.refined, "inliers": self.inliers, "reason": self.reason,
        }


def center_square(image: np.ndarray) -> np.ndarray:
    """The central square crop of an H×W×3 image (side min(H, W))."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return image[y0:y0 + s, x0:x0 + s]


def rotate_to_heading(square: np.ndarray, yaw_deg: float, target_deg: float = 0.0) -> np.ndarray:
    """Rotate a square view whose top edge points at compass heading ``yaw_deg`` so that it points at ``target_deg``.

    Turning the heading of the top edge clockwise by Δ means turning the image content counter-clockwise by Δ on
    screen, which is a positive angle for ``cv2.getRotationMatrix2D``. Borders are reflected.
    """
    s = square.shape[0]
    delta = target_deg - yaw_deg
    m = cv2.getRotationMatrix2D((s / 2.0, s / 2.0), delta, 1.0)
    return cv2.warpAffine(square, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


class Localizer:
    """Camera views → :class:`Fix`. Thread-compatible: one call at a time per instance."""

    def __init__(self, index: TileIndex, model: EmbeddingModel, cfg: Config, index_dir: str | Path | None = None):
        self.index, self.model, self.cfg = index, model, cfg
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._refiner: Refiner | None = None
        # Resolved now so that a moved map fails at start-up with a clear message; its pixels are read on first use.
        self.map_path = self._resolve_map_path() if cfg.refine.enabled else None
        cols = index.columns
        self._e, self._n = cols["center_e"], cols["center_n"]
        self._size, self._rot = cols["size_m"], cols["rotation_deg"]
        self._tile_id = cols["tile_id"]
        crs = CRS.from_wkt(index.crs_wkt)
        self._to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        self._from_wgs84 = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        lon, lat = self._to_wgs84.transform(
            (self._e.min() + self._e.max()) / 2.0, (self._n.min() + self._n.max()) / 2.0
        )
        self.origin_lat, self.origin_lon = float(lat), float(lon)
        self._levels = np.unique(self._size)

    @classmethod
    def from_files(cls, index_dir: str | Path, cfg: Config | None = None) -> Localizer:
        """Load the index at ``index_dir`` and the model named by ``cfg.model``; refuse a model/index mismatch.

        Without ``cfg`` the settings the index was built with are used (stored in its ``index.json``).
        """
        index = TileIndex.load(index_dir)
        if cfg is None:
            stored = index.map_info.get("build_config")
            if stored is None:
                raise IndexFileError(f"index {str(index_dir)!r} does not record the config it was built with; "
                                     "pass one (--config)")
            cfg = from_dict(stored)
        model = load_model(cfg.model)
        diffs = identity_differences(index.identity, model.identity())
        if diffs:
            raise IndexMismatchError(f"index {str(index_dir)!r} was built with a different embedding model: "
                                     f"{'; '.join(diffs)}. Rebuild it with `mobilegeo build-index` or configure "
                                     "the model it was built with")
        return cls(index, model, cfg, index_dir=index_dir)

    # ---------------------------------------------------------------------------------------------------------------
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Embed the central squares of camera views: list of H×W×3 uint8 RGB → N×D float32 (north-up unknown)."""
        return self.model.embed([center_square(im) for im in images])

    def localize(self, images: list[np.ndarray], priors: Priors | None = None, refine: bool = True) -> Fix:
        """Localize one window of views (all assumed to see about the same place; the newest is last, and it is the
        one registered against the map when ``refine`` and ``refine.enabled``)."""
        t0 = time.perf_counter()
        priors = priors or Priors()
        if not images:
            raise ValueError("localize() needs at least one image")
        heading = self.cfg.index.heading
        yaw = priors.finite("yaw_deg")
        if heading == "query_rotations":
            squares = [center_square(im) for im in images]
            angles = [yaw] if yaw is not None else list(np.arange(self.cfg.index.rotations) * 360.0
                                                         / self.cfg.index.rotations)
            # One fused query per candidate heading: every view rotated as if its top edge pointed north.
            queries = np.stack([
                self._fuse(self.model.embed([rotate_to_heading(sq, a) for sq in squares])) for a in angles
            ])
            est = self._localize_queries(queries, priors, query_angles=angles)
        else:
            est = self._localize_queries(self._fuse(self.embed(images))[None], priors)
        fix = self._finish(est, priors, images[-1] if refine else None)
        fix.latency_s = time.perf_counter() - t0
        fix.views_used = len(images)
        return fix

    def localize_embeddings(self, embeddings: np.ndarray, priors: Priors | None = None,
                            image: np.ndarray | None = None) -> Fix:
        """Localize from already computed view embeddings (N×D; rows from :meth:`embed`). ``image`` (H×W×3 uint8
        RGB, the newest view) is registered against the map when given and ``refine.enabled``."""
        t0 = time.perf_counter()
        if self.cfg.index.heading == "query_rotations":
            raise ValueError("index.heading=query_rotations needs the images: call localize()")
        priors = priors or Priors()
        est = self._localize_queries(self._fuse(np.asarray(embeddings, np.float32))[None], priors)
        fix = self._finish(est, priors, image)
        fix.latency_s = time.perf_counter() - t0
        fix.views_used = len(embeddings)
        return fix

    # ---------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _fuse(embeddings: np.ndarray) -> np.ndarray:
        """Multi-view fusion: MSRM-selected views averaged and re-normalised → D."""
        if len(embeddings) > 1:
            from mobilegeo_ros.msrm import select_views

            embeddings = embeddings[select_views(embeddings, len(embeddings))]
        v = embeddings.mean(0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def _allowed_rows(self, priors: Priors, query_angle: float | None) -> np.ndarray | None:
        """Boolean mask of index rows compatible with the priors, or None when everything is allowed."""
        mask = np.ones(len(self._e), bool)
        yaw = priors.finite("yaw_deg")
        if self.cfg.index.heading == "gallery_rotations" and yaw is not None and self.cfg.index.rotations > 1:
            step = 360.0 / self.cfg.index.rotations
            diff = np.abs((self._rot - yaw + 180.0) % 360.0 - 180.0)
            mask &= diff <= step / 2.0 + 1e-6
        side = self._footprint_m(priors)
        if side is not None and len(self._levels) > 1:
            # Keep the pyramid level(s) closest in scale to what the camera sees.
            ratio = np.abs(np.log(self._levels / side))
            keep = self._levels[ratio <= ratio.min() + math.log(1.25)]
            mask &= np.isin(self._size, keep)
        lat, lon, radius = priors.finite("lat"), priors.finite("lon"), priors.finite("radius_m")
        if lat is not None and lon is not None and radius is not None:
            e0, n0 = self._from_wgs84.transform(lon, lat)
            mask &= np.hypot(self._e - e0, self._n - n0) <= radius + self._size / 2.0
        return None if mask.all() else mask

    def _footprint_m(self, priors: Priors) -> float | None:
        """Ground side (m) of the central square of a nadir view, from altitude and field of view."""
        alt, hfov = priors.finite("altitude_m"), priors.finite("hfov_deg")
        if alt is None or hfov is None:
            return None
        # The central square spans the image height; a 4:3 default aspect is assumed when only hfov is known.
        aspect = 0.75
        vfov = 2.0 * math.atan(math.tan(math.radians(hfov) / 2.0) * aspect)
        return 2.0 * alt * math.tan(vfov / 2.0)

    def _search(self, query: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k distinct tiles for one query (D,) restricted to ``mask`` → (scores, rows) of the best copies."""
        k = self.cfg.estimator.top_k
        n = self.index.ntotal
        copies = self.cfg.index.rotations if self.cfg.index.heading == "gallery_rotations" else 1
        kk = min(n, k * copies * 4)
        while True:
            scores, rows = self.index.search(query[None], kk)
            scores, rows = scores[0], rows[0]
            if mask is not None:
                ok = rows >= 0
                ok[ok] = mask[rows[ok]]
                scores, rows = scores[ok], rows[ok]
            merged = group_by_tile(scores[None], rows[None], self._tile_id, k)[0]
            if len(merged) >= k or kk >= n:
                return (np.array([sc for _, sc in merged], np.float64), np.array([r for r, _ in merged], np.int64))
            kk = min(n, kk * 4)

    def _localize_queries(self, queries: np.ndarray, priors: Priors,
                          query_angles: list[float] | None = None) -> RetrievalEstimate:
        """Search each query (Q×D; Q > 1 only for query rotations) and estimate from the best-scoring one."""
        best: tuple[float, np.ndarray, np.ndarray, float | None] | None = None
        for qi, q in enumerate(queries):
            angle = query_angles[qi] if query_angles else None
            scores, rows = self._search(q, self._allowed_rows(priors, angle))
            if len(scores) and (best is None or scores[0] > best[0]):
                best = (float(scores[0]), scores, rows, angle)
        if best is None:
            est = estimate(np.zeros(0), np.zeros(0, np.int64), *([np.zeros(0)] * 4), self.cfg.estimator)
        else:
            _, scores, rows, angle = best
            rot = self._rot[rows] if angle is None else np.full(len(rows), angle)
            est = estimate(scores, rows, self._e[rows], self._n[rows], self._size[rows], rot, self.cfg.estimator)
        return est

    # ---------------------------------------------------------------------------------------------------------------
    # Geometric refinement

    def _resolve_map_path(self) -> Path:
        """The orthophoto to register against: ``refine.map_path``, else the map recorded in the index, else a file
        of the same name and content (sha256) next to the index directory (an index moved together with its map)."""
        if self.cfg.refine.map_path:
            path = Path(self.cfg.refine.map_path)
            if not path.is_file():
                raise GeoError(f"refine.map_path {str(path)!r} does not exist")
            return path
        info = self.index.map_info
        recorded = info.get("path")
        if not recorded:
            raise GeoError("the index does not record the map it was cut from; set refine.map_path (or "
                           "refine.enabled false)")
        path = Path(recorded)
        if path.is_file():
            return path
        if self.index_dir is not None and info.get("name"):
            for cand in (self.index_dir.parent / info["name"], self.index_dir / info["name"]):
                if cand.is_file() and (not info.get("sha256") or file_sha256(cand) == info["sha256"]):
                    return cand
        raise GeoError(f"the map this index was cut from, {recorded!r}, is not there any more (moved or deleted); "
                       "refinement needs it: set refine.map_path to its new location, or refine.enabled false")

    def refiner(self) -> Refiner:
        """The :class:`Refiner` on the index's orthophoto (read on the first call, with the map settings the index
        was built with, e.g. its pansharpening)."""
        if self._refiner is None:
            if self.map_path is None:
                self.map_path = self._resolve_map_path()
            stored = self.index.map_info.get("build_config", {}).get("map")
            map_cfg = from_dict({"map": stored}).map if stored else MapConfig(**vars(self.cfg.map))
            self._refiner = Refiner(read_orthophoto(self.map_path, map_cfg), self.cfg.refine)
        return self._refiner

    def _finish(self, est: RetrievalEstimate, priors: Priors, image: np.ndarray | None) -> Fix:
        """Retrieval estimate (+ the newest view to register, or None) -> :class:`Fix`."""
        fix = self._to_fix(est, priors)
        if image is None or not self.cfg.refine.enabled or not est.ranked_rows or fix.status != est.status:
            return fix  # (status changed: the attitude prior leaves no position to refine)
        choice = self._register(image, est, priors)
        if choice.status == "refined":
            return self._refined_fix(est, choice, priors)
        if choice.status == "ambiguous" or self.cfg.refine.fallback == "no_fix":
            return Fix(status="no_fix", lat=float("nan"), lon=float("nan"), easting=float("nan"),
                       northing=float("nan"), sigma_m=float("nan"), cov_en=np.full((2, 2), np.nan), score=est.score,
                       heading_deg=fix.heading_deg, reason=choice.reason, tile_id=fix.tile_id, retrieval=est)
        fix.reason = f"{fix.reason}; {choice.reason}" if fix.reason else f"retrieval only: {choice.reason}"
        return fix

    def _register(self, image: np.ndarray, est: RetrievalEstimate, priors: Priors) -> Choice:
        """Register ``image`` against the map windows of the best ``refine.top_k`` retrieved tiles."""
        t0 = time.perf_counter()
        rc = self.cfg.refine
        refiner = self.refiner()
        rows = est.ranked_rows[: rc.top_k]
        h, w = image.shape[:2]
        gsd, known = expected_gsd(w, h, priors.finite("altitude_m"), priors.finite("hfov_deg"),
                                  float(self._size[rows[0]]))
        query = refiner.prepare(image, gsd, known)
        windows: list[tuple[float, float, float, int]] = []
        for r in rows:
            e, n, size = float(self._e[r]), float(self._n[r]), float(self._size[r])
            # Another pyramid level's tile at about the same place searches the same ground: skip it.
            if any(math.hypot(e - we, n - wn) < 0.25 * size for we, wn, _, _ in windows):
                continue
            windows.append((e, n, refiner.window_half_m(query, size), int(r)))
        deadline = t0 + rc.max_time_s if rc.max_time_s > 0 else None
        regs = refiner.register_many(query, windows, priors.finite("yaw_deg"), deadline)
        return choose(regs, rc)

    def _refined_fix(self, est: RetrievalEstimate, choice: Choice, priors: Priors) -> Fix:
        reg = choice.best
        e, n = reg.center_e, reg.center_n
        cov = np.array(reg.cov_en, float)
        alt = priors.finite("altitude_m")
        if alt is not None:
            # The registration locates the ground under the image centre; the drone is offset from it by its tilt,
            # known to the attitude prior's accuracy.
            offset = _tilt_offset(alt, reg.heading_deg, priors)
            if offset is None:
                return self._to_fix(dataclasses.replace(est, reason=_no_ground_reason(priors)), priors)
            e, n = e - offset[0], n - offset[1]
            cov = cov + np.eye(2) * (alt * math.tan(math.radians(self.cfg.refine.attitude_sigma_deg))) ** 2
        lon, lat = self._to_wgs84.transform(e, n)
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return self._to_fix(dataclasses.replace(est, status="no_fix", reason=(
                f"refined position ({e:.6g}, {n:.6g}) m has no WGS84 coordinates (off the map projection)")), priors)
        sigma = float(math.sqrt(max(np.trace(cov), 0.0) / 2.0))
        # A yaw prior stays the published heading (the registration was verified against it); without one the
        # registration's heading is published.
        yaw = priors.finite("yaw_deg")
        return Fix(status="fix", lat=float(lat), lon=float(lon), easting=e, northing=n, sigma_m=sigma, cov_en=cov,
                   score=est.score, heading_deg=reg.heading_deg if yaw is None else yaw,
                   registered_heading_deg=reg.heading_deg, reason=f"refined: {choice.reason}",
                   tile_id=int(self._tile_id[reg.candidate]) if reg.candidate >= 0 else -1, refined=True,
                   inliers=reg.inliers, retrieval=est)

    def _to_fix(self, est: RetrievalEstimate, priors: Priors) -> Fix:
        heading = priors.finite("yaw_deg")
        if heading is None:
            heading = est.heading_deg
        e, n = est.easting, est.northing
        alt = priors.finite("altitude_m")
        if est.status == "fix" and alt is not None and heading is not None:
            # The match locates the ground under the image centre; the drone is offset from it by its tilt.
            offset = _tilt_offset(alt, heading, priors)
            if offset is None:
                e = n = float("nan")
                est = dataclasses.replace(est, status="no_fix", reason=_no_ground_reason(priors))
            else:
                e, n = e - offset[0], n - offset[1]
        if math.isfinite(e) and math.isfinite(n):
            lon, lat = self._to_wgs84.transform(e, n)
        else:
            lat = lon = float("nan")
        if est.status == "fix" and not (math.isfinite(lat) and math.isfinite(lon)):
            # e.g. a huge altitude prior times a tilt moved the position off the projection's domain
            est = dataclasses.replace(est, status="no_fix", reason=f"position ({e:.6g}, {n:.6g}) m has no WGS84 "
                                                                   "coordinates (off the map projection)")
        ceiling = self.cfg.estimator.max_sigma_m
        if est.status == "fix" and ceiling > 0 and est.sigma_m > ceiling:
            est = dataclasses.replace(est, status="no_fix", reason=(
                f"retrieval fix sigma {est.sigma_m:.1f} m exceeds estimator.max_sigma_m {ceiling:g} m"))
        tile_id = int(self._tile_id[est.best_row]) if est.best_row >= 0 else -1
        return Fix(
            status=est.status, lat=float(lat), lon=float(lon), easting=e, northing=n,
            sigma_m=est.sigma_m if est.status == "fix" else float("nan"), cov_en=est.cov_en, score=est.score,
            heading_deg=heading, reason=est.reason, tile_id=tile_id, retrieval=est,
        )


def _tilt_offset(alt: float, heading: float, priors: Priors) -> tuple[float, float] | None:
    """Ground offset (east, north metres) from the drone to the point under the image centre for the attitude
    prior, or None when that centre ray does not hit the ground (pitch/roll at or beyond the horizon, e.g. a bad
    IMU message) or the offset is not finite."""
    pitch, roll = priors.finite("pitch_deg") or 0.0, priors.finite("roll_deg") or 0.0
    # Near the horizon the offset grows like tan(tilt): a small attitude error becomes kilometres, and the nadir
    # tiles cannot match such a view anyway. Beyond this tilt the position is unknown rather than confidently wrong.
    if math.hypot(pitch, roll) > _MAX_TILT_DEG:
        return None
    pose = CameraPose(0.0, 0.0, alt, heading, pitch, roll)
    try:
        de, dn = image_to_ground(pose, _UNIT_CAMERA, _UNIT_CAMERA.width_px / 2.0, _UNIT_CAMERA.height_px / 2.0)
    except GeoError:
        return None
    de, dn = float(de), float(dn)
    return (de, dn) if math.isfinite(de) and math.isfinite(dn) else None


_MAX_TILT_DEG = 60.0


def _no_ground_reason(priors: Priors) -> str:
    pitch, roll = priors.finite("pitch_deg") or 0.0, priors.finite("roll_deg") or 0.0
    return (f"attitude prior (pitch {pitch:g} deg, roll {roll:g} deg): the image centre is more than "
            f"{_MAX_TILT_DEG:g} deg from nadir or misses the ground, so the drone's position is unknown")


# Only the ray through the principal point is used for the tilt offset, so any intrinsics do.
_UNIT_CAMERA = CameraModel(width_px=100, height_px=100, hfov_deg=60.0)
