"""Training and evaluation data: pairs of a drone view and a satellite tile with a location class.

Three sources behind one interface (:class:`PairDataset`: ``len``, ``labels`` per pair, ``num_classes``,
``__getitem__(i) -> (drone H×W×3 uint8 RGB, satellite H×W×3 uint8 RGB, class int)``) and retrieval splits
(:class:`RetrievalSet`: images + class labels, for query and gallery):

* University-1652 layout: ``train/{drone,satellite}/<class>/*`` and
  ``test/{query_drone,gallery_satellite,query_satellite,gallery_drone}/<class>/*``;
* SUES-200 layout (after its split script): ``Training/<altitude>/{drone,satellite}/<class>/*`` and
  ``Testing/<altitude>/{query_drone,gallery_satellite,query_satellite,gallery_drone}/<class>/*``;
* synthetic, from any GeoTIFF orthophoto (:class:`SyntheticOrtho`): each location of a regular grid is a class; its
  satellite image is the north-up tile, its drone views are perspective renders centred on it (an orbit of yaws
  over altitudes, random tilt, photometric changes). Locations are split into train/val/test by easting bands whose
  footprints (tile and drone views) do not overlap, plus an optional extra gap. A second orthophoto of the same area
  (another date or sensor) can supply the drone views: the domain-shift evaluation.

Folder datasets pair every drone image of a class with the class's satellite image (the first, sorted; University-1652
and SUES-200 have one), one pair per drone image (Sample4Geo/MEAN). Class labels of a retrieval split come from the
folder names: the integer value when every name is an integer (University-1652 "0001"), else the index in the sorted
union of query and gallery names, so the two sides of a task always agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mobilegeo_ros.config import RenderConfig
from mobilegeo_ros.geo.raster import Orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, footprint, image_to_ground, photometric, render_view
from mobilegeo_ros.geo.tiles import TileSpec, cut_tile

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TASKS = {"drone2sat": ("query_drone", "gallery_satellite"), "sat2drone": ("query_satellite", "gallery_drone")}


class DatasetError(ValueError):
    """A dataset folder or image is missing, empty or unreadable; the message names the path."""


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB (DatasetError naming the file if it cannot be read)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"image {str(path)!r} cannot be read (missing, corrupt or not an image)")
    return np.ascontiguousarray(img[:, :, ::-1])


def _class_dirs(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if files:
            out[d.name] = files
    if not out:
        raise DatasetError(f"dataset folder {str(root)!r} has no <class>/ subfolders with images")
    return out


@dataclass
class RetrievalSet:
    """Images of one side of a retrieval task. ``items``: file paths or H×W×3 uint8 arrays; ``labels``: N int64."""

    items: list
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> np.ndarray:
        item = self.items[i]
        return read_rgb(item) if isinstance(item, (str, Path)) else item


def _label_map(names: Sequence[str]) -> dict[str, int]:
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(sorted(set(names)))}


def folder_task(test_root: str | Path, task: str) -> tuple[RetrievalSet, RetrievalSet]:
    """(query, gallery) of ``task`` (drone2sat | sat2drone) under a University-1652 ``test`` or SUES-200
    ``Testing/<alt>`` folder."""
    if task not in TASKS:
        raise DatasetError(f"task {task!r} is not one of {', '.join(TASKS)}")
    root = Path(test_root)
    q_dirs, g_dirs = (_class_dirs(root / sub) for sub in TASKS[task])
    mapping = _label_map(list(q_dirs) + list(g_dirs))

    def build(dirs: dict[str, list[Path]]) -> RetrievalSet:
        items = [f for files in dirs.values() for f in files]
        labels = np.array([mapping[name] for name, files in dirs.items() for _ in files], np.int64)
        return RetrievalSet(items, labels)

    return build(q_dirs), build(g_dirs)


class PairDataset:
    """Base: pairs (drone view, satellite tile, class). Subclasses set ``labels`` (int64 per pair),
    ``num_classes`` and implement ``__getitem__``. ``set_epoch`` changes the random rendering of synthetic views."""

    labels: np.ndarray
    num_classes: int
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderPairs(PairDataset):
    """Pairs from ``drone/<class>/`` and ``satellite/<class>/`` folders (classes present in both; the others are
    an error: a drone class without its satellite image cannot be trained)."""

    def __init__(self, drone_dir: str | Path, sat_dir: str | Path) -> None:
        drone, sat = _class_dirs(Path(drone_dir)), _class_dirs(Path(sat_dir))
        missing = sorted(set(drone) - set(sat))
        if missing:
            raise DatasetError(f"{str(sat_dir)!r}: no satellite image for drone classes {missing[:5]}")
        self.class_names = sorted(drone)
        self.num_classes = len(self.class_names)
        self.drone = [f for c in self.class_names for f in drone[c]]
        self.sat = {i: sat[c][0] for i, c in enumerate(self.class_names)}
        self.labels = np.array([i for i, c in enumerate(self.class_names) for _ in drone[c]], np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        label = int(self.labels[i])
        return read_rgb(self.drone[i]), read_rgb(self.sat[label]), label


def university1652_train(root: str | Path) -> FolderPairs:
    """Training pairs of a University-1652 root (``root/train/{drone,satellite}/<class>/``)."""
    return FolderPairs(Path(root) / "train" / "drone", Path(root) / "train" / "satellite")


def university1652_task(root: str | Path, task: str) -> tuple[RetrievalSet, RetrievalSet]:
    return folder_task(Path(root) / "test", task)


def sues200_train(root: str | Path, altitude: int | str) -> FolderPairs:
    """Training pairs of one SUES-200 altitude (``root/Training/<alt>/{drone,satellite}/<class>/``)."""
    base = Path(root) / "Training" / str(altitude)
    return FolderPairs(base / "drone", base / "satellite")


def sues200_task(root: str | Path, altitude: int | str, task: str) -> tuple[RetrievalSet, RetrievalSet]:
    return folder_task(Path(root) / "Testing" / str(altitude), task)


# --------------------------------------------------------------------------------------------------------------------
# Synthetic orthophoto dataset


@dataclass(frozen=True)
class OrthoDataConfig:
    """Synthetic dataset geometry (all hypotheses; University-1652 has 54 drone views per building).

    ``tile_size_m``: satellite tile side; ``spacing_m``: distance between neighbouring locations (classes);
    ``views``: drone views per location and epoch (the orbit); ``splits``: fractions of the map width (west to
    east) for train, val, test; ``gap_m``: extra distance kept between the footprints of different splits;
    ``out_px``: side of the rendered images.

    ``pairing`` (which satellite image a drone view is paired with): ``location`` = the north-up ``tile_size_m``
    tile of its location (University-1652 style: the network must be rotation- and scale-invariant); ``index`` =
    the tile the deployed index holds for that view: the side in ``tile_sizes_m`` nearest to the view's ground
    footprint and the gallery copy among ``rotations`` evenly spaced headings nearest to its yaw (residual yaw
    within ±180/rotations degrees), as :mod:`mobilegeo_ros.index.build` cuts them (hypothesis: training on the
    residual the node actually faces beats full invariance for a small network). ``view_hfov_deg``: field of view
    of the square renders (default ``render.hfov_deg``; the node embeds the central square of a wider frame, so
    :func:`central_square_fov_deg` of the camera is the faithful value)."""

    tile_size_m: float = 120.0
    spacing_m: float = 60.0
    views: int = 54
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    gap_m: float = 0.0
    out_px: int = 224
    pairing: str = "location"
    tile_sizes_m: tuple[float, ...] = (120.0, 180.0)
    rotations: int = 8
    view_hfov_deg: float | None = None


class SyntheticOrtho(PairDataset):
    """Locations of one split of an orthophoto (see the module docstring). ``drone_ortho``: optional second image
    of the same area for the drone views (domain shift); default the same orthophoto.

    Pair index ``i`` = location ``i // views``, view ``i % views``. View k of a location: yaw on an orbit
    ``360·k/views + U(−½, ½)·360/views`` degrees, altitude cycling over ``render.altitude_m``, pitch and roll in
    ±``render.max_tilt_deg``, the camera shifted so the image centre looks at the location, then
    :func:`~mobilegeo_ros.geo.render.photometric`. Deterministic for (seed, epoch, location, view); epoch 0 is the
    fixed evaluation rendering.
    """

    def __init__(self, ortho: Orthophoto, split: str, data_cfg: OrthoDataConfig | None = None,
                 render_cfg: RenderConfig | None = None, seed: int = 0, drone_ortho: Orthophoto | None = None
                 ) -> None:
        self.cfg = data_cfg or OrthoDataConfig()
        self.render_cfg = render_cfg or RenderConfig()
        if split not in ("train", "val", "test"):
            raise DatasetError(f"split {split!r} is not train, val or test")
        if drone_ortho is not None and drone_ortho.crs != ortho.crs:
            raise DatasetError(f"the drone orthophoto {drone_ortho.path} is in another CRS than {ortho.path}")
        self.ortho, self.drone_ortho = ortho, drone_ortho or ortho
        self.seed, self.split = int(seed), split
        if self.cfg.pairing not in ("location", "index"):
            raise DatasetError(f"pairing {self.cfg.pairing!r} is not location or index")
        self.camera = CameraModel(self.cfg.out_px, self.cfg.out_px, self.cfg.view_hfov_deg or self.render_cfg.hfov_deg)
        self.centers = split_locations(ortho, self.cfg, self.render_cfg)[split]
        if len(self.centers) == 0:
            raise DatasetError(f"orthophoto {ortho.path or '(in memory)'}: no {split} locations fit (map "
                               f"{ortho.width * ortho.gsd_m:.0f} m wide; tile {self.cfg.tile_size_m} m, views up to "
                               f"{max(self.render_cfg.altitude_m)} m altitude); use a larger map or smaller tiles")
        self.num_classes = len(self.centers)
        self.labels = np.repeat(np.arange(self.num_classes, dtype=np.int64), self.cfg.views)

    def satellite(self, loc: int, size_m: float | None = None, rotation_deg: float = 0.0) -> np.ndarray:
        """The satellite tile of location ``loc`` (default: north-up, ``tile_size_m``)."""
        e, n = self.centers[loc]
        spec = TileSpec(tile_id=loc, level=0, size_m=size_m or self.cfg.tile_size_m, center_e=float(e),
                        center_n=float(n), lat=math.nan, lon=math.nan)
        return cut_tile(self.ortho, spec, self.cfg.out_px, rotation_deg)

    def index_tile_for(self, pose: CameraPose) -> tuple[float, float]:
        """(side m, rotation deg) of the index tile a view with ``pose`` is matched to (``pairing: index``)."""
        side = 2.0 * pose.altitude_m * math.tan(math.radians(self.camera.hfov_deg) / 2.0)
        sizes = np.asarray(self.cfg.tile_sizes_m or (self.cfg.tile_size_m,), float)
        size = float(sizes[np.argmin(np.abs(np.log(sizes / side)))])
        step = 360.0 / max(1, self.cfg.rotations)
        return size, (round(pose.yaw_deg / step) * step) % 360.0

    def pose(self, loc: int, view: int, rng: np.random.Generator) -> CameraPose:
        rc, v = self.render_cfg, self.cfg.views
        yaw = (360.0 * view / v + rng.uniform(-0.5, 0.5) * 360.0 / v + 180.0) % 360.0 - 180.0
        a0, a1 = rc.altitude_m
        alt = a0 + (a1 - a0) * ((view * 0.618034) % 1.0)  # golden-ratio cycling: every altitude band per orbit
        pitch, roll = rng.uniform(-rc.max_tilt_deg, rc.max_tilt_deg, 2)
        e, n = self.centers[loc]
        pose = CameraPose(float(e), float(n), float(alt), float(yaw), float(pitch), float(roll))
        ge, gn = image_to_ground(pose, self.camera, np.array([self.cfg.out_px / 2]), np.array([self.cfg.out_px / 2]))
        return dataclasses.replace(pose, easting=float(2 * e - ge[0]), northing=float(2 * n - gn[0]))

    def drone(self, loc: int, view: int, epoch: int | None = None) -> np.ndarray:
        return self._drone_and_pose(loc, view, epoch)[0]

    def _drone_and_pose(self, loc: int, view: int, epoch: int | None = None) -> tuple[np.ndarray, CameraPose]:
        ep = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, ep, loc, view])
        pose = self.pose(loc, view, rng)
        img = render_view(self.drone_ortho, pose, self.camera)
        return photometric(img, rng, self.render_cfg), pose

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        loc, view = divmod(int(i), self.cfg.views)
        drone, pose = self._drone_and_pose(loc, view)
        if self.cfg.pairing == "index":
            return drone, self.satellite(loc, *self.index_tile_for(pose)), loc
        return drone, self.satellite(loc), loc

    def retrieval_task(self, task: str, views: int | None = None) -> tuple[RetrievalSet, RetrievalSet]:
        """(query, gallery) with the fixed epoch-0 renders: drone2sat = all views vs the tiles; sat2drone the
        reverse. ``views`` limits the drone views per location."""
        v = self.cfg.views if views is None else min(views, self.cfg.views)
        drones = RetrievalSet([self.drone(loc, k, epoch=0) for loc in range(self.num_classes) for k in range(v)],
                              np.repeat(np.arange(self.num_classes, dtype=np.int64), v))
        sats = RetrievalSet([self.satellite(loc) for loc in range(self.num_classes)],
                            np.arange(self.num_classes, dtype=np.int64))
        if task == "drone2sat":
            return drones, sats
        if task == "sat2drone":
            return sats, drones
        raise DatasetError(f"task {task!r} is not one of {', '.join(TASKS)}")


def central_square_fov_deg(render_cfg: RenderConfig) -> float:
    """Field of view (degrees) of the central square of a ``render.image_width_px×image_height_px`` frame with
    ``render.hfov_deg``: what the node embeds (:func:`mobilegeo_ros.geo.imageops.center_square`)."""
    w, h = render_cfg.image_width_px, render_cfg.image_height_px
    half = math.tan(math.radians(render_cfg.hfov_deg) / 2.0) * min(w, h) / w
    return math.degrees(2.0 * math.atan(half))


def view_radius_m(render_cfg: RenderConfig, hfov_deg: float | None = None) -> float:
    """Largest ground distance from the aimed centre to a corner of a square drone view (highest altitude, largest
    tilt, metres): how far a location's drone views reach."""
    cam = CameraModel(64, 64, hfov_deg or render_cfg.hfov_deg)
    t = render_cfg.max_tilt_deg
    pose = CameraPose(0.0, 0.0, max(render_cfg.altitude_m), 45.0, t, t)
    fp = footprint(pose, cam)
    ce, cn = image_to_ground(pose, cam, np.array([32.0]), np.array([32.0]))
    return float(np.hypot(fp[:, 0] - ce[0], fp[:, 1] - cn[0]).max())


def split_locations(ortho: Orthophoto, data_cfg: OrthoDataConfig, render_cfg: RenderConfig
                    ) -> dict[str, np.ndarray]:
    """Location centres (K×2 easting, northing, metres) per split.

    A regular grid with ``spacing_m`` whose tiles fit inside the map; the map width is cut at the ``splits``
    fractions into west-to-east bands; a location joins a band only if everything it shows (tile half-diagonal and
    drone view radius, plus ``gap_m / 2``) stays inside the band, so no split sees another split's ground.
    """
    left, bottom, right, top = ortho.bounds
    half = data_cfg.tile_size_m / 2.0
    reach = max(half * math.sqrt(2.0), view_radius_m(render_cfg)) + data_cfg.gap_m / 2.0
    es = np.arange(left + half, right - half + 1e-6, data_cfg.spacing_m)
    ns = np.arange(top - half, bottom + half - 1e-6, -data_cfg.spacing_m)
    ee, nn_ = np.meshgrid(es, ns)
    centers = np.stack([ee.ravel(), nn_.ravel()], 1)
    fr = np.asarray(data_cfg.splits, float)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise DatasetError(f"splits must be three non-negative fractions, got {data_cfg.splits}")
    edges = left + (right - left) * np.concatenate([[0.0], np.cumsum(fr / fr.sum())])
    edges[0], edges[-1] = -np.inf, np.inf  # the map border is not a split border
    out = {}
    for k, name in enumerate(("train", "val", "test")):
        lo, hi = edges[k], edges[k + 1]
        inside = (centers[:, 0] - reach >= lo) & (centers[:, 0] + reach <= hi) if fr[k] > 0 else np.zeros(len(centers),
                                                                                                          bool)
        out[name] = centers[inside]
    return out


__all__ = ["DatasetError", "FolderPairs", "OrthoDataConfig", "PairDataset", "RetrievalSet", "SyntheticOrtho",
           "TASKS", "central_square_fov_deg", "folder_task", "read_rgb", "split_locations", "sues200_task", "sues200_train",
           "university1652_task", "university1652_train", "view_radius_m"]
