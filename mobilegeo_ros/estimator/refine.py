"""Geometric refinement and verification of retrieved tiles: local features + a homography against the map.

Retrieval (:mod:`.retrieval`) says *which tile* the camera sees; this module says *where exactly* and *whether that is
true*. For each of the top retrieved tiles the camera view is registered against the orthophoto window around it:

1. Scale: the view is resized to the ground resolution of the map pyramid level it is matched on. Its own ground
   resolution (metres per image pixel at the image centre) comes from the altitude prior and the field of view when
   both are known, else from the matched tile (its side over the side of the view's central square, which is what
   the embedding compared).
2. North-up (matchers that are not rotation invariant, e.g. XFeat): with a heading hypothesis the resized view is
   rotated about its centre so that its top edge points north, like the map. The resize and the rotation are one
   3×3 ``Query.view_to_match`` (view pixels -> matching-image pixels), so every homography below still maps
   ORIGINAL view pixels to the map.
3. Features (``refine.matcher``, :mod:`.matchers`): OpenCV SIFT, ORB or AKAZE, or the learned XFeat, on
   contrast-equalised grey images (CLAHE, which evens out the date-to-date lighting). Map keypoints are detected
   once per square block of a pyramid level, read from the map window by window (a map file is never read whole),
   and cached (in memory within ``refine.map_cache_mib``, and on disk beside the index when the :class:`Refiner` is
   given a cache folder: :class:`MapFeatures`), so a query only pays for the view's keypoints and the matching of
   the windows it visits.
4. Matching: the matcher's own (ratio test for OpenCV, mutual nearest neighbour for XFeat, LighterGlue), then for
   matchers whose keypoints carry orientation and scale a keypoint-orientation consistency filter (all true
   matches rotate by the same angle, the camera heading) and a scale consistency filter.
5. Robust homography (``cv2.USAC_MAGSAC`` or ``cv2.RANSAC``) from matching-image pixels to map-level pixels,
   composed into ``H``: view pixel ``(u, v, 1)`` (continuous, centre of pixel (0, 0) at (0.5, 0.5)) -> map
   ``(e, n, 1)`` (metres, the orthophoto's CRS).
6. Outputs: the ground point under the image centre ``H @ (W/2, H/2, 1)``, the heading (compass direction of the
   image's up direction at the centre, clockwise from north, degrees), the local ground resolution, a 2×2
   covariance of the centre point propagated from the inlier residuals through the 8 homography parameters
   (``sigma²·(JᵀJ)⁻¹``), scaled and floored by the configuration because the residuals of a flat-ground model ignore
   building parallax and the correlated errors of another acquisition date, and the inlier correspondences
   (original view pixels, map metres) for the camera-pose solver.
7. Verification: enough inliers (``refine.min_inliers``; 0 = the measured default of the matcher,
   :data:`.matchers.MATCHER_DEFAULTS`), a large enough inlier share and image coverage, no mirror or fold, a ground
   resolution consistent with the expected one, mild anisotropy, a heading consistent with the yaw prior, and a
   centre inside the searched window. A candidate failing any rule is rejected with the rule in ``reason``.

:func:`choose` picks among the verified candidates by geometric evidence (inlier count) and reports ambiguity when
two verified candidates disagree. :func:`register_window` is the classic baseline (one fixed window around a prior
position, no scale normalisation), used by the benchmarks.

Images are RGB ``uint8`` ``H×W×3``; map positions in metres (easting, northing) of the orthophoto CRS.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mobilegeo_ros.config import RefineConfig
from mobilegeo_ros.estimator.matchers import (
    Features,
    Matcher,
    make_matcher,
    resolved_min_inliers,
)
from mobilegeo_ros.geo.raster import MapGeometry, Orthophoto
from mobilegeo_ros.util.files import atomic_write_bytes, atomic_write_text, file_sha256


#: Blocks of a pyramid level are grouped into square chunks of this many blocks a side: one cache file each, loaded
#: and evicted from memory together.
CHUNK_BLOCKS = 8
#: A map block is contrast-equalised (CLAHE) on itself plus this margin (pixels of its level) in tiles of
#: ``CLAHE_TILE_PX``, so its keypoints depend only on its neighbourhood, never on how much of the map was read.
CLAHE_MARGIN_PX = 128
CLAHE_TILE_PX = 128
#: Deepest pyramid level registration matches on: 16× the map's metres per pixel (a view from kilometres up on a
#: 0.3 m map). A level-L block of a file-backed map is computed from ``4**L`` times its pixels at level 0.
MAX_REGISTRATION_LEVEL = 4


def equalise(rgb: np.ndarray, tile_px: int | None = None) -> np.ndarray:
    """RGB ``H×W×3 uint8`` -> CLAHE-equalised grey ``H×W uint8``.

    ``tile_px`` None: an 8×8 grid of tiles over the image (camera views); else tiles of about ``tile_px`` pixels
    (map blocks, :data:`CLAHE_TILE_PX`)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if tile_px is None:
        grid = (8, 8)
    else:
        grid = (max(1, round(grey.shape[1] / tile_px)), max(1, round(grey.shape[0] / tile_px)))
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=grid).apply(grey)


def _level_to_map(grid: MapGeometry, level: int) -> np.ndarray:
    """3×3: continuous pixel of pyramid ``level`` -> map (e, n, 1)."""
    return grid.pixel_to_map_matrix() @ MapGeometry.pyramid_to_base(level)


class MapFeatureCacheError(RuntimeError):
    """A map-feature cache on disk was computed for another map, matcher or setting: it is never used."""


#: Version of the map-feature cache files (bumped when their layout or the detection changes).
MAP_FEATURE_CACHE_FORMAT = 2


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint_differences(cached: dict, expected: dict) -> list[str]:
    """``"field: cached X, expected Y"`` for every differing (flattened) field of two cache fingerprints."""
    a, b = _flatten(cached), _flatten(expected)
    return [f"{k}: cached {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


ChunkKey = tuple[int, int, int]  # (level, chunk column, chunk row)


class MapFeatures:
    """Keypoints of a map, detected per (pyramid level, block), cached on disk by chunk and in memory within a budget.

    ``source``: an :class:`~mobilegeo_ros.geo.raster.Orthophoto` (pixels in memory) or a
    :class:`~mobilegeo_ros.geo.windowed.WindowedMap` (pixels read from the file window by window: the map is never
    in memory whole). Both give the same pixels of a level (``level_window``), so the same keypoints.

    Each block of ``cfg.block_px`` pixels of a level is equalised on its neighbourhood (:data:`CLAHE_MARGIN_PX`),
    detected with a padding of ``matcher.context_px`` pixels (so features at block borders are found as on the whole
    image) and keeps the ``cfg.block_features`` strongest keypoints centred in its core. Blocks are detected when a
    window first needs them. Levels deeper than :data:`MAX_REGISTRATION_LEVEL` are not used (``max_level``).

    Memory: blocks live in chunks of :data:`CHUNK_BLOCKS`² blocks; when the chunks held take more than
    ``cfg.map_cache_mib``, the least recently used ones are dropped (and read again from disk, or detected again
    without a cache folder, when needed). So memory is bounded whatever the map's size.

    Disk (``cache_dir``; the localizer passes ``INDEX_DIR/map_features``): each chunk is one file
    ``cache_dir/<matcher>/level<L>/chunk_<cx>_<cy>.npz``, written atomically when blocks were added to it, with a
    fingerprint: the map's identity (file sha256 and the map settings it was read with), the matcher's identity
    (name, weights sha256), block size, block feature count, context padding, level and the format. A file whose
    fingerprint differs raises :class:`MapFeatureCacheError` naming the differing fields. ``chunks_loaded`` (files
    read), ``blocks_computed`` (blocks detected) and ``nbytes`` (memory held) say what happened.
    """

    def __init__(self, source: MapGeometry, cfg: RefineConfig, matcher: Matcher | None = None,
                 cache_dir: str | Path | None = None, map_identity: dict | None = None):
        self.map, self.cfg = source, cfg
        self.matcher = matcher if matcher is not None else make_matcher(cfg.matcher, cfg.ratio)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None and map_identity is None:
            path = getattr(source, "path", None)
            if path is None:
                raise ValueError("a map-feature cache needs the map's identity (an in-memory orthophoto has no file)")
            map_identity = {"sha256": file_sha256(path)}
        self.map_identity = map_identity
        self.max_level = min(source.max_pyramid_level, MAX_REGISTRATION_LEVEL)
        self.budget_bytes = int(cfg.map_cache_mib * 2**20)
        self._chunks: OrderedDict[ChunkKey, dict[tuple[int, int], Features]] = OrderedDict()
        self._chunk_bytes: dict[ChunkKey, int] = {}
        self._dirty: set[ChunkKey] = set()
        self._fingerprint_written = False
        self.chunks_loaded = 0
        self.blocks_computed = 0

    # -- geometry -------------------------------------------------------------------------------------------------
    def level_shape(self, level: int) -> tuple[int, int]:
        """(H, W) of pyramid ``level`` in pixels."""
        return self.map.level_shape(level)

    def chunk_grid(self, level: int) -> tuple[int, int]:
        """(rows, columns) of chunks covering ``level``."""
        h, w = self.level_shape(level)
        side = self.cfg.block_px * CHUNK_BLOCKS
        return -(-h // side), -(-w // side)

    @property
    def nbytes(self) -> int:
        """Memory held by the keypoints in memory, bytes."""
        return sum(self._chunk_bytes.values())

    # -- detection ------------------------------------------------------------------------------------------------
    def _detect_block(self, level: int, bx: int, by: int) -> Features:
        b, p = self.cfg.block_px, self.matcher.context_px
        m = max(CLAHE_MARGIN_PX, p)
        h, w = self.level_shape(level)
        x0, y0 = bx * b, by * b
        xa, ya, xb, yb = max(0, x0 - m), max(0, y0 - m), min(w, x0 + b + m), min(h, y0 + b + m)
        grey = equalise(self.map.level_window(level, xa, ya, xb, yb), CLAHE_TILE_PX)
        xc, yc, xd, yd = max(0, x0 - p), max(0, y0 - p), min(w, x0 + b + p), min(h, y0 + b + p)
        f = self.matcher.detect(np.ascontiguousarray(grey[yc - ya:yd - ya, xc - xa:xd - xa]),
                                4 * self.cfg.block_features)
        f.xy += (xc, yc)
        core = (f.xy[:, 0] >= x0) & (f.xy[:, 0] < x0 + b) & (f.xy[:, 1] >= y0) & (f.xy[:, 1] < y0 + b)
        self.blocks_computed += 1
        return f.take(np.flatnonzero(core)[: self.cfg.block_features])

    def _chunk(self, key: ChunkKey) -> dict[tuple[int, int], Features]:
        if key in self._chunks:
            self._chunks.move_to_end(key)
            return self._chunks[key]
        blocks: dict[tuple[int, int], Features] = {}
        if self.cache_dir is not None:
            path = self.cache_path(*key)
            if path.is_file():
                blocks = self._load_chunk(path, key[0])
                self.chunks_loaded += 1
        self._chunks[key] = blocks
        self._chunk_bytes[key] = sum(f.nbytes for f in blocks.values())
        return blocks

    def _block(self, level: int, bx: int, by: int) -> Features:
        key = (level, bx // CHUNK_BLOCKS, by // CHUNK_BLOCKS)
        chunk = self._chunk(key)
        if (bx, by) not in chunk:
            f = chunk[(bx, by)] = self._detect_block(level, bx, by)
            self._chunk_bytes[key] += f.nbytes
            self._dirty.add(key)
        return chunk[(bx, by)]

    def _settle(self, keep: set[ChunkKey]) -> None:
        """Write the chunks that gained blocks, then drop the least recently used chunks (not in ``keep``) while
        the memory held exceeds the budget."""
        for key in sorted(self._dirty):
            self._save_chunk(key)
        self._dirty.clear()
        for key in list(self._chunks):
            if self.nbytes <= self.budget_bytes:
                break
            if key not in keep:
                del self._chunks[key]
                del self._chunk_bytes[key]

    def ensure_level(self, level: int) -> None:
        """Make every block of ``level`` known: read its chunk files, detect what they lack and write them (the
        build's precomputation and the tracker's warm-up). Memory stays within the budget."""
        rows, cols = self.chunk_grid(level)
        h, w = self.level_shape(level)
        nby, nbx = -(-h // self.cfg.block_px), -(-w // self.cfg.block_px)
        for cy in range(rows):
            for cx in range(cols):
                for by in range(cy * CHUNK_BLOCKS, min(nby, (cy + 1) * CHUNK_BLOCKS)):
                    for bx in range(cx * CHUNK_BLOCKS, min(nbx, (cx + 1) * CHUNK_BLOCKS)):
                        self._block(level, bx, by)
                self._settle({(level, cx, cy)})

    # -- disk cache -----------------------------------------------------------------------------------------------
    def fingerprint(self, level: int) -> dict:
        """What the cached features of ``level`` depend on (see the class docstring)."""
        return {"format": MAP_FEATURE_CACHE_FORMAT, "map": self.map_identity, "matcher": self.matcher.identity(),
                "block_px": self.cfg.block_px, "block_features": self.cfg.block_features,
                "context_px": self.matcher.context_px, "level": level}

    def cache_path(self, level: int, cx: int, cy: int) -> Path:
        """The cache file of chunk ``(cx, cy)`` of ``level``."""
        if self.cache_dir is None:
            raise ValueError("this MapFeatures has no cache folder")
        return self.cache_dir / self.matcher.name / f"level{level}" / f"chunk_{cx}_{cy}.npz"

    def _save_chunk(self, key: ChunkKey) -> None:
        if self.cache_dir is None:
            return
        level = key[0]
        blocks = self._chunks[key]
        keys = sorted(blocks)
        parts = [blocks[k] for k in keys]
        allf = Features.concat(parts, self.matcher.desc_dim, self.matcher.desc_dtype)
        fingerprint = self.fingerprint(level)
        buf = io.BytesIO()
        np.savez(buf, fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)),
                 block_keys=np.array(keys, np.int64).reshape(-1, 2),
                 counts=np.array([len(f) for f in parts], np.int64), xy=allf.xy, angle_deg=allf.angle_deg,
                 size=allf.size, desc=allf.desc)
        atomic_write_bytes(self.cache_path(*key), buf.getvalue())
        if not self._fingerprint_written:
            atomic_write_text(self.cache_dir / self.matcher.name / "fingerprint.json",
                              json.dumps({k: v for k, v in fingerprint.items() if k != "level"}, indent=1,
                                         sort_keys=True) + "\n")
            self._fingerprint_written = True

    def _load_chunk(self, path: Path, level: int) -> dict[tuple[int, int], Features]:
        try:
            with np.load(path, allow_pickle=False) as z:
                cached = json.loads(str(z["fingerprint"]))
                diffs = fingerprint_differences(cached, self.fingerprint(level))
                if diffs:
                    raise MapFeatureCacheError(
                        f"map-feature cache {str(path)!r} was computed for another map, matcher or setting "
                        f"({'; '.join(diffs)}); it is not used. Delete the folder {str(self.cache_dir)!r} (it is "
                        "recomputed on first use) or rebuild the index")
                keys, counts = z["block_keys"], z["counts"]
                xy, ang, size, desc = z["xy"], z["angle_deg"], z["size"], z["desc"]
        except (OSError, ValueError, KeyError) as e:
            raise MapFeatureCacheError(f"map-feature cache {str(path)!r} is unreadable ({e}); delete the folder "
                                       f"{str(self.cache_dir)!r} (it is recomputed on first use)") from e
        offsets = np.r_[0, np.cumsum(counts)]
        return {(int(bx), int(by)): Features(xy[a:b], ang[a:b], size[a:b], desc[a:b])
                for (bx, by), a, b in zip(keys, offsets[:-1], offsets[1:], strict=True)}

    # -- windows --------------------------------------------------------------------------------------------------
    def window_px(self, level: int, center_e: float, center_n: float, half_m: float
                  ) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the square of half side ``half_m`` metres around a map point in continuous pixels of
        ``level``, clipped to the image (empty when x1 <= x0 or y1 <= y0)."""
        m2l = np.linalg.inv(_level_to_map(self.map, level))
        c = m2l @ np.array([center_e, center_n, 1.0])
        half_px = half_m / (self.map.gsd_m * 2**level)
        h, w = self.level_shape(level)
        return (max(0.0, c[0] - half_px), max(0.0, c[1] - half_px), min(float(w), c[0] + half_px),
                min(float(h), c[1] + half_px))

    def gather(self, level: int, boxes: list[tuple[float, float, float, float]]) -> Features:
        """Keypoints (continuous pixels of ``level``) inside any of the boxes (from :meth:`window_px`), each once."""
        if not 0 <= level <= self.max_level:
            raise ValueError(f"map pyramid level {level} is outside [0, {self.max_level}]")
        b = self.cfg.block_px
        h, w = self.level_shape(level)
        keys: dict[tuple[int, int], None] = {}
        for x0, y0, x1, y1 in boxes:
            if x1 > x0 and y1 > y0:
                for by in range(max(0, int(y0 // b)), min(-(-h // b), int(math.ceil(y1 / b)))):
                    for bx in range(max(0, int(x0 // b)), min(-(-w // b), int(math.ceil(x1 / b)))):
                        keys[(bx, by)] = None
        f = Features.concat([self._block(level, bx, by) for bx, by in keys], self.matcher.desc_dim,
                            self.matcher.desc_dtype)
        self._settle({(level, bx // CHUNK_BLOCKS, by // CHUNK_BLOCKS) for bx, by in keys})
        inside = np.zeros(len(f), bool)
        for x0, y0, x1, y1 in boxes:
            inside |= (f.xy[:, 0] >= x0) & (f.xy[:, 0] <= x1) & (f.xy[:, 1] >= y0) & (f.xy[:, 1] <= y1)
        return f.take(np.flatnonzero(inside))

    def window(self, level: int, center_e: float, center_n: float, half_m: float) -> Features:
        """Keypoints (continuous pixels of ``level``) inside the square of half side ``half_m`` metres around a
        map point."""
        return self.gather(level, [self.window_px(level, center_e, center_n, half_m)])


def map_identity(map_sha256: str, map_cfg) -> dict:
    """The map part of a map-feature cache fingerprint: the map file's sha256 and the settings it is read with
    (a ``MapConfig``: bands, stretch, pansharpening...). The localizer and ``build-index`` use the same."""
    return {"sha256": map_sha256, "settings": json.loads(json.dumps(dataclasses.asdict(map_cfg), default=str))}


def precompute_map_features(source: MapGeometry, cfg: RefineConfig, cache_dir: str | Path, identity: dict,
                            levels: list[int] | None = None) -> list[Path]:
    """Detect and save the map-side features of ``cfg.matcher`` for ``levels`` (default: every level registration
    uses) into ``cache_dir`` (what the localizer would otherwise do on first use) → the cache files.

    ``source``: an :class:`~mobilegeo_ros.geo.raster.Orthophoto` or a
    :class:`~mobilegeo_ros.geo.windowed.WindowedMap` (memory bounded by ``refine.map_cache_mib`` plus one block's
    window, whatever the map's size)."""
    mf = MapFeatures(source, cfg, make_matcher(cfg.matcher, cfg.ratio), cache_dir, identity)
    levels = list(range(mf.max_level + 1)) if levels is None else levels
    for level in levels:
        mf.ensure_level(level)
    return sorted(p for level in levels for p in mf.cache_path(level, 0, 0).parent.glob("chunk_*.npz"))


@dataclass
class Query:
    """A camera view prepared for registration: keypoints at the matching resolution (and orientation).

    ``width_px``, ``height_px``: the ORIGINAL view's size; ``view_to_match`` (3×3): original view pixels ->
    matching-image pixels (continuous coordinates; the resize to the map level's resolution, then, for a north-up
    query, the rotation about the centre); ``match_size_px``: (W, H) of the matching image; ``level``: the map
    pyramid level it is matched against; ``gsd_m``: the view's ground resolution at the image centre (metres per
    view pixel) used to choose them; ``gsd_known``: whether it came from priors (tighter verification);
    ``heading_deg``: the heading hypothesis the view was turned north-up with (compass degrees of its top edge), or
    None when it was not rotated.
    """

    width_px: int
    height_px: int
    features: Features
    view_to_match: np.ndarray
    level: int
    gsd_m: float
    gsd_known: bool
    match_size_px: tuple[int, int] = (0, 0)
    heading_deg: float | None = None


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
    # The homography inliers when verified (else None): N×2 original view pixels (continuous) and N×2 map (e, n) m.
    inlier_view_px: np.ndarray | None = field(default=None, repr=False)
    inlier_map_en: np.ndarray | None = field(default=None, repr=False)
    query_heading_deg: float | None = None  # the heading hypothesis the view was turned north-up with (or None)

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


def north_up_rotation(width_px: int, height_px: int, heading_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """(3×3 continuous-pixel transform, (W', H') canvas) turning an image whose top edge points at compass heading
    ``heading_deg`` so that its top edge points north, about its centre, on a canvas that holds all of it.

    Turning the top edge's heading clockwise by Δ turns the image content counter-clockwise by Δ on screen (the
    convention of :func:`mobilegeo_ros.localizer.rotate_to_heading`): here Δ = -heading.
    """
    a = cv2.getRotationMatrix2D((0.0, 0.0), -heading_deg, 1.0)[:, :2]
    c, s = abs(a[0, 0]), abs(a[0, 1])
    w2 = int(math.ceil(c * width_px + s * height_px - 1e-6))
    h2 = int(math.ceil(s * width_px + c * height_px - 1e-6))
    centre, centre2 = np.array([width_px / 2.0, height_px / 2.0]), np.array([w2 / 2.0, h2 / 2.0])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = centre2 - a @ centre
    return m, (w2, h2)


def warp_continuous(image: np.ndarray, m: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``cv2.warpAffine`` with a 3×3 transform in continuous pixels (pixel centres at +0.5); black outside."""
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    m_idx = np.linalg.inv(shift) @ m @ shift  # OpenCV's pixel centres are at integers
    return cv2.warpAffine(image, m_idx[:2], size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class Refiner:
    """Registers camera views against a map (see the module docstring). One call at a time.

    ``source``: an :class:`~mobilegeo_ros.geo.raster.Orthophoto` in memory, or a
    :class:`~mobilegeo_ros.geo.windowed.WindowedMap` read window by window (bounded memory: ``refine.map_cache_mib``
    of keypoints plus the windows being detected); :meth:`close` closes it.

    ``cache_dir``: folder for the map-feature cache (the localizer passes ``INDEX_DIR/map_features``); None = memory
    only. ``map_identity``: what identifies the map for that cache (``{"sha256": ..., "settings": {...}}``); when None
    with a cache folder, the sha256 of the orthophoto's file.
    """

    def __init__(self, source: MapGeometry, cfg: RefineConfig, cache_dir: str | Path | None = None,
                 map_identity: dict | None = None):
        self.map = source
        self.matcher = make_matcher(cfg.matcher, cfg.ratio)
        # refine.min_inliers 0 = the measured default of this matcher.
        self.cfg = dataclasses.replace(cfg, min_inliers=resolved_min_inliers(cfg.matcher, cfg.min_inliers))
        self.map_features = MapFeatures(source, self.cfg, self.matcher, cache_dir, map_identity)

    def level_for(self, gsd_m: float) -> int:
        """The map pyramid level a view of ``gsd_m`` metres per pixel is matched on."""
        g0 = self.map.gsd_m
        return 0 if gsd_m <= g0 else int(min(self.map_features.max_level,
                                             max(0, math.floor(math.log2(gsd_m / g0) + 0.25))))

    def map_window(self, center_e: float, center_n: float, half_m: float) -> Orthophoto:
        """The map's pixels around a point as an :class:`Orthophoto` placed on the map (the whole orthophoto when
        it is in memory; else a window of half side ``half_m`` metres read from the file)."""
        if isinstance(self.map, Orthophoto):
            return self.map
        col, row = self.map.map_to_pixel(center_e, center_n)
        half_px = int(math.ceil(half_m / self.map.gsd_m))
        return self.map.read_window(int(col) - half_px, int(row) - half_px, 2 * half_px + 1, 2 * half_px + 1)

    def close(self) -> None:
        """Close a file-backed map (idempotent; an in-memory orthophoto has nothing to close)."""
        close = getattr(self.map, "close", None)
        if close is not None:
            close()

    def prepare(self, image: np.ndarray, gsd_m: float, gsd_known: bool, heading_deg: float | None = None,
                north_up: bool | None = None) -> Query:
        """Resize the view (RGB ``H×W×3`` uint8) to the ground resolution of the matching map level, turn it
        north-up when the matcher needs it, and detect its keypoints.

        ``gsd_m``: metres per view pixel at the image centre; ``heading_deg``: hypothesis of the compass heading of
        the view's top edge (degrees clockwise from north) or None. ``north_up``: None = rotate when the matcher is
        not rotation invariant and a heading hypothesis is given; True/False forces it (True needs a heading).
        """
        h, w = image.shape[:2]
        level = self.level_for(gsd_m)
        # Never upsample the view (no information gained); a slightly finer map level is fine for the features.
        scale = min(1.0, gsd_m / (self.map.gsd_m * 2**level))
        w2, h2 = max(16, int(round(w * scale))), max(16, int(round(h * scale)))
        small = image if (w2, h2) == (w, h) else cv2.resize(image, (w2, h2), interpolation=cv2.INTER_AREA)
        # Black pixels are outside the rendered map or above the horizon: no keypoints on their edge.
        valid = (small.max(axis=2) > 0).astype(np.uint8) * 255
        view_to_match = np.diag([w2 / w, h2 / h, 1.0])
        if north_up is None:
            north_up = heading_deg is not None and not self.matcher.rotation_invariant
        if north_up and (heading_deg is None or not math.isfinite(heading_deg)):
            raise ValueError("prepare(north_up=True) needs a finite heading_deg")
        size = (w2, h2)
        if north_up:
            rot, size = north_up_rotation(w2, h2, float(heading_deg))
            small = warp_continuous(small, rot, size, cv2.INTER_LINEAR)
            valid = warp_continuous(valid, rot, size, cv2.INTER_NEAREST)
            view_to_match = rot @ view_to_match
        grey = equalise(small)
        k = max(3, self.matcher.context_px // 2 - 1)
        mask = None if valid.all() else cv2.erode(valid, np.ones((k, k), np.uint8))
        feats = self.matcher.detect(grey, self.cfg.max_features, mask)
        return Query(w, h, feats, view_to_match=view_to_match, level=level, gsd_m=gsd_m, gsd_known=gsd_known,
                     match_size_px=size, heading_deg=float(heading_deg) % 360.0 if north_up else None)

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
        live = [b for b in boxes if b[2] > b[0] and b[3] > b[1]] or [(0.0, 0.0, 1.0, 1.0)]
        union_box = (min(b[0] for b in live), min(b[1] for b in live), max(b[2] for b in live),
                     max(b[3] for b in live))
        matches = self.matcher.match(query.features, union, query.match_size_px, union_box)
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
                                 view_to_match=query.view_to_match, level_to_map=_level_to_map(self.map, lvl),
                                 size_px=(query.width_px, query.height_px), expected_gsd_m=query.gsd_m,
                                 gsd_known=query.gsd_known, yaw_prior_deg=yaw_prior_deg, window=(e, n, half),
                                 consistency_filters=self.matcher.oriented)
            reg.candidate = row
            reg.query_heading_deg = query.heading_deg
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


def match_and_verify(qf: Features, wf: Features, matcher: Matcher, cfg: RefineConfig, view_to_match: np.ndarray,
                     level_to_map: np.ndarray, size_px: tuple[int, int], expected_gsd_m: float | None,
                     gsd_known: bool, yaw_prior_deg: float | None = None,
                     window: tuple[float, float, float] | None = None, match_size_px: tuple[int, int] | None = None,
                     reference_box: tuple[float, float, float, float] | None = None) -> Registration:
    """Match view keypoints ``qf`` (matching-image pixels) to map keypoints ``wf`` (map-level pixels) with
    ``matcher``, fit the homography and apply the verification rules.

    ``view_to_match`` (3×3) maps view pixels to matching-image pixels, ``level_to_map`` (3×3) map-level pixels to
    map metres, ``size_px`` = (W, H) of the view. ``window`` = (centre e, centre n, half side m) of the searched
    square: the registered centre must lie inside it. ``match_size_px`` (W, H of the matching image; default the
    view's size through ``view_to_match``) and ``reference_box`` (x0, y0, x1, y1 of the map region ``wf`` comes
    from; default their bounding box) are what a learned matcher normalises keypoints by.
    """
    if match_size_px is None:
        match_size_px = (int(round(size_px[0] * view_to_match[0, 0])), int(round(size_px[1] * view_to_match[1, 1])))
    if reference_box is None:
        reference_box = ((float(wf.xy[:, 0].min()), float(wf.xy[:, 1].min()), float(wf.xy[:, 0].max()),
                          float(wf.xy[:, 1].max())) if len(wf) else (0.0, 0.0, 1.0, 1.0))
    qi, wi = matcher.match(qf, wf, match_size_px, reference_box)
    return fit_and_verify(qf, wf, qi, wi, cfg, view_to_match, level_to_map, size_px, expected_gsd_m, gsd_known,
                          yaw_prior_deg, window, consistency_filters=matcher.oriented)


def calibrated_covariance(cov: np.ndarray, cfg: RefineConfig) -> np.ndarray:
    """A covariance propagated from inlier residuals (2×2, m²) made honest for real imagery: symmetrised, scaled by
    ``refine.sigma_scale²`` and floored at ``refine.sigma_floor_m`` of 1-sigma (the residuals of a flat-ground model
    ignore building parallax and the correlated errors of another acquisition date)."""
    cov = 0.5 * (cov + cov.T) * cfg.sigma_scale**2
    s2 = float(np.trace(cov)) / 2.0
    if s2 < cfg.sigma_floor_m**2:
        cov = cov + np.eye(2) * (cfg.sigma_floor_m**2 - s2)
    return cov


def _to_map(h_map: np.ndarray, u: float, v: float) -> np.ndarray:
    p = h_map @ np.array([u, v, 1.0])
    return np.array([p[0] / p[2], p[1] / p[2]])


def centre_geometry(h_map: np.ndarray, width_px: int, height_px: int) -> tuple[float, float, float, np.ndarray]:
    """``(e, n, heading_deg, jac)`` of a view→map homography at the image centre: the ground point (map metres), the
    compass heading of the image's up direction, and ``jac`` = d(e, n)/d(u, v) (2×2, one-pixel differences, image y
    down; ``sqrt|det jac|`` is the ground resolution in metres per view pixel)."""
    c = _to_map(h_map, width_px / 2.0, height_px / 2.0)
    du = _to_map(h_map, width_px / 2.0 + 1.0, height_px / 2.0) - c  # image right
    dv = _to_map(h_map, width_px / 2.0, height_px / 2.0 - 1.0) - c  # image up
    heading = float(math.degrees(math.atan2(dv[0], dv[1])) % 360.0)
    return float(c[0]), float(c[1]), heading, np.c_[du, -dv]


def fit_and_verify(qf: Features, wf: Features, qi: np.ndarray, wi: np.ndarray, cfg: RefineConfig,
                   view_to_match: np.ndarray, level_to_map: np.ndarray, size_px: tuple[int, int],
                   expected_gsd_m: float | None, gsd_known: bool, yaw_prior_deg: float | None = None,
                   window: tuple[float, float, float] | None = None, consistency_filters: bool = True
                   ) -> Registration:
    """Filter the matches ``qf[qi] <-> wf[wi]`` (orientation and scale consistency when ``consistency_filters``:
    only for keypoints that carry orientation and scale), fit the homography, verify (see
    :func:`match_and_verify` for the arguments). ``cfg.min_inliers`` 0 means the matcher's measured default."""
    w, h = size_px
    min_inliers = resolved_min_inliers(cfg.matcher, cfg.min_inliers)
    if len(qi) < max(4, min_inliers):
        return Registration(False, f"{len(qi)} matches < min_inliers {min_inliers}", matches=len(qi))
    if consistency_filters:
        keep = _orientation_filter(wf.angle_deg[wi] - qf.angle_deg[qi], cfg.orientation_tolerance_deg)
        # Scale consistency: the view was resized to the map level's resolution, so true matches have keypoint
        # sizes within about an octave of the dominant size ratio.
        log_ratio = np.log2(np.maximum(wf.size[wi], 1e-6) / np.maximum(qf.size[qi], 1e-6))
        if keep.any():
            keep &= np.abs(log_ratio - np.median(log_ratio[keep])) <= 1.0
        qi, wi = qi[keep], wi[keep]
    n_matches = len(qi)
    if n_matches < max(4, min_inliers):
        return Registration(False, f"{n_matches} consistent matches < min_inliers {min_inliers}",
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
        return _to_map(h_map, u, v)

    reg.center_e, reg.center_n, reg.heading_deg, jac = centre_geometry(h_map, w, h)
    det = float(np.linalg.det(jac))
    sv = np.linalg.svd(jac, compute_uv=False)
    reg.gsd_m = float(math.sqrt(abs(det)))

    if n_in < min_inliers:
        reg.reason = f"{n_in} inliers < min_inliers {min_inliers}"
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
    reg.cov_en = calibrated_covariance(cov, cfg)
    reg.inlier_view_px, reg.inlier_map_en = src_view, dst_map
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
                    matcher: str = "sift", max_features: int = 4000, ratio: float = 0.75,
                    threshold_px: float = 5.0, min_inliers: int = 15) -> Registration:
    """Classic baseline: register a whole view against one map window around a prior position (no retrieval).

    Keypoints (``matcher``, see :mod:`.matchers`) of the full-resolution view and of the level-0 map window
    (``window_m`` metres square around ``(center_e, center_n)``), the matcher's matching (ratio test for the OpenCV
    ones), ``cv2.RANSAC`` homography; accepted with ``min_inliers`` inliers and a proper (unmirrored, unfolded)
    footprint. No scale, orientation or prior-based checks: this is what a plain SIFT/ORB pipeline does.
    """
    t0 = time.perf_counter()
    cfg = RefineConfig(matcher=matcher, ratio=ratio, ransac="ransac", ransac_threshold_px=threshold_px,
                       min_inliers=min_inliers, min_inlier_ratio=0.0, min_inlier_spread=0.0,
                       max_scale_ratio=1e6, max_anisotropy=1e6, orientation_tolerance_deg=0.0, sigma_scale=1.0,
                       sigma_floor_m=0.0, max_features=max_features)
    m = make_matcher(matcher, ratio)
    half_px = 0.5 * window_m / ortho.gsd_m
    c, r = ortho.map_to_pixel(center_e, center_n)
    x0, x1 = int(max(0, c - half_px)), int(min(ortho.width, c + half_px))
    y0, y1 = int(max(0, r - half_px)), int(min(ortho.height, r + half_px))
    wf = m.detect(cv2.cvtColor(ortho.rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), max_features)
    wf.xy += (x0, y0)
    qf = m.detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), max_features)
    reg = match_and_verify(qf, wf, m, cfg, np.eye(3), _level_to_map(ortho, 0), (image.shape[1], image.shape[0]),
                           None, False, match_size_px=(image.shape[1], image.shape[0]),
                           reference_box=(float(x0), float(y0), float(x1), float(y1)))
    reg.time_s = time.perf_counter() - t0
    return reg


__all__ = ["CHUNK_BLOCKS", "Choice", "Features", "MAP_FEATURE_CACHE_FORMAT", "MAX_REGISTRATION_LEVEL",
           "MapFeatureCacheError", "MapFeatures", "Query",
           "Refiner", "Registration", "calibrated_covariance", "centre_covariance", "centre_geometry", "choose",
           "equalise", "expected_gsd", "fit_and_verify", "fingerprint_differences", "map_identity",
           "match_and_verify", "north_up_rotation", "precompute_map_features", "register_window", "warp_continuous"]
