"""Geometric refinement and verification of retrieved tiles: local features + a homography against the map.

Retrieval (:mod:`.retrieval`) says *which tile* the camera sees; this module says *where exactly* and *whether that is
true*. For each of the top retrieved tiles the camera view is registered against the orthophoto window around it:

1. Scale: the view is resized to the ground resolution of the map pyramid level it is matched on. Its own ground
   resolution (metres per image pixel at the image centre) comes from the altitude prior and the field of view when
   both are known, else from the matched tile (its side over the side of the view's central square, which is what
   the embedding compared).
2. Features: OpenCV SIFT, ORB or AKAZE on contrast-equalised grey images (CLAHE, which evens out the
   date-to-date lighting). Map keypoints are detected once per square block of a pyramid level and cached, so a
   query only pays for the view's keypoints and the descriptor matching of the windows it visits.
3. Matching: brute-force k=2 nearest neighbours, Lowe's ratio test, then a keypoint-orientation consistency filter
   (all true matches rotate by the same angle, the camera heading).
4. Robust homography (``cv2.USAC_MAGSAC`` or ``cv2.RANSAC``) from view pixels to map-level pixels, composed into
   ``H``: view pixel ``(u, v, 1)`` (continuous, centre of pixel (0, 0) at (0.5, 0.5)) -> map ``(e, n, 1)`` (metres,
   the orthophoto's CRS).
5. Outputs: the ground point under the image centre ``H @ (W/2, H/2, 1)``, the heading (compass direction of the
   image's up direction at the centre, clockwise from north, degrees), the local ground resolution, and a 2×2
   covariance of the centre point propagated from the inlier residuals through the 8 homography parameters
   (``sigma²·(JᵀJ)⁻¹``), scaled and floored by the configuration because the residuals of a flat-ground model ignore
   building parallax and the correlated errors of another acquisition date.
6. Verification: enough inliers, a large enough inlier share and image coverage, no mirror or fold, a ground
   resolution consistent with the expected one, mild anisotropy, a heading consistent with the yaw prior, and a
   centre inside the searched window. A candidate failing any rule is rejected with the rule in ``reason``.

:func:`choose` picks among the verified candidates by geometric evidence (inlier count) and reports ambiguity when
two verified candidates disagree. :func:`register_window` is the classic baseline (one fixed window around a prior
position, no scale normalisation), used by the benchmarks.

Images are RGB ``uint8`` ``H×W×3``; map positions in metres (easting, northing) of the orthophoto CRS.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from mobilegeo_ros.config import RefineConfig
from mobilegeo_ros.geo.raster import Orthophoto

_NORMS = {"sift": cv2.NORM_L2, "orb": cv2.NORM_HAMMING, "akaze": cv2.NORM_HAMMING}


def make_detector(kind: str, n_features: int):
    """An OpenCV feature detector+descriptor: ``sift`` | ``orb`` | ``akaze`` (``n_features`` caps SIFT/ORB)."""
    if kind == "sift":
        # A lower contrast threshold than the default 0.04 keeps the faint texture of fields and roofs.
        return cv2.SIFT_create(nfeatures=n_features, contrastThreshold=0.02)
    if kind == "orb":
        return cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8, fastThreshold=10, edgeThreshold=15,
                              patchSize=15)
    if kind == "akaze":
        if not hasattr(cv2, "AKAZE_create"):
            raise ValueError(f"refine.features: akaze is not available in this OpenCV build ({cv2.__version__}); "
                             "use sift or orb")
        return cv2.AKAZE_create(threshold=0.0005)
    raise ValueError(f"refine.features: {kind!r} is not one of sift, orb, akaze")


def make_matcher(kind: str):
    """k-NN descriptor matcher: FLANN k-d trees for SIFT's float descriptors (brute force costs ~0.3 s for a view
    against a 400 m window), brute-force Hamming for the binary ones (popcount is fast)."""
    if kind == "sift":
        return cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    return cv2.BFMatcher(_NORMS[kind], crossCheck=False)


@dataclass
class Features:
    """Keypoints of one image: ``xy`` (N×2 float64, continuous pixels of that image), ``angle_deg`` (N,),
    ``size`` (N,) and ``desc`` (N×D, float32 for SIFT, uint8 for binary descriptors)."""

    xy: np.ndarray
    angle_deg: np.ndarray
    size: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)

    def take(self, idx: np.ndarray) -> Features:
        return Features(self.xy[idx], self.angle_deg[idx], self.size[idx], self.desc[idx])

    @staticmethod
    def concat(parts: list[Features], desc_dim: int, desc_dtype: np.dtype) -> Features:
        if not parts:
            return Features(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, desc_dim), desc_dtype))
        return Features(np.concatenate([p.xy for p in parts]), np.concatenate([p.angle_deg for p in parts]),
                        np.concatenate([p.size for p in parts]), np.concatenate([p.desc for p in parts]))


def equalise(rgb: np.ndarray) -> np.ndarray:
    """RGB ``H×W×3 uint8`` -> CLAHE-equalised grey ``H×W uint8`` (the same for the view and the map)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


def detect(detector, grey: np.ndarray, max_features: int, mask: np.ndarray | None = None) -> Features:
    """Keypoints and descriptors of a grey image, strongest ``max_features`` kept; ``xy`` in continuous pixels."""
    kps, desc = detector.detectAndCompute(grey, mask)
    if desc is None or not kps:
        dim = detector.descriptorSize()
        dtype = np.float32 if detector.descriptorType() == cv2.CV_32F else np.uint8
        return Features(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, dim), dtype))
    resp = np.array([k.response for k in kps])
    order = np.argsort(-resp, kind="stable")[:max_features]
    # OpenCV puts pixel centres at integers; the project's continuous coordinates put them at +0.5.
    xy = np.array([kps[i].pt for i in order], np.float64) + 0.5
    return Features(xy, np.array([kps[i].angle for i in order]), np.array([kps[i].size for i in order]),
                    desc[order])


def _level_to_map(ortho: Orthophoto, level: int) -> np.ndarray:
    """3×3: continuous pixel of pyramid ``level`` -> map (e, n, 1)."""
    return ortho.pixel_to_map_matrix() @ Orthophoto.pyramid_to_base(level)


class MapFeatures:
    """Keypoints of an orthophoto, detected lazily per (pyramid level, block) and cached on this object.

    Each block of ``cfg.block_px`` pixels is detected with a padding of 16 pixels (so features at block borders are
    found as on the whole image) and keeps the ``cfg.block_features`` strongest keypoints centred in its core.
    """

    PAD_PX = 16

    def __init__(self, ortho: Orthophoto, cfg: RefineConfig):
        self.ortho, self.cfg = ortho, cfg
        self.detector = make_detector(cfg.features, cfg.block_features)
        self._grey: dict[int, np.ndarray] = {}
        self._blocks: dict[tuple[int, int, int], Features] = {}
        self._dim = self.detector.descriptorSize()
        self._dtype = np.dtype(np.float32 if self.detector.descriptorType() == cv2.CV_32F else np.uint8)

    def grey(self, level: int) -> np.ndarray:
        if level not in self._grey:
            self._grey[level] = equalise(self.ortho.pyramid(level))
        return self._grey[level]

    def _block(self, level: int, bx: int, by: int) -> Features:
        key = (level, bx, by)
        if key not in self._blocks:
            grey = self.grey(level)
            b, p = self.cfg.block_px, self.PAD_PX
            x0, y0 = bx * b, by * b
            xa, ya = max(0, x0 - p), max(0, y0 - p)
            xb, yb = min(grey.shape[1], x0 + b + p), min(grey.shape[0], y0 + b + p)
            f = detect(self.detector, grey[ya:yb, xa:xb], 4 * self.cfg.block_features)
            f.xy += (xa, ya)
            core = (f.xy[:, 0] >= x0) & (f.xy[:, 0] < x0 + b) & (f.xy[:, 1] >= y0) & (f.xy[:, 1] < y0 + b)
            self._blocks[key] = f.take(np.flatnonzero(core)[: self.cfg.block_features])
        return self._blocks[key]

    def window_px(self, level: int, center_e: float, center_n: float, half_m: float
                  ) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the square of half side ``half_m`` metres around a map point in continuous pixels of
        ``level``, clipped to the image (empty when x1 <= x0 or y1 <= y0)."""
        m2l = np.linalg.inv(_level_to_map(self.ortho, level))
        c = m2l @ np.array([center_e, center_n, 1.0])
        half_px = half_m / (self.ortho.gsd_m * 2**level)
        h, w = self.grey(level).shape
        return (max(0.0, c[0] - half_px), max(0.0, c[1] - half_px), min(float(w), c[0] + half_px),
                min(float(h), c[1] + half_px))

    def gather(self, level: int, boxes: list[tuple[float, float, float, float]]) -> Features:
        """Keypoints (continuous pixels of ``level``) inside any of the boxes (from :meth:`window_px`), each once."""
        b = self.cfg.block_px
        keys: dict[tuple[int, int], None] = {}
        for x0, y0, x1, y1 in boxes:
            if x1 > x0 and y1 > y0:
                for by in range(int(y0 // b), int(math.ceil(y1 / b))):
                    for bx in range(int(x0 // b), int(math.ceil(x1 / b))):
                        keys[(bx, by)] = None
        f = Features.concat([self._block(level, bx, by) for bx, by in keys], self._dim, self._dtype)
        inside = np.zeros(len(f), bool)
        for x0, y0, x1, y1 in boxes:
            inside |= (f.xy[:, 0] >= x0) & (f.xy[:, 0] <= x1) & (f.xy[:, 1] >= y0) & (f.xy[:, 1] <= y1)
        return f.take(np.flatnonzero(inside))

    def window(self, level: int, center_e: float, center_n: float, half_m: float) -> Features:
        """Keypoints (continuous pixels of ``level``) inside the square of half side ``half_m`` metres around a
        map point."""
        return self.gather(level, [self.window_px(level, center_e, center_n, half_m)])


@dataclass
class Query:
    """A camera view prepared for registration: keypoints at the matching resolution.

    ``scale``: matching-image pixels per view pixel (continuous coordinates: ``u' = scale*u``); ``level``: the
    map pyramid level it is matched against; ``gsd_m``: the view's ground resolution at the image centre (metres
    per view pixel) used to choose them; ``gsd_known``: whether it came from priors (tighter verification).
    """

    width_px: int
    height_px: int
    features: Features
    scale: float
    level: int
    gsd_m: float
    gsd_known: bool


@dataclass
class Registration:
    """The registration of a view against the map around one candidate (map CRS, metres; degrees)."""

    ok: bool
    reason: str
    center_e: float = math.nan  # ground point under the image centre
    center_n: float = math.nan
    heading_deg: float = math.nan  # compass heading of the image's up direction at the centre
    cov_en: np.ndarray = field(default_factory=lambda: np.full((2, 2), np.nan))  # centre point, m²
    gsd_m: float = math.nan  # registered metres per view pixel at the centre
    inliers: int = 0
    matches: int = 0
    rmse_m: float = math.nan  # inlier residual RMS on the ground
    homography: np.ndarray | None = None  # view pixel (u, v, 1) -> map (e, n, 1)
    candidate: int = -1  # index row of the candidate tile (or -1)
    time_s: float = 0.0

    @property
    def sigma_m(self) -> float:
        return float(math.sqrt(max(np.trace(self.cov_en), 0.0) / 2.0)) if np.all(np.isfinite(self.cov_en)) \
            else math.nan


def expected_gsd(width_px: int, height_px: int, altitude_m: float | None, hfov_deg: float | None,
                 tile_size_m: float | None) -> tuple[float, bool]:
    """(metres per view pixel at the image centre, known from priors?) for a nadir-ish view.

    From the altitude and horizontal field of view when both are known (``altitude / focal_px``), else from the
    matched tile: its side over the side of the view's central square.
    """
    if altitude_m is not None and hfov_deg is not None:
        focal = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return altitude_m / focal, True
    if tile_size_m is None:
        raise ValueError("expected_gsd needs the altitude and field of view, or a tile size")
    return tile_size_m / min(width_px, height_px), False


class Refiner:
    """Registers camera views against an orthophoto (see the module docstring). One call at a time."""

    def __init__(self, ortho: Orthophoto, cfg: RefineConfig):
        self.ortho, self.cfg = ortho, cfg
        self.map_features = MapFeatures(ortho, cfg)
        self.detector = make_detector(cfg.features, cfg.max_features)
        self.matcher = make_matcher(cfg.features)

    def prepare(self, image: np.ndarray, gsd_m: float, gsd_known: bool) -> Query:
        """Resize the view to the ground resolution of the matching map level and detect its keypoints."""
        h, w = image.shape[:2]
        g0 = self.ortho.gsd_m
        level = 0 if gsd_m <= g0 else int(min(self.ortho.max_pyramid_level,
                                              max(0, math.floor(math.log2(gsd_m / g0) + 0.25))))
        # Never upsample the view (no information gained); a slightly finer map level is fine for the features.
        scale = min(1.0, gsd_m / (g0 * 2**level))
        w2, h2 = max(16, int(round(w * scale))), max(16, int(round(h * scale)))
        small = image if (w2, h2) == (w, h) else cv2.resize(image, (w2, h2), interpolation=cv2.INTER_AREA)
        grey = equalise(small)
        # Black pixels are outside the rendered map or above the horizon: no keypoints on their edge.
        valid = (small.max(axis=2) > 0).astype(np.uint8) * 255
        mask = None if valid.all() else cv2.erode(valid, np.ones((7, 7), np.uint8))
        feats = detect(self.detector, grey, self.cfg.max_features, mask)
        return Query(w, h, feats, scale=w2 / w, level=level, gsd_m=gsd_m, gsd_known=gsd_known)

    def window_half_m(self, query: Query, tile_size_m: float) -> float:
        """Half side of the map window around a candidate: tile + view footprint + margin (metres)."""
        half_diag = 0.5 * math.hypot(query.width_px, query.height_px) * query.gsd_m
        return 0.5 * tile_size_m + half_diag * (1.0 if query.gsd_known else 1.5) + self.cfg.window_margin_m

    def register(self, query: Query, center_e: float, center_n: float, half_m: float,
                 yaw_prior_deg: float | None = None, candidate: int = -1) -> Registration:
        """Register ``query`` against the map square of half side ``half_m`` around ``(center_e, center_n)``."""
        return self.register_many(query, [(center_e, center_n, half_m, candidate)], yaw_prior_deg)[0]

    def register_many(self, query: Query, windows: list[tuple[float, float, float, int]],
                      yaw_prior_deg: float | None = None, deadline: float | None = None) -> list[Registration]:
        """Register ``query`` against several map squares ``(centre e, centre n, half side m, candidate row)``.

        The view's descriptors are matched once against the map keypoints of the union of the windows (so
        overlapping candidates cost nothing extra); each window then fits and verifies its own homography from the
        matches that fall inside it, best candidate first. Windows not reached before ``deadline``
        (``time.perf_counter()`` value) are returned as rejected with the reason "time budget".
        """
        t0 = time.perf_counter()
        lvl = query.level
        boxes = [self.map_features.window_px(lvl, e, n, half) for e, n, half, _ in windows]
        union = self.map_features.gather(lvl, boxes)
        matches = ratio_matches(query.features, union, self.matcher, self.cfg.ratio)
        t_match = time.perf_counter() - t0
        out = []
        for (e, n, half, row), (x0, y0, x1, y1) in zip(windows, boxes, strict=True):
            t1 = time.perf_counter()
            if deadline is not None and t1 > deadline and out:
                out.append(Registration(False, "time budget spent", candidate=row))
                continue
            qi, wi = matches
            wxy = union.xy[wi]
            inside = (wxy[:, 0] >= x0) & (wxy[:, 0] <= x1) & (wxy[:, 1] >= y0) & (wxy[:, 1] <= y1)
            reg = fit_and_verify(query.features, union, qi[inside], wi[inside], self.cfg,
                                 view_to_match=np.diag([query.scale, query.scale, 1.0]),
                                 level_to_map=_level_to_map(self.ortho, lvl),
                                 size_px=(query.width_px, query.height_px), expected_gsd_m=query.gsd_m,
                                 gsd_known=query.gsd_known, yaw_prior_deg=yaw_prior_deg, window=(e, n, half))
            reg.candidate = row
            reg.time_s = time.perf_counter() - t1 + (t_match if not out else 0.0)
            out.append(reg)
        return out


def _orientation_filter(dq: np.ndarray, tol_deg: float) -> np.ndarray:
    """Mask of matches whose keypoint rotation (degrees, any range) is within ``tol_deg`` of the dominant one."""
    if tol_deg <= 0 or tol_deg >= 180 or len(dq) == 0:
        return np.ones(len(dq), bool)
    d = np.radians(dq)
    # Dominant rotation: the 10-degree bin with the most votes, smoothed over its neighbours (circular).
    hist = np.bincount((np.degrees(d) % 360.0 // 10).astype(int), minlength=36).astype(float)
    smooth = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))
    mode = math.radians(10.0 * int(np.argmax(smooth)) + 5.0)
    near = np.abs(np.angle(np.exp(1j * (d - mode)))) <= math.radians(tol_deg)
    # Refine the mode with the circular mean of its members.
    if near.any():
        mode = float(np.angle(np.exp(1j * d[near]).mean()))
    return np.abs(np.angle(np.exp(1j * (d - mode)))) <= math.radians(tol_deg)


def centre_covariance(h_map: np.ndarray, src_px: np.ndarray, dst_map: np.ndarray, center_px: tuple[float, float]
                      ) -> tuple[np.ndarray, float]:
    """Covariance (2×2, m²) of ``H(center)`` and the inlier RMS residual (m) from the inlier correspondences.

    Gauss-Newton linearisation of the 8-parameter homography (h33 = 1) in coordinates centred on the image centre
    (view) and on ``H(center)`` (map): ``cov(h) = s²·(JᵀJ)⁻¹`` with ``s² = Σr²/(2N - 8)``; the centre point is
    ``(h13, h23)`` there, so its covariance is read off ``cov(h)``.
    """
    cu, cv = center_px
    c = h_map @ np.array([cu, cv, 1.0])
    ce, cn = c[0] / c[2], c[1] / c[2]
    scale = max(1.0, float(np.abs(src_px - (cu, cv)).max()))
    t_src = np.array([[1.0 / scale, 0.0, -cu / scale], [0.0, 1.0 / scale, -cv / scale], [0.0, 0.0, 1.0]])
    t_dst = np.array([[1.0, 0.0, -ce], [0.0, 1.0, -cn], [0.0, 0.0, 1.0]])
    hn = t_dst @ h_map @ np.linalg.inv(t_src)
    hn = hn / hn[2, 2]
    x = np.c_[src_px, np.ones(len(src_px))] @ t_src.T
    p = x @ hn.T
    pe, pn, pw = p[:, 0], p[:, 1], p[:, 2]
    y = dst_map - (ce, cn)
    r = np.r_[pe / pw - y[:, 0], pn / pw - y[:, 1]]
    n = len(src_px)
    rmse = float(np.sqrt(np.mean(r[:n] ** 2 + r[n:] ** 2)))
    if n <= 4:
        return np.full((2, 2), np.inf), rmse
    s2 = float(np.sum(r**2)) / max(1, 2 * n - 8)
    j = np.zeros((2 * n, 8))
    # parameters: h11 h12 h13 h21 h22 h23 h31 h32
    j[:n, 0:3] = x / pw[:, None]
    j[n:, 3:6] = x / pw[:, None]
    j[:n, 6:8] = -(pe / pw**2)[:, None] * x[:, :2]
    j[n:, 6:8] = -(pn / pw**2)[:, None] * x[:, :2]
    try:
        cov_h = s2 * np.linalg.inv(j.T @ j)
    except np.linalg.LinAlgError:
        return np.full((2, 2), np.inf), rmse
    idx = [2, 5]
    return cov_h[np.ix_(idx, idx)], rmse


def _convex_quad(q: np.ndarray) -> bool:
    """Are the 4 points (in order) a convex, non-degenerate quadrilateral?"""
    cross = []
    for i in range(4):
        a, b = q[(i + 1) % 4] - q[i], q[(i + 2) % 4] - q[(i + 1) % 4]
        cross.append(a[0] * b[1] - a[1] * b[0])
    return all(c > 0 for c in cross) or all(c < 0 for c in cross)


def match_and_verify(qf: Features, wf: Features, matcher, cfg: RefineConfig, view_to_match: np.ndarray,
                     level_to_map: np.ndarray, size_px: tuple[int, int], expected_gsd_m: float | None,
                     gsd_known: bool, yaw_prior_deg: float | None = None,
                     window: tuple[float, float, float] | None = None) -> Registration:
    """Match view keypoints ``qf`` (matching-image pixels) to map keypoints ``wf`` (map-level pixels), fit the
    homography and apply the verification rules.

    ``view_to_match`` (3×3) maps view pixels to matching-image pixels, ``level_to_map`` (3×3) map-level pixels to
    map metres, ``size_px`` = (W, H) of the view. ``window`` = (centre e, centre n, half side m) of the searched
    square: the registered centre must lie inside it.
    """
    qi, wi = ratio_matches(qf, wf, matcher, cfg.ratio)
    return fit_and_verify(qf, wf, qi, wi, cfg, view_to_match, level_to_map, size_px, expected_gsd_m, gsd_known,
                          yaw_prior_deg, window)


def ratio_matches(qf: Features, wf: Features, matcher, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """``(view indices, map indices)`` of the 2-NN matches that pass Lowe's ratio test."""
    if len(qf) < 2 or len(wf) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    knn = matcher.knnMatch(qf.desc, wf.desc, k=2)
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if not pairs:
        return np.zeros(0, int), np.zeros(0, int)
    a = np.array(pairs, int)
    return a[:, 0], a[:, 1]


def fit_and_verify(qf: Features, wf: Features, qi: np.ndarray, wi: np.ndarray, cfg: RefineConfig,
                   view_to_match: np.ndarray, level_to_map: np.ndarray, size_px: tuple[int, int],
                   expected_gsd_m: float | None, gsd_known: bool, yaw_prior_deg: float | None = None,
                   window: tuple[float, float, float] | None = None) -> Registration:
    """Filter the matches ``qf[qi] <-> wf[wi]`` (orientation, scale), fit the homography, verify (see
    :func:`match_and_verify` for the arguments)."""
    w, h = size_px
    if len(qi) < max(4, cfg.min_inliers):
        return Registration(False, f"{len(qi)} ratio-test matches < min_inliers {cfg.min_inliers}", matches=len(qi))
    keep = _orientation_filter(wf.angle_deg[wi] - qf.angle_deg[qi], cfg.orientation_tolerance_deg)
    # Scale consistency: the view was resized to the map level's resolution, so true matches have keypoint sizes
    # within about an octave of the dominant size ratio.
    log_ratio = np.log2(np.maximum(wf.size[wi], 1e-6) / np.maximum(qf.size[qi], 1e-6))
    if keep.any():
        keep &= np.abs(log_ratio - np.median(log_ratio[keep])) <= 1.0
    qi, wi = qi[keep], wi[keep]
    n_matches = len(qi)
    if n_matches < max(4, cfg.min_inliers):
        return Registration(False, f"{n_matches} orientation-consistent matches < min_inliers {cfg.min_inliers}",
                            matches=n_matches)
    src, dst = qf.xy[qi], wf.xy[wi]
    method = cv2.USAC_MAGSAC if cfg.ransac == "magsac" else cv2.RANSAC
    hm, mask = cv2.findHomography(src, dst, method, cfg.ransac_threshold_px, maxIters=cfg.ransac_iterations,
                                  confidence=0.999)
    if hm is None or mask is None:
        return Registration(False, "no homography found", matches=n_matches)
    inl = mask.ravel().astype(bool)
    n_in = int(inl.sum())
    # Continuous coordinates: the homography was fitted between keypoint positions in continuous pixels.
    h_map = level_to_map @ hm @ view_to_match
    h_map = h_map / h_map[2, 2]
    reg = Registration(False, "", inliers=n_in, matches=n_matches, homography=h_map)

    def to_map(u, v):
        p = h_map @ np.array([u, v, 1.0])
        return np.array([p[0] / p[2], p[1] / p[2]])

    c = to_map(w / 2.0, h / 2.0)
    reg.center_e, reg.center_n = float(c[0]), float(c[1])
    du, dv = to_map(w / 2.0 + 1.0, h / 2.0) - c, to_map(w / 2.0, h / 2.0 - 1.0) - c  # image right, image up
    reg.heading_deg = float(math.degrees(math.atan2(dv[0], dv[1])) % 360.0)
    jac = np.c_[du, -dv]  # d(e, n)/d(u, v)
    det = float(np.linalg.det(jac))
    sv = np.linalg.svd(jac, compute_uv=False)
    reg.gsd_m = float(math.sqrt(abs(det)))

    if n_in < cfg.min_inliers:
        reg.reason = f"{n_in} inliers < min_inliers {cfg.min_inliers}"
        return reg
    if n_in < cfg.min_inlier_ratio * n_matches:
        reg.reason = f"inlier share {n_in / n_matches:.2f} < min_inlier_ratio {cfg.min_inlier_ratio:.2f}"
        return reg
    # Image y points down, map n up: a proper (unmirrored) view has det(d(e,n)/d(u,v)) < 0.
    if det >= 0:
        reg.reason = "mirrored homography"
        return reg
    corners = np.array([to_map(0, 0), to_map(w, 0), to_map(w, h), to_map(0, h)])
    if not np.all(np.isfinite(corners)) or not _convex_quad(corners):
        reg.reason = "the view's footprint folds (degenerate homography)"
        return reg
    if sv[0] > cfg.max_anisotropy * sv[1]:
        reg.reason = f"anisotropy {sv[0] / sv[1]:.2f} > max_anisotropy {cfg.max_anisotropy:.2f}"
        return reg
    if expected_gsd_m is not None:
        tol = cfg.max_scale_ratio if gsd_known else cfg.max_scale_ratio**2
        ratio = reg.gsd_m / expected_gsd_m
        if not 1.0 / tol <= ratio <= tol:
            reg.reason = (f"ground resolution {reg.gsd_m:.3f} m/px is {ratio:.2f}× the expected "
                          f"{expected_gsd_m:.3f} (allowed 1/{tol:.2f}..{tol:.2f})")
            return reg
    inv_view = np.linalg.inv(view_to_match)
    src_view = (np.c_[src[inl], np.ones(n_in)] @ inv_view.T)[:, :2]
    hull = cv2.convexHull(src_view.astype(np.float32))
    spread = float(cv2.contourArea(hull)) / float(w * h)
    if spread < cfg.min_inlier_spread:
        reg.reason = f"inliers cover {spread:.3f} of the image < min_inlier_spread {cfg.min_inlier_spread:.3f}"
        return reg
    if yaw_prior_deg is not None:
        dyaw = abs((reg.heading_deg - yaw_prior_deg + 180.0) % 360.0 - 180.0)
        if dyaw > cfg.max_heading_error_deg:
            reg.reason = f"heading {reg.heading_deg:.0f}° is {dyaw:.0f}° from the yaw prior"
            return reg
    if window is not None:
        we, wn, half = window
        if abs(reg.center_e - we) > half or abs(reg.center_n - wn) > half:
            reg.reason = "registered centre outside the searched window"
            return reg
    dst_map = (np.c_[dst[inl], np.ones(n_in)] @ level_to_map.T)[:, :2]
    cov, rmse = centre_covariance(h_map, src_view, dst_map, (w / 2.0, h / 2.0))
    reg.rmse_m = rmse
    if not np.all(np.isfinite(cov)):
        reg.reason = "degenerate inlier geometry (singular covariance)"
        return reg
    cov = 0.5 * (cov + cov.T) * cfg.sigma_scale**2
    s2 = np.trace(cov) / 2.0
    if s2 < cfg.sigma_floor_m**2:
        cov = cov + np.eye(2) * (cfg.sigma_floor_m**2 - s2)
    reg.cov_en = cov
    reg.ok, reg.reason = True, f"{n_in} inliers of {n_matches} matches, rmse {rmse:.2f} m"
    return reg


@dataclass
class Choice:
    """Outcome of :func:`choose`: ``status`` ``refined`` (``best`` verified and unambiguous), ``ambiguous`` or
    ``unverified`` (no candidate passed)."""

    status: str
    best: Registration | None
    reason: str


def choose(registrations: list[Registration], cfg: RefineConfig) -> Choice:
    """Pick the verified registration with the most inliers; ambiguous when another verified one elsewhere (farther
    than ``ambiguity_distance_m`` plus 2 sigma of either) has at least ``ambiguity_ratio`` of its inliers."""
    ok = sorted((r for r in registrations if r.ok), key=lambda r: -r.inliers)
    if not ok:
        why = "; ".join(sorted({r.reason for r in registrations}))[:300] or "no candidates"
        return Choice("unverified", None, f"no candidate verified ({why})")
    best = ok[0]
    for other in ok[1:]:
        d = math.hypot(other.center_e - best.center_e, other.center_n - best.center_n)
        if d > cfg.ambiguity_distance_m + 2.0 * (best.sigma_m + other.sigma_m) and \
                other.inliers >= cfg.ambiguity_ratio * best.inliers:
            return Choice("ambiguous", best, f"ambiguous registration: {best.inliers} and {other.inliers} inliers "
                                             f"{d:.0f} m apart")
    return Choice("refined", best, best.reason)


def register_window(image: np.ndarray, ortho: Orthophoto, center_e: float, center_n: float, window_m: float,
                    features: str = "sift", max_features: int = 4000, ratio: float = 0.75,
                    threshold_px: float = 5.0, min_inliers: int = 15) -> Registration:
    """Classic baseline: register a whole view against one map window around a prior position (no retrieval).

    Keypoints of the full-resolution view and of the level-0 map window (``window_m`` metres square around
    ``(center_e, center_n)``), ratio test, ``cv2.RANSAC`` homography; accepted with ``min_inliers`` inliers and a
    proper (unmirrored, unfolded) footprint. No scale, orientation or prior-based checks: this is what a plain
    SIFT/ORB pipeline does.
    """
    t0 = time.perf_counter()
    cfg = RefineConfig(features=features, ratio=ratio, ransac="ransac", ransac_threshold_px=threshold_px,
                       min_inliers=min_inliers, min_inlier_ratio=0.0, min_inlier_spread=0.0,
                       max_scale_ratio=1e6, max_anisotropy=1e6, orientation_tolerance_deg=0.0, sigma_scale=1.0,
                       sigma_floor_m=0.0, max_features=max_features)
    det = make_detector(features, max_features)
    half_px = 0.5 * window_m / ortho.gsd_m
    c, r = ortho.map_to_pixel(center_e, center_n)
    x0, x1 = int(max(0, c - half_px)), int(min(ortho.width, c + half_px))
    y0, y1 = int(max(0, r - half_px)), int(min(ortho.height, r + half_px))
    wf = detect(det, cv2.cvtColor(ortho.rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), max_features)
    wf.xy += (x0, y0)
    qf = detect(det, cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), max_features)
    reg = match_and_verify(qf, wf, make_matcher(features), cfg, np.eye(3), _level_to_map(ortho, 0),
                           (image.shape[1], image.shape[0]), None, False)
    reg.time_s = time.perf_counter() - t0
    return reg


__all__ = ["Choice", "Features", "MapFeatures", "Query", "Refiner", "Registration", "centre_covariance", "choose",
           "detect", "equalise", "expected_gsd", "fit_and_verify", "make_detector", "make_matcher", "match_and_verify",
           "ratio_matches", "register_window"]
