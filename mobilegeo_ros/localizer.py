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
from, read window by window). The verified candidate with the most inliers gives a metre-level position, the heading
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

import numpy as np
from pyproj import CRS, Transformer

from mobilegeo_ros.config import Config, MapConfig, from_dict
from mobilegeo_ros.estimator.pose import (
    CameraPoseEstimate, intrinsics, pose_from_homography_estimate, solve_camera_pose,
)
from mobilegeo_ros.estimator.refine import (
    Choice, Refiner, Registration, calibrated_covariance, choose, expected_gsd,
)
from mobilegeo_ros.estimator.refine import map_identity as refine_map_identity
from mobilegeo_ros.estimator.retrieval import RetrievalEstimate, estimate
from mobilegeo_ros.estimator.status import FixStatus, RegistrationOutcome, decide_status
from mobilegeo_ros.geo.imageops import center_square, rotate_to_heading
from mobilegeo_ros.geo.raster import GeoError, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, image_to_ground
from mobilegeo_ros.geo.windowed import WindowedMap, opens_windowed
from mobilegeo_ros.index.facts import IndexFacts, use_runtime_config
from mobilegeo_ros.index.tile_index import (
    IndexMismatchError,
    TileIndex,
    group_by_tile,
    identity_differences,
)
from mobilegeo_ros.model import EmbeddingModel, load_model
from mobilegeo_ros.util.files import file_sha256


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

#: Physically possible values of the priors a user or a photo gives: (low, high, closed interval?). A value outside
#: is a typing or metadata mistake, refused (:func:`prior_range_error`) instead of being silently ignored.
PRIOR_LIMITS = {"yaw_deg": (-360.0, 360.0, True), "pitch_deg": (-90.0, 90.0, False),
                "roll_deg": (-90.0, 90.0, False), "altitude_m": (0.0, 100000.0, False),
                "hfov_deg": (0.0, 180.0, False), "lat": (-90.0, 90.0, True), "lon": (-180.0, 180.0, True),
                "radius_m": (0.0, 1.0e7, False)}


def prior_range_error(name: str, value: float) -> str:
    """Why ``value`` is not a possible value of the prior ``name`` (a :class:`Priors` field), or "" when it is:
    "not a finite number" or "outside the possible range (0, 180)" (interval of :data:`PRIOR_LIMITS`)."""
    if not math.isfinite(value):
        return "not a finite number"
    lo, hi, closed = PRIOR_LIMITS[name]
    if lo <= value <= hi if closed else lo < value < hi:
        return ""
    return f"outside the possible range {f'[{lo:g}, {hi:g}]' if closed else f'({lo:g}, {hi:g})'}"


@dataclass
class SearchReport:
    """Where the retrieval of a fix searched (diagnostics). ``mode``: ``index`` (the whole index: no position prior,
    or the rest of it after the gate and its widenings), ``gate`` (only the tiles within the prior's radius) or
    ``widened`` (a ring around the gate, after nothing verified inside it). ``steps``: searches made (1 = the first);
    ``radius_m``: the searched radius around the prior position (inf: no limit); ``rows``: index rows scored in
    the step that gave the fix; ``rows_total``: in all steps."""

    mode: str
    steps: int
    radius_m: float
    rows: int
    rows_total: int


#: A position gate with at most this many rows (or a quarter of the index) is searched exhaustively on its rows.
_SUBSET_SEARCH_ROWS = 50_000


@dataclass
class Fix:
    """One frame's localization on its own (no track). Positions in the index's map CRS (metres) and WGS84
    (degrees): the drone's nadir point when the priors or the solved camera pose place it, else the ground point
    under the image centre (then the sigma covers the unknown tilt)."""

    status: FixStatus
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
    altitude_m: float = math.nan  # above ground: solved camera pose, else the prior, else NaN
    pose: CameraPoseEstimate | None = None  # full camera pose solved on the map (registration + intrinsics)
    registration: Registration | None = field(default=None, repr=False)  # the verified registration (homography)
    retrieval: RetrievalEstimate | None = field(default=None, repr=False)
    search: SearchReport | None = None  # where retrieval searched (position gate, widening, whole index)

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        out = {
            "status": self.status.value, "lat": self.lat, "lon": self.lon, "easting": self.easting,
            "northing": self.northing, "sigma_m": self.sigma_m, "score": self.score, "heading_deg": self.heading_deg,
            "tile_id": self.tile_id, "views_used": self.views_used, "latency_ms": 1e3 * self.latency_s,
            "refined": self.refined, "inliers": self.inliers, "reason": self.reason,
            "altitude_m": self.altitude_m if math.isfinite(self.altitude_m) else None,
        }
        if self.pose is not None:
            out.update(pitch_deg=self.pose.pitch_deg, roll_deg=self.pose.roll_deg)
        if self.search is not None:
            out.update(search_mode=self.search.mode, search_steps=self.search.steps,
                       search_radius_m=self.search.radius_m if math.isfinite(self.search.radius_m) else None,
                       search_rows=self.search.rows)
        return out


def no_fix(reason: str, score: float = math.nan, heading_deg: float | None = None, tile_id: int = -1,
           retrieval: RetrievalEstimate | None = None) -> Fix:
    """A :class:`Fix` with status ``no_fix`` (every coordinate NaN)."""
    return Fix(status=FixStatus.NO_FIX, lat=math.nan, lon=math.nan, easting=math.nan, northing=math.nan,
               sigma_m=math.nan, cov_en=np.full((2, 2), np.nan), score=score, heading_deg=heading_deg, reason=reason,
               tile_id=tile_id, retrieval=retrieval)


class Localizer:
    """Camera views → :class:`Fix`. Thread-compatible: one call at a time per instance."""

    def __init__(self, index: TileIndex, model: EmbeddingModel, cfg: Config, index_dir: str | Path | None = None):
        self.index, self.model, self.cfg = index, model, cfg
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self._refiners: dict[int, Refiner] = {}  # per map file (source) of the index, made on first use
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
        # the farthest any tile reaches from any point of the index: a gate this wide holds the whole index
        self._index_reach_m = float(math.hypot(self._e.max() - self._e.min(), self._n.max() - self._n.min())
                                    + self._size.max()) if len(self._e) else 0.0

    @classmethod
    def from_files(cls, index_dir: str | Path, cfg: Config | None = None) -> Localizer:
        """Load the index at ``index_dir`` and the model named by ``cfg.model``; refuse a model/index mismatch.

        Without ``cfg`` the build-time settings the index records (map, model, index: ``index.json``) and the
        default runtime settings are used.
        """
        index = TileIndex.load(index_dir)
        if cfg is None:
            cfg = IndexFacts.read(index_dir).build_config()
        use_runtime_config(index, cfg)  # a config contradicting the index is refused; its search knobs apply
        model = load_model(cfg.model)
        diffs = identity_differences(index.identity, model.identity())
        if diffs:
            raise IndexMismatchError(f"index {str(index_dir)!r} was built with a different embedding model: "
                                     f"{'; '.join(diffs)}. Rebuild it with `mobilegeo build-index` or configure "
                                     "the model it was built with")
        return cls(index, model, cfg, index_dir=index_dir)

    # ---------------------------------------------------------------------------------------------------------------
    def map_to_wgs84(self, easting: float, northing: float) -> tuple[float, float]:
        """Map CRS metres → ``(lat, lon)`` degrees (NaN off the projection's domain)."""
        lon, lat = self._to_wgs84.transform(easting, northing)
        return float(lat), float(lon)

    def wgs84_to_map(self, lat: float, lon: float) -> tuple[float, float]:
        """``(lat, lon)`` degrees → map CRS ``(easting, northing)`` metres."""
        e, n = self._from_wgs84.transform(lon, lat)
        return float(e), float(n)

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Embed the central squares of camera views: list of H×W×3 uint8 RGB → N×D float32 (north-up unknown)."""
        return self.model.embed([center_square(im) for im in images])

    def localize(self, images: list[np.ndarray], priors: Priors | None = None, refine: bool = True) -> Fix:
        """Localize one window of views (all assumed to see about the same place; the newest is last, and it is the
        one registered against the map when ``refine`` and ``refine.enabled``)."""
        t0 = time.perf_counter()
        priors = priors or Priors()
        queries, angles = self.query_vectors(images, priors)
        fix = self.localize_queries(queries, priors, images[-1] if refine else None, angles)
        fix.latency_s = time.perf_counter() - t0
        fix.views_used = len(images)
        return fix

    def query_vectors(self, images: list[np.ndarray], priors: Priors | None = None
                      ) -> tuple[np.ndarray, list[float] | None]:
        """The search's query vectors for a window of views (``Q×D`` float32, unit rows) and the compass heading each
        assumes: one fused vector and None for ``gallery_rotations``/``none``; for ``query_rotations`` one per
        heading hypothesis (the yaw prior, else ``index.rotations`` evenly spaced), every view turned north-up by
        it."""
        if not images:
            raise ValueError("localize() needs at least one image")
        priors = priors or Priors()
        if self.cfg.index.heading != "query_rotations":
            return self._fuse(self.embed(images))[None], None
        yaw = priors.finite("yaw_deg")
        squares = [center_square(im) for im in images]
        angles = [yaw] if yaw is not None else list(np.arange(self.cfg.index.rotations) * 360.0
                                                     / self.cfg.index.rotations)
        queries = np.stack([self._fuse(self.model.embed([rotate_to_heading(sq, a) for sq in squares]))
                            for a in angles])
        return queries, [float(a) for a in angles]

    def localize_queries(self, queries: np.ndarray, priors: Priors | None = None, image: np.ndarray | None = None,
                         query_angles: list[float] | None = None) -> Fix:
        """Search the index with query vectors from :meth:`query_vectors` and finish the fix (``image``: the newest
        view, registered against the map when given and ``refine.enabled``). ``views_used`` is left to the caller,
        which knows how many views the queries fused."""
        t0 = time.perf_counter()
        fix = self._search_and_finish(np.asarray(queries, np.float32), priors or Priors(), image,
                                      query_angles=query_angles)
        fix.latency_s = time.perf_counter() - t0
        return fix

    def localize_embeddings(self, embeddings: np.ndarray, priors: Priors | None = None,
                            image: np.ndarray | None = None) -> Fix:
        """Localize from already computed view embeddings (N×D; rows from :meth:`embed`). ``image`` (H×W×3 uint8
        RGB, the newest view) is registered against the map when given and ``refine.enabled``."""
        t0 = time.perf_counter()
        if self.cfg.index.heading == "query_rotations":
            raise ValueError("index.heading=query_rotations needs the images: call localize()")
        priors = priors or Priors()
        fix = self._search_and_finish(self._fuse(np.asarray(embeddings, np.float32))[None], priors, image)
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
        return None if mask.all() else mask

    def search_gate(self, priors: Priors) -> tuple[float, float, float] | None:
        """``(easting, northing, radius_m)`` of the search gate the priors give (a position prior ``lat``/``lon`` with
        ``radius_m``: the last GNSS fix, the track, a user's area), or None (search the whole index)."""
        lat, lon, radius = priors.finite("lat"), priors.finite("lon"), priors.finite("radius_m")
        if lat is None or lon is None or radius is None:
            return None
        e0, n0 = self._from_wgs84.transform(lon, lat)
        if not (math.isfinite(e0) and math.isfinite(n0)):
            return None
        return float(e0), float(n0), float(radius)

    def gate_radii(self, radius_m: float) -> list[float]:
        """The radii (metres) searched in turn from a gate of ``radius_m``: the gate, then ``estimator.
        gate_widen_steps`` rings each ``estimator.gate_widen_factor`` times wider (those already covering the whole
        index are dropped), then the rest of the index (``inf``); only the gate with ``estimator.gate_widening``
        false."""
        ec = self.cfg.estimator
        if not ec.gate_widening:
            return [radius_m]
        reach = self._index_reach_m
        radii = [radius_m]
        for _ in range(ec.gate_widen_steps):
            nxt = max(radii[-1], 1.0) * ec.gate_widen_factor
            if nxt >= reach:
                break
            radii.append(nxt)
        return radii + [math.inf]

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
        if mask is not None:
            allowed = np.flatnonzero(mask)
            if len(allowed) <= max(_SUBSET_SEARCH_ROWS, n // 4):
                # a gate: score exactly the rows inside it (cost grows with the gate, not with the index)
                scores, rows = self.index.search_rows(query, allowed, k * copies * 4)
                merged = group_by_tile(scores[None], rows[None], self._tile_id, k)[0]
                if len(merged) >= k or len(allowed) <= k * copies * 4:
                    return (np.array([sc for _, sc in merged], np.float64),
                            np.array([r for r, _ in merged], np.int64))
                scores, rows = self.index.search_rows(query, allowed, len(allowed))
                merged = group_by_tile(scores[None], rows[None], self._tile_id, k)[0]
                return (np.array([sc for _, sc in merged], np.float64), np.array([r for r, _ in merged], np.int64))
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

    def _search_and_finish(self, queries: np.ndarray, priors: Priors, image: np.ndarray | None,
                           query_angles: list[float] | None = None) -> Fix:
        """Retrieval (+ registration of ``image``) inside the search gate of the priors, widening ring by ring
        (:meth:`gate_radii`) while no registration verifies. Without a gate, one search of the whole index. Without
        a registration (no ``image``, or ``refine.enabled`` false) the gate alone is searched: a confident retrieval
        match outside a prior that found nothing similar inside is more often a look-alike than the place, and
        nothing would verify it. The fix's :attr:`Fix.search` says where it was found; when no step verifies, the
        gate's own result is returned (its search report counts every step)."""
        gate = self.search_gate(priors)
        if gate is None:
            est = self._localize_queries(queries, priors, query_angles)
            fix = self._finish(est, priors, image)
            fix.search = SearchReport("index", 1, math.inf, self.index.ntotal, self.index.ntotal)
            return fix
        e0, n0, r0 = gate
        dist = np.hypot(self._e - e0, self._n - n0) - self._size / 2.0  # tile centre within radius + half a tile
        registering = image is not None and self.cfg.refine.enabled
        first: Fix | None = None
        inner = np.zeros(len(dist), bool)
        radii = self.gate_radii(r0) if registering else [r0]
        total = 0
        for step, radius in enumerate(radii):
            inside = dist <= radius
            ring = inside & ~inner
            inner = inside
            total += int(ring.sum())
            if not ring.any():
                continue
            est = self._localize_queries(queries, priors, query_angles, ring)
            fix = self._finish(est, priors, image)
            mode = "gate" if step == 0 else ("index" if math.isinf(radius) else "widened")
            fix.search = SearchReport(mode, step + 1, radius, int(ring.sum()), total)
            if fix.status is FixStatus.VERIFIED or not registering:
                return self._note_search(fix)
            if first is None:
                first = fix
        if first is None:  # no tile anywhere (cannot happen with a non-empty index)
            first = no_fix("no tiles to search")
        first.search = dataclasses.replace(first.search or SearchReport("gate", 0, r0, 0, 0), steps=len(radii),
                                           rows_total=total)
        return self._note_search(first)

    @staticmethod
    def _note_search(fix: Fix) -> Fix:
        """Append where a gated search found (or did not find) the fix to its reason (the node's diagnostics)."""
        sr = fix.search
        radius = "the rest of the index" if math.isinf(sr.radius_m) else f"{sr.radius_m:.0f} m"
        note = f"search {sr.mode} ({radius}, {sr.rows} rows, step {sr.steps})"
        fix.reason = f"{fix.reason}; {note}" if fix.reason else note
        return fix

    def _localize_queries(self, queries: np.ndarray, priors: Priors, query_angles: list[float] | None = None,
                          region: np.ndarray | None = None) -> RetrievalEstimate:
        """Search each query (Q×D; Q > 1 only for query rotations) among the rows of ``region`` (boolean mask over
        the index rows; None: all) and estimate from the best-scoring one."""
        best: tuple[float, np.ndarray, np.ndarray, float | None] | None = None
        for qi, q in enumerate(queries):
            angle = query_angles[qi] if query_angles else None
            mask = self._allowed_rows(priors, angle)
            if region is not None:
                mask = region if mask is None else mask & region
            scores, rows = self._search(q, mask)
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

    @property
    def sources(self) -> list[dict]:
        """The map files of the index (``index.json`` ``map.sources``; one entry, the map itself, for a one-file
        map): path, name, sha256, size, gsd and bounds in the index CRS."""
        return self.index.map_info.get("sources") or [self.index.map_info]

    def source_at(self, easting: float, northing: float) -> int:
        """The first map file whose bounds hold the point (the file its tiles come from there); 0 if none does."""
        for k, src in enumerate(self.sources):
            bounds = src.get("bounds")
            if bounds and bounds[0] <= easting <= bounds[2] and bounds[1] <= northing <= bounds[3]:
                return k
        return 0

    def _resolve_map_path(self, source: int = 0) -> Path:
        """The orthophoto to register against: ``refine.map_path`` (one-file maps), else the map file recorded in the
        index, else a file of the same name and content (sha256) next to the index directory (an index moved
        together with its map)."""
        if self.cfg.refine.map_path and source == 0:
            path = Path(self.cfg.refine.map_path)
            if not path.is_file():
                raise GeoError(f"refine.map_path {str(path)!r} does not exist")
            return path
        info = self.sources[source]
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

    def refiner(self, source: int = 0) -> Refiner:
        """The :class:`Refiner` on map file ``source`` of the index (read on the first call, with the map settings
        the index was built with, e.g. its pansharpening; a map's other files on the grid of the index CRS)."""
        if source not in self._refiners:
            if source == 0 and self.map_path is None:
                self.map_path = self._resolve_map_path()
            path = self.map_path if source == 0 else self._resolve_map_path(source)
            stored = self.index.map_info.get("build_config", {}).get("map")
            map_cfg = from_dict({"map": stored}).map if stored else MapConfig(**vars(self.cfg.map))
            # Map-side features are cached beside the index (INDEX_DIR/map_features, a sub-folder per further map
            # file), fingerprinted by the map file's content and the settings it is read with; without an index
            # folder, in memory only.
            cache_dir = map_identity = None
            if self.index_dir is not None:
                recorded = self.sources[source].get("sha256")
                custom = self.cfg.refine.map_path and source == 0
                sha = recorded if recorded and not custom else file_sha256(path)
                cache_dir = self.index_dir / "map_features"
                if source > 0:
                    cache_dir = cache_dir / f"source-{source}"
                map_identity = refine_map_identity(sha, map_cfg)
            # The map is read window by window (bounded memory whatever its size); a pansharpened map is read whole.
            target = CRS.from_wkt(self.index.crs_wkt) if source > 0 else None
            source_map = WindowedMap(path, map_cfg, target_crs=target) if opens_windowed(map_cfg) \
                else read_orthophoto(path, map_cfg)
            self._refiners[source] = Refiner(source_map, self.cfg.refine, cache_dir=cache_dir,
                                             map_identity=map_identity)
        return self._refiners[source]

    def map_loads(self) -> int:
        """One-time map loads done so far, over the index's map files: 1 for reading a file for registration, plus one
        per map-feature chunk file read from ``INDEX_DIR/map_features`` and one per map block whose keypoints were
        detected; 0 before the first registration. A frame during which this grows paid a start-up cost
        (:meth:`mobilegeo_ros.tracker.Tracker.warm_up` pays them before the first frame)."""
        return sum(1 + r.map_features.chunks_loaded + r.map_features.blocks_computed
                   for r in self._refiners.values())

    def close(self) -> None:
        """Close the map files opened for registration (idempotent; a later registration opens them again)."""
        for refiner in self._refiners.values():
            refiner.close()
        self._refiners.clear()

    def _finish(self, est: RetrievalEstimate, priors: Priors, image: np.ndarray | None) -> Fix:
        """Retrieval estimate (+ the newest view to register, or None) -> :class:`Fix`, status by
        :func:`mobilegeo_ros.estimator.status.decide_status`."""
        fix = self._to_fix(est, priors)
        rc = self.cfg.refine
        outcome, choice = RegistrationOutcome.NONE, None
        # (a status changed by _to_fix means the attitude prior leaves no position to refine)
        if image is not None and rc.enabled and est.ranked_rows and fix.status.is_fix:
            choice = self._register(image, est, priors)
            outcome = {"refined": RegistrationOutcome.VERIFIED, "ambiguous": RegistrationOutcome.AMBIGUOUS}.get(
                choice.status, RegistrationOutcome.UNVERIFIED)
            if outcome is RegistrationOutcome.VERIFIED:
                refined = self._refined_fix(est, choice, priors, image.shape[1], image.shape[0])
                if refined.status.is_fix:
                    return refined
                outcome, choice = RegistrationOutcome.UNVERIFIED, Choice("unverified", None, refined.reason)
        status = decide_status(outcome, tracked=False, retrieval_fix=fix.status.is_fix,
                               refine_enabled=rc.enabled and image is not None, fallback=rc.fallback)
        if status is FixStatus.NO_FIX:
            return no_fix(choice.reason if choice is not None else fix.reason, est.score, fix.heading_deg,
                          fix.tile_id, est)
        if choice is not None:
            fix.reason = f"{fix.reason}; {choice.reason}" if fix.reason else f"retrieval only: {choice.reason}"
        fix.status = status
        return fix

    def camera_matrix(self, width_px: int, height_px: int, priors: Priors) -> np.ndarray | None:
        """3×3 intrinsics of a ``width_px`` × ``height_px`` view from the field-of-view prior (camera_info), or
        None when it is unknown."""
        hfov = priors.finite("hfov_deg")
        return None if hfov is None else intrinsics(width_px, height_px, hfov)

    def register_near(self, image: np.ndarray, priors: Priors, center_e: float, center_n: float,
                      heading_deg: float | None, half_m: float, gsd_m: float | None = None) -> Choice:
        """Register ``image`` against ONE map window (square of half side ``half_m`` metres around ``(center_e,
        center_n)``), no retrieval: the tracker's gated keyframe registration. ``heading_deg`` is the heading
        hypothesis (turns the query north-up for matchers that are not rotation invariant); ``gsd_m`` the view's
        ground resolution at its centre when known (metres per pixel, e.g. from the track), else from the priors."""
        refiner = self.refiner(self.source_at(center_e, center_n))
        h, w = image.shape[:2]
        if gsd_m is not None and math.isfinite(gsd_m) and gsd_m > 0:
            gsd, known = gsd_m, True
        else:
            gsd, known = expected_gsd(w, h, priors.finite("altitude_m"), priors.finite("hfov_deg"),
                                      float(self._levels.min()))
        if heading_deg is None or not math.isfinite(heading_deg):
            heading_deg = priors.finite("yaw_deg")
        query = refiner.prepare(image, gsd, known, heading_deg=heading_deg)
        regs = refiner.register_many(query, [(center_e, center_n, half_m, -1)], priors.finite("yaw_deg"))
        return choose(regs, self.cfg.refine)

    def _register(self, image: np.ndarray, est: RetrievalEstimate, priors: Priors) -> Choice:
        """Register ``image`` against the map windows of the best ``refine.top_k`` retrieved tiles.

        Rotation-invariant matchers (SIFT, ORB, AKAZE) detect the view once. Matchers that are not (XFeat) turn the
        view north-up by a heading hypothesis per candidate: the yaw prior when known, else the rotation of the
        candidate's gallery copy (``index.heading: gallery_rotations``; with ``refine.heading_hypotheses: 3`` also
        that rotation ± one gallery step), else the retrieval's heading estimate, else north-up (0°). Candidates
        sharing a hypothesis share one query detection.
        """
        t0 = time.perf_counter()
        rc = self.cfg.refine
        rows = est.ranked_rows[: rc.top_k]
        h, w = image.shape[:2]
        gsd, known = expected_gsd(w, h, priors.finite("altitude_m"), priors.finite("hfov_deg"),
                                  float(self._size[rows[0]]))
        windows: list[tuple[float, float, float, int]] = []  # (centre e, centre n, tile side m, row)
        for r in rows:
            e, n, size = float(self._e[r]), float(self._n[r]), float(self._size[r])
            # Another pyramid level's tile at about the same place searches the same ground: skip it.
            if any(math.hypot(e - we, n - wn) < 0.25 * size for we, wn, _, _ in windows):
                continue
            windows.append((e, n, size, int(r)))
        # (map file, heading hypothesis (None: no rotation)) -> the candidate windows registered with it, best
        # candidate first. A map of several files registers each candidate on the file its tile was cut from.
        groups: dict[tuple[int, float | None], list[tuple[float, float, float, int]]] = {}
        source = self.index.columns["source"]
        for win in windows:
            refiner = self.refiner(int(source[win[3]]))
            for hyp in self._heading_hypotheses(refiner, est, priors, win[3]):
                groups.setdefault((int(source[win[3]]), hyp), []).append(win)
        deadline = t0 + rc.max_time_s if rc.max_time_s > 0 else None
        regs = []
        for (src, hyp), group in groups.items():
            refiner = self.refiner(src)
            if deadline is not None and regs and time.perf_counter() > deadline:
                regs += [Registration(False, "time budget spent", candidate=r) for *_, r in group]
                continue
            query = refiner.prepare(image, gsd, known, heading_deg=hyp)
            searched = [(e, n, refiner.window_half_m(query, size), r) for e, n, size, r in group]
            regs += refiner.register_many(query, searched, priors.finite("yaw_deg"), deadline)
        return choose(regs, rc)

    def _heading_hypotheses(self, refiner: Refiner, est: RetrievalEstimate, priors: Priors, row: int
                            ) -> list[float | None]:
        """Compass headings (degrees) to turn the view north-up with before registering it against candidate
        ``row``; ``[None]`` (no rotation) for a rotation-invariant matcher. See :meth:`_register`."""
        if refiner.matcher.rotation_invariant:
            return [None]
        yaw = priors.finite("yaw_deg")
        if yaw is not None:
            return [yaw % 360.0]
        if self.cfg.index.heading == "gallery_rotations" and self.cfg.index.rotations > 1:
            base = float(self._rot[row]) % 360.0
            if self.cfg.refine.heading_hypotheses >= 3:
                step = 360.0 / self.cfg.index.rotations
                return [base, (base + step) % 360.0, (base - step) % 360.0]
            return [base]
        return [est.heading_deg % 360.0 if est.heading_deg is not None else 0.0]

    def _refined_fix(self, est: RetrievalEstimate, choice: Choice, priors: Priors, width_px: int,
                     height_px: int) -> Fix:
        """The verified registration -> a fix at the drone's nadir point (see :meth:`drone_position`)."""
        reg = choice.best
        placed = self.drone_position(reg, priors, width_px, height_px)
        if isinstance(placed, str):
            return no_fix(placed, est.score, priors.finite("yaw_deg"), retrieval=est)
        e, n, cov, alt, pose = placed
        lon, lat = self._to_wgs84.transform(e, n)
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return no_fix(f"refined position ({e:.6g}, {n:.6g}) m has no WGS84 coordinates (off the map "
                          "projection)", est.score, retrieval=est)
        sigma = float(math.sqrt(max(np.trace(cov), 0.0) / 2.0))
        # A yaw prior stays the published heading (the registration was verified against it); without one the
        # registration's heading is published.
        yaw = priors.finite("yaw_deg")
        return Fix(status=FixStatus.VERIFIED, lat=float(lat), lon=float(lon), easting=e, northing=n, sigma_m=sigma,
                   cov_en=cov, score=est.score, heading_deg=reg.heading_deg if yaw is None else yaw,
                   registered_heading_deg=reg.heading_deg, reason=f"refined: {choice.reason}",
                   tile_id=int(self._tile_id[reg.candidate]) if reg.candidate >= 0 else -1, refined=True,
                   inliers=reg.inliers, altitude_m=alt, pose=pose, registration=reg, retrieval=est)

    def drone_position(self, reg: Registration, priors: Priors, width_px: int, height_px: int
                       ) -> tuple[float, float, np.ndarray, float, CameraPoseEstimate | None] | str:
        """Where the drone is, from a verified registration (or a track's homography): ``(easting, northing,
        cov_en 2×2 m², altitude above ground m, solved camera pose or None)``, or the reason (a string) why it
        cannot be placed.

        The camera pose is solved whenever the intrinsics are known (``hfov_deg``): from the inlier
        correspondences (:func:`mobilegeo_ros.estimator.pose.solve_camera_pose`), or in closed form from the
        homography alone (a tracked frame). Then:

        1. Attitude prior (IMU pitch/roll) known: the registered image-centre point moved back to the drone by
           that tilt (an IMU's ~1° beats the tilt a cross-date homography gives: measured, docs/tracker.md); the
           altitude is the prior's, else the solved one; sigma adds ``altitude·tan(refine.attitude_sigma_deg)``.
        2. No attitude prior, pose solved: the pose's nadir point, with the pose covariance scaled and floored
           like a registration's (``refine.sigma_scale``, ``refine.sigma_floor_m``); for a track's homography the
           track covariance.
        3. Neither: the image centre, with ``altitude·tan(tracker.max_tilt_deg)`` of sigma covering the unknown
           tilt (the altitude from the prior, else bounded by the narrowest plausible lens).
        """
        rc = self.cfg.refine
        alt_prior = priors.finite("altitude_m")
        k = self.camera_matrix(width_px, height_px, priors)
        pose, pose_cov = None, None
        if k is not None:
            try:
                if reg.inlier_view_px is not None and len(reg.inlier_view_px) >= 6:
                    pose = solve_camera_pose(reg.inlier_view_px, reg.inlier_map_en, k, reg.homography)
                    pose_cov = calibrated_covariance(pose.cov_en, rc)
                    # The residuals of one registration underrate the tilt error (correlated parallax and date
                    # changes): altitude·tan(pose_tilt_sigma_deg) more (measured: docs/tracker.md).
                    pose_cov = pose_cov + np.eye(2) * (pose.altitude_m
                                                       * math.tan(math.radians(rc.pose_tilt_sigma_deg))) ** 2
                elif reg.homography is not None:
                    pose = pose_from_homography_estimate(reg.homography, k)
                    pose_cov = np.array(reg.cov_en, float)
            except ValueError:
                pose = None
            if pose is not None and pose.tilt_deg > self.cfg.tracker.max_tilt_deg:
                pose = None  # implausible for a drone camera: a degenerate solution, not a pose
        attitude_known = priors.finite("pitch_deg") is not None or priors.finite("roll_deg") is not None
        if pose is not None and not attitude_known:
            return pose.easting, pose.northing, pose_cov, pose.altitude_m, pose
        e, n = reg.center_e, reg.center_n
        cov = np.array(reg.cov_en, float)
        alt = alt_prior if alt_prior is not None else (pose.altitude_m if pose is not None else None)
        if alt is None and k is not None:
            alt = reg.gsd_m * float(k[0, 0])  # metres per pixel at the centre × focal length
        known_alt = alt
        if alt is None:
            # Neither altitude nor intrinsics: bound the altitude by the narrowest plausible lens (the registered
            # ground resolution times its focal length), so the tilt allowance below still covers the error. The
            # bound is no estimate: the altitude stays unknown (NaN).
            alt = reg.gsd_m * (width_px / 2.0) / math.tan(math.radians(_NARROWEST_HFOV_DEG) / 2.0)
        if attitude_known:
            offset = _tilt_offset(alt, reg.heading_deg, priors)
            if offset is None:
                return _no_ground_reason(priors)
            reach = 10.0 * reg.gsd_m * math.hypot(width_px, height_px)
            if math.hypot(*offset) > reach:
                # e.g. a corrupt altitude message: the tilt would put the drone far beyond anything the camera
                # footprint allows; unknown, rather than confidently kilometres away
                return (f"the altitude prior {alt:.6g} m and the tilt put the drone {math.hypot(*offset):.0f} m "
                        f"from the registered view (more than 10 footprints, {reach:.0f} m): inconsistent priors")
            e, n = e - offset[0], n - offset[1]
            tilt_sigma = alt * math.tan(math.radians(rc.attitude_sigma_deg))
        else:
            tilt_sigma = alt * math.tan(math.radians(self.cfg.tracker.max_tilt_deg))
        return e, n, cov + np.eye(2) * tilt_sigma**2, math.nan if known_alt is None else float(known_alt), pose

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
            status=FixStatus.RETRIEVAL if est.status == "fix" else FixStatus.NO_FIX, lat=float(lat), lon=float(lon),
            easting=e, northing=n,
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
#: Without an altitude prior or camera intrinsics, the altitude is bounded assuming no lens narrower than this (deg).
_NARROWEST_HFOV_DEG = 30.0


def _no_ground_reason(priors: Priors) -> str:
    pitch, roll = priors.finite("pitch_deg") or 0.0, priors.finite("roll_deg") or 0.0
    return (f"attitude prior (pitch {pitch:g} deg, roll {roll:g} deg): the image centre is more than "
            f"{_MAX_TILT_DEG:g} deg from nadir or misses the ground, so the drone's position is unknown")


# Only the ray through the principal point is used for the tilt offset, so any intrinsics do.
_UNIT_CAMERA = CameraModel(width_px=100, height_px=100, hfov_deg=60.0)
