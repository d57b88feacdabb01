"""Synthetic drone camera views of a flat-ground orthophoto through an ideal pinhole camera.

Frames and rotation (see also docs/architecture.md):

- World: the orthophoto's map CRS as ENU, ``X`` = easting (east), ``Y`` = northing (north), ``Z`` = up; the ground is
  the plane ``Z = 0`` and the camera centre is ``(easting, northing, altitude_m)``.
- Camera: ``x`` right, ``y`` down (image rows), ``z`` forward (optical axis); image pixel ``(u, v)`` continuous with
  the centre of pixel (0, 0) at (0.5, 0.5) and the principal point at ``(W/2, H/2)``.
- Attitude: the camera-to-world rotation is ``R = R_nadir(yaw) @ R_x(pitch) @ R_y(roll)`` (intrinsic order: yaw about
  the world vertical, then pitch about the camera ``x`` axis, then roll about the resulting camera ``y`` axis).
  ``R_nadir(yaw)`` is the nadir camera whose image top points at compass heading ``yaw`` (clockwise from north):
  its columns (camera axes in ENU) are ``x = (cos ψ, -sin ψ, 0)``, ``y = (-sin ψ, -cos ψ, 0)``, ``z = (0, 0, -1)``.
  ``R_x(pitch)`` is the right-handed rotation about ``x`` by +pitch, which turns the optical axis towards ``-y``
  (the image top): pitch > 0 looks forward. ``R_y(roll)`` is the right-handed rotation about ``y`` by +roll, which
  turns the optical axis towards ``+x``: roll > 0 looks to the right.
- A world point ``P`` projects to ``(u, v, 1) ~ K @ R.T @ (P - C)``.

Rendering outside the orthophoto gives black pixels (and so does sky above the horizon).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mobilegeo_ros.config import Config, RenderConfig
from mobilegeo_ros.geo.raster import GeoError, Orthophoto, read_orthophoto
from mobilegeo_ros.geo.tiles import pick_level
from mobilegeo_ros.util.files import atomic_directory

POSES_CSV_COLUMNS = ("file", "lat", "lon", "altitude_m", "yaw_deg", "pitch_deg", "roll_deg", "easting", "northing",
                     "crs", "center_easting", "center_northing")


@dataclass(frozen=True)
class CameraModel:
    """Ideal pinhole camera: square pixels, principal point at the image centre, no distortion."""

    width_px: int
    height_px: int
    hfov_deg: float

    def __post_init__(self) -> None:
        if self.width_px < 1 or self.height_px < 1 or not 0.0 < self.hfov_deg < 180.0:
            raise GeoError(f"bad camera model {self.width_px}×{self.height_px} px, hfov {self.hfov_deg} deg")

    @property
    def focal_px(self) -> float:
        """Focal length in pixels: ``(W/2) / tan(hfov/2)``."""
        return (self.width_px / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the intrinsic matrix
        """3×3 intrinsic matrix (continuous pixel coordinates, principal point ``(W/2, H/2)``)."""
        f = self.focal_px
        return np.array([[f, 0.0, self.width_px / 2.0], [0.0, f, self.height_px / 2.0], [0.0, 0.0, 1.0]])

    @classmethod
    def from_config(cls, render_cfg: RenderConfig) -> CameraModel:
        """The camera described by a :class:`RenderConfig`."""
        return cls(render_cfg.image_width_px, render_cfg.image_height_px, render_cfg.hfov_deg)


@dataclass(frozen=True)
class CameraPose:
    """Camera position (map CRS, metres; altitude above the flat ground) and attitude (degrees, see module doc)."""

    easting: float
    northing: float
    altitude_m: float
    yaw_deg: float
    pitch_deg: float = 0.0
    roll_deg: float = 0.0


def camera_rotation(pose: CameraPose) -> np.ndarray:
    """3×3 camera-to-world rotation ``R`` (columns: camera x, y, z axes in ENU), see the module docstring."""
    psi, th, ph = (math.radians(a) for a in (pose.yaw_deg, pose.pitch_deg, pose.roll_deg))
    cp, sp = math.cos(psi), math.sin(psi)
    r_nadir = np.array([[cp, -sp, 0.0], [-sp, -cp, 0.0], [0.0, 0.0, -1.0]])
    ct, st = math.cos(th), math.sin(th)
    r_x = np.array([[1.0, 0.0, 0.0], [0.0, ct, -st], [0.0, st, ct]])
    cr, sr = math.cos(ph), math.sin(ph)
    r_y = np.array([[cr, 0.0, sr], [0.0, 1.0, 0.0], [-sr, 0.0, cr]])
    return r_nadir @ r_x @ r_y


def attitude_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """The inverse of :func:`camera_rotation`: a 3×3 camera-to-world (ENU) rotation -> ``(yaw_deg, pitch_deg,
    roll_deg)`` in this module's convention (yaw in [0, 360), pitch and roll in (-90, 90) for a camera whose image
    down axis is not vertical, i.e. looking below the horizon at less than 90° from nadir).

    ``R = R_nadir(yaw) @ R_x(pitch) @ R_y(roll)`` has ``R_nadir(yaw).T @ R = [[cos r, 0, sin r], [sin p sin r,
    cos p, -sin p cos r], [-cos p sin r, sin p, cos p cos r]]``: the yaw makes the (0, 1) entry vanish (the image
    top axis ``-y`` points at the yaw when projected on the ground), then pitch and roll are read off."""
    r = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    yaw = math.atan2(-r[0, 1], -r[1, 1])
    cp, sp = math.cos(yaw), math.sin(yaw)
    m = np.array([[cp, -sp, 0.0], [-sp, -cp, 0.0], [0.0, 0.0, -1.0]]).T @ r
    pitch = math.atan2(m[2, 1], m[1, 1])
    roll = math.atan2(m[0, 2], m[0, 0])
    return math.degrees(yaw) % 360.0, math.degrees(pitch), math.degrees(roll)


def ground_to_image_homography(pose: CameraPose, camera: CameraModel) -> np.ndarray:
    """3×3 homography: ground point ``(e, n, 1)`` (map metres, on Z = 0) -> image ``(u, v, 1)`` up to scale."""
    if pose.altitude_m <= 0:
        raise GeoError(f"camera altitude must be above the ground, got {pose.altitude_m} m")
    m = np.array([[1.0, 0.0, -pose.easting], [0.0, 1.0, -pose.northing], [0.0, 0.0, -pose.altitude_m]])
    h = camera.K @ camera_rotation(pose).T @ m
    return h / h[2, 2] if abs(h[2, 2]) > 1e-12 else h


def project_ground_point(pose: CameraPose, camera: CameraModel, e: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(u, v)`` (continuous pixels) of ground points ``(e, n)``; NaN for points behind the camera."""
    e = np.asarray(e, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    rel = np.stack([e - pose.easting, n - pose.northing, np.full(np.broadcast(e, n).shape, -pose.altitude_m)], -1)
    cam = rel @ camera_rotation(pose)  # (R.T @ rel.T).T
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = cam[..., 0] / z, cam[..., 1] / z
    k = camera.K
    u = np.where(z > 1e-9, k[0, 0] * x + k[0, 2], np.nan)
    v = np.where(z > 1e-9, k[1, 1] * y + k[1, 2], np.nan)
    return u, v


def _ray_directions(pose: CameraPose, camera: CameraModel, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    pix = np.stack([u, v, np.ones_like(u)], -1)
    return pix @ (camera_rotation(pose) @ np.linalg.inv(camera.K)).T


def image_to_ground(pose: CameraPose, camera: CameraModel, u: Any, v: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ground point ``(e, n)`` (map metres) seen at image pixel ``(u, v)``: intersection of its ray with Z = 0.

    Raises:
        GeoError: a ray does not hit the ground in front of the camera (pixel at or above the horizon).
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    d = _ray_directions(pose, camera, *np.broadcast_arrays(u, v))
    dz = d[..., 2]
    if np.any(dz > -1e-9):
        raise GeoError(f"image_to_ground: a pixel's ray does not hit the ground (at or above the horizon) for "
                       f"pitch {pose.pitch_deg} deg, roll {pose.roll_deg} deg")
    t = pose.altitude_m / -dz
    return pose.easting + t * d[..., 0], pose.northing + t * d[..., 1]


def footprint(pose: CameraPose, camera: CameraModel) -> np.ndarray:
    """4×2 ground ``(e, n)`` of the image corners: top-left, top-right, bottom-right, bottom-left (metres)."""
    w, h = camera.width_px, camera.height_px
    e, n = image_to_ground(pose, camera, np.array([0.0, w, w, 0.0]), np.array([0.0, 0.0, h, h]))
    return np.stack([e, n], 1)


def _shift(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def render_view(ortho: Orthophoto, pose: CameraPose, camera: CameraModel) -> np.ndarray:
    """The ``H×W×3 uint8`` image of the orthophoto (flat ground) seen by ``camera`` at ``pose``.

    One perspective warp (bilinear) from the pyramid level of the orthophoto whose pixel size matches the ground
    size of an image pixel at the image centre, so strongly downscaled views do not alias. Pixels outside the
    orthophoto and above the horizon are black.
    """
    w, h = camera.width_px, camera.height_px
    hom = ground_to_image_homography(pose, camera)
    # Ground metres per image pixel at the image centre (sqrt of the local area scale).
    try:
        ge, gn = image_to_ground(pose, camera, np.array([w / 2, w / 2 + 1, w / 2]),
                                 np.array([h / 2, h / 2, h / 2 + 1]))
        du = np.array([ge[1] - ge[0], gn[1] - gn[0]])
        dv = np.array([ge[2] - ge[0], gn[2] - gn[0]])
        m_per_px = math.sqrt(abs(du[0] * dv[1] - du[1] * dv[0]))
    except GeoError:
        m_per_px = ortho.gsd_m  # the centre looks above the horizon: the visible ground is near, use full res
    level = pick_level(ortho, m_per_px / ortho.gsd_m)
    level_to_image = hom @ ortho.pixel_to_map_matrix() @ Orthophoto.pyramid_to_base(level)
    src_idx_to_dst_idx = _shift(-0.5) @ level_to_image @ _shift(0.5)
    dst_to_src = np.linalg.inv(src_idx_to_dst_idx)
    out = cv2.warpPerspective(ortho.pyramid(level), dst_to_src, (w, h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0, 0, 0))
    corners_dz = _ray_directions(pose, camera, np.array([0.0, w, w, 0.0]), np.array([0.0, 0.0, h, h]))[:, 2]
    if np.any(corners_dz > -1e-9):
        uu, vv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        out[_ray_directions(pose, camera, uu, vv)[..., 2] > -1e-9] = 0
    return out


def photometric(img: np.ndarray, rng: np.random.Generator, render_cfg: RenderConfig) -> np.ndarray:
    """Random camera-like degradation of an ``H×W×3 uint8`` RGB image (returns a new uint8 image).

    In order: brightness gain in ``1 ± brightness`` and contrast about the mean in ``1 ± contrast``, Gaussian blur
    with sigma in ``[0, blur_sigma_px]``, additive Gaussian noise with std in ``[0, noise_std]`` (8-bit levels), JPEG
    re-encoding at a quality in ``jpeg_quality`` (none if empty). Deterministic for a given ``rng`` state.
    """
    cfg = render_cfg
    gain = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    sigma = rng.uniform(0.0, cfg.blur_sigma_px)
    noise = rng.uniform(0.0, cfg.noise_std)
    out = img.astype(np.float32)
    mean = float(out.mean())
    # In place and through OpenCV where possible: this runs once per rendered training/evaluation image.
    cv2.addWeighted(out, contrast, out, 0.0, mean * (gain - contrast), dst=out)
    if sigma > 0.05:
        cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, dst=out)
    if noise > 0:
        n = rng.standard_normal(out.shape, dtype=np.float32)
        n *= np.float32(noise)
        out += n
    np.clip(out, 0.0, 255.0, out=out)
    out += np.float32(0.5)
    out = out.astype(np.uint8)
    if cfg.jpeg_quality:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise GeoError("JPEG encoding failed")
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return out


def random_poses(ortho: Orthophoto, n: int, rng: np.random.Generator, render_cfg: RenderConfig,
                 camera: CameraModel | None = None) -> list[CameraPose]:
    """``n`` random camera poses whose whole ground footprint lies inside the orthophoto.

    Altitude uniform in ``render_cfg.altitude_m``, yaw uniform in ``±max_yaw_deg``, pitch and roll uniform in
    ``±max_tilt_deg``; then the position uniform over the map minus the margin that footprint needs.

    Raises:
        GeoError: the footprint is larger than the map, or the view reaches the horizon.
    """
    camera = camera if camera is not None else CameraModel.from_config(render_cfg)
    left, bottom, right, top = ortho.bounds
    a0, a1 = render_cfg.altitude_m
    poses = []
    for _ in range(n):
        alt = rng.uniform(a0, a1)
        yaw = rng.uniform(-render_cfg.max_yaw_deg, render_cfg.max_yaw_deg)
        pitch, roll = rng.uniform(-render_cfg.max_tilt_deg, render_cfg.max_tilt_deg, 2)
        att = CameraPose(0.0, 0.0, float(alt), float(yaw), float(pitch), float(roll))
        try:
            fp = footprint(att, camera)
        except GeoError:
            raise GeoError(f"a camera tilted by up to {render_cfg.max_tilt_deg} deg with a {camera.hfov_deg} deg "
                           "field of view sees the horizon; reduce render.max_tilt_deg or render.hfov_deg") from None
        e_lo, e_hi = left - fp[:, 0].min(), right - fp[:, 0].max()
        n_lo, n_hi = bottom - fp[:, 1].min(), top - fp[:, 1].max()
        if e_lo > e_hi or n_lo > n_hi:
            span = fp.max(0) - fp.min(0)
            raise GeoError(f"the camera footprint ({span[0]:.0f} × {span[1]:.0f} m at {alt:.0f} m altitude) does "
                           f"not fit inside the map ({right - left:.0f} × {top - bottom:.0f} m); lower "
                           "render.altitude_m or use a larger map")
        poses.append(dataclasses.replace(att, easting=float(rng.uniform(e_lo, e_hi)),
                                         northing=float(rng.uniform(n_lo, n_hi))))
    return poses


def _crs_label(ortho: Orthophoto) -> str:
    epsg = ortho.crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    auth = ortho.crs.to_authority(min_confidence=25)
    return ":".join(auth) if auth else ortho.crs.to_proj4()


def render_dataset(map_path: str | Path, out_dir: str | Path, n: int, seed: int, cfg: Config,
                   altitude_m: float | None = None, max_yaw_deg: float | None = None,
                   max_tilt_deg: float | None = None, progress: bool = True) -> Path:
    """Render ``n`` random views of the orthophoto at ``map_path`` into ``out_dir`` (step function).

    Writes ``out_dir/images/view_00000.jpg`` ... , ``out_dir/poses.csv`` (columns :data:`POSES_CSV_COLUMNS`; ``file``
    relative to ``out_dir``; easting/northing and center_* in the map CRS, metres; center_* is the ground point under
    the image centre) and ``out_dir/render.json`` (camera, seed, map, render settings). ``altitude_m`` fixes the
    altitude and ``max_yaw_deg`` / ``max_tilt_deg`` override the config ranges. Deterministic for a given seed.
    The output is built in a temporary directory next to ``out_dir`` and renamed into place at the end.

    Raises:
        GeoError: ``out_dir`` exists and is not empty, or a map/pose problem (see :func:`random_poses`).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GeoError(f"output directory {str(out_dir)!r} already exists and is not empty; "
                       "choose a new directory or remove it")
    if n < 1:
        raise GeoError(f"number of views must be at least 1, got {n}")
    rcfg = dataclasses.replace(cfg.render)
    if altitude_m is not None:
        rcfg.altitude_m = [float(altitude_m), float(altitude_m)]
    if max_yaw_deg is not None:
        rcfg.max_yaw_deg = float(max_yaw_deg)
    if max_tilt_deg is not None:
        rcfg.max_tilt_deg = float(max_tilt_deg)
    ortho = read_orthophoto(map_path, cfg.map)
    camera = CameraModel.from_config(rcfg)
    rng = np.random.default_rng(seed)
    poses = random_poses(ortho, n, rng, rcfg, camera)
    crs_label = _crs_label(ortho)

    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for i, pose in enumerate(tqdm(poses, desc="render", unit="view", disable=not progress)):
            img = photometric(render_view(ortho, pose, camera), rng, rcfg)
            name = f"images/view_{i:05d}.jpg"
            if not cv2.imwrite(str(tmp / name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise GeoError(f"could not write {tmp / name}")
            lat, lon = ortho.map_to_wgs84(pose.easting, pose.northing)
            ce, cn = image_to_ground(pose, camera, camera.width_px / 2.0, camera.height_px / 2.0)
            rows.append([name, f"{float(lat):.9f}", f"{float(lon):.9f}", f"{pose.altitude_m:.3f}",
                         f"{pose.yaw_deg:.4f}", f"{pose.pitch_deg:.4f}", f"{pose.roll_deg:.4f}",
                         f"{pose.easting:.3f}", f"{pose.northing:.3f}", crs_label, f"{float(ce):.3f}",
                         f"{float(cn):.3f}"])
        with open(tmp / "poses.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(POSES_CSV_COLUMNS)
            writer.writerows(rows)
        meta = {"map_path": str(Path(map_path).resolve()), "seed": seed, "n": n, "crs": crs_label,
                "crs_wkt": ortho.crs.to_wkt(), "gsd_m": ortho.gsd_m,
                "camera": dataclasses.asdict(camera), "render": dataclasses.asdict(rcfg)}
        (tmp / "render.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def read_poses_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``poses.csv`` written by :func:`render_dataset` (numbers as floats, ``file``/``crs`` as str)."""
    path = Path(path)
    if not path.is_file():
        raise GeoError(f"poses file {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(POSES_CSV_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise GeoError(f"poses file {str(path)!r} lacks columns {sorted(missing)}")
        return [{k: (v if k in ("file", "crs") else float(v)) for k, v in row.items()} for row in reader]


__all__ = ["POSES_CSV_COLUMNS", "CameraModel", "CameraPose", "attitude_from_rotation", "camera_rotation", "footprint",
           "ground_to_image_homography", "image_to_ground", "photometric", "project_ground_point", "random_poses",
           "read_poses_csv", "render_dataset", "render_view"]
