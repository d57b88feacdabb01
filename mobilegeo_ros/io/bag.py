"""rosbag2 files of synthetic flights, written and read with the pure-Python ``rosbags`` library (no rclpy).

:func:`write_flight_bag` renders a :func:`mobilegeo_ros.geo.flight.flight_poses` flight from an orthophoto into a
rosbag2 (sqlite3 or mcap storage, metadata version 8 so that ROS 2 Humble and later read it; messages serialised with
the Humble type definitions). Topics (all header stamps = flight time since :data:`EPOCH_NS`; frame ids in
:data:`FRAME_IDS`):

==============================  =============================  =====================================================
``/camera/image_raw``           sensor_msgs/Image (rgb8)       or, with ``compressed=True``:
``/camera/image_raw/compressed`` sensor_msgs/CompressedImage   JPEG (``format: "rgb8; jpeg compressed bgr8"``)
``/camera/camera_info``         sensor_msgs/CameraInfo         pinhole K, P (no distortion), image size
``/imu``                        sensor_msgs/Imu                orientation only (see below); rates/accelerations
                                                               marked unknown (covariance[0] = -1)
``/altitude``                   std_msgs/Float64               height above the (flat) ground, metres
``/ground_truth/fix``           sensor_msgs/NavSatFix          WGS84 drone position; altitude = height above ground
==============================  =============================  =====================================================

IMU convention (REP-103, the one :mod:`mobilegeo_ros.ros.pipeline` decodes): the quaternion rotates the body frame
FLU (x forward, y left, z up) into ENU (x east, y north, z up); ZYX angles ``yaw = 90° - heading`` (heading clockwise
from north), ``pitch`` > 0 nose down, ``roll`` > 0 right side down. The camera is rigidly fixed looking down with its
image top edge along the body x axis, so camera ``pitch_deg = -pitch`` and ``roll_deg = -roll`` (run the node with
``node.use_imu_tilt: true`` to use them; see :func:`mobilegeo_ros.geo.flight.body_attitude`).

Per time step the priors (camera_info, imu, altitude, ground truth) are logged at the stamp and the image
:data:`IMAGE_LOG_DELAY_NS` later (its transport delay), so a player sends the priors first. The bag's
``metadata.yaml`` ``custom_data`` holds ``mobilegeo`` (JSON: map path and map settings, CRS, camera, flight settings,
seed) so that replay reports can draw the map.

:func:`read_bag` reads any rosbag2 (ours or a user's), registering message types it finds in the bag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mobilegeo_ros.config import Config
from mobilegeo_ros.geo.flight import DEFAULT_SPEED_M_S, body_attitude, flight_poses
from mobilegeo_ros.geo.raster import Orthophoto, read_orthophoto
from mobilegeo_ros.geo.render import CameraModel, CameraPose, photometric, render_view
from mobilegeo_ros.io.images import encode_compressed, encode_image

#: First header stamp of a flight: 2024-01-01T00:00:00Z, nanoseconds since the Unix epoch.
EPOCH_NS = 1_704_067_200_000_000_000
#: The image of a time step is logged this long after its stamp (the priors at the stamp), nanoseconds.
IMAGE_LOG_DELAY_NS = 1_000_000
#: rosbag2 metadata version written (8: the newest whose offered_qos_profiles layout ROS 2 Humble parses).
BAG_VERSION = 8

TOPIC_IMAGE = "/camera/image_raw"
TOPIC_COMPRESSED = "/camera/image_raw/compressed"
TOPIC_CAMERA_INFO = "/camera/camera_info"
TOPIC_IMU = "/imu"
TOPIC_ALTITUDE = "/altitude"
TOPIC_TRUTH = "/ground_truth/fix"
FRAME_IDS = {"camera": "camera", "imu": "base_link", "gps": "base_link"}
CUSTOM_DATA_KEY = "mobilegeo"

MSG_IMAGE = "sensor_msgs/msg/Image"
MSG_COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (MSG_IMAGE, MSG_COMPRESSED)

STORAGES = ("sqlite3", "mcap")


class BagError(ValueError):
    """A bag cannot be written or read; the message names the path and the problem."""


def typestore():
    """The rosbags type store used for writing (ROS 2 Humble message definitions)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def attitude_quaternion(heading_deg: float, pitch_deg: float, roll_deg: float) -> tuple[float, float, float, float]:
    """REP-103 orientation ``(x, y, z, w)`` of body FLU in ENU from a compass heading (clockwise from north) and the
    ROS pitch (> 0 nose down) and roll (> 0 right side down), degrees; ZYX order ``q = qz(yaw) qy(pitch) qx(roll)``
    with ``yaw = 90° - heading``."""
    y, p, r = (math.radians(a) / 2.0 for a in (90.0 - heading_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    return (cy * cp * sr - sy * sp * cr, cy * sp * cr + sy * cp * sr, sy * cp * cr - cy * sp * sr,
            cy * cp * cr + sy * sp * sr)


def flight_frames(ortho: Orthophoto, poses: list[tuple[float, CameraPose]], camera: CameraModel, cfg: Config,
                  seed: int) -> Iterator[np.ndarray]:
    """The camera images (``H×W×3`` uint8 RGB) of a flight: rendered views with random photometric degradation
    (``cfg.render``), deterministic for ``seed`` (the frames a bag written with the same arguments holds)."""
    rng = np.random.default_rng([seed, 1])
    for _, pose in poses:
        yield photometric(render_view(ortho, pose, camera), rng, cfg.render)


def _stamp(ts, t_ns: int):
    time_t = ts.types["builtin_interfaces/msg/Time"]
    return time_t(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def _header(ts, t_ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, t_ns), frame_id=frame_id)


def _camera_info(ts, t_ns: int, camera: CameraModel):
    k = camera.K
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, t_ns, FRAME_IDS["camera"]), height=camera.height_px, width=camera.width_px,
        distortion_model="plumb_bob", d=np.zeros(5), k=k.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def _imu(ts, t_ns: int, pose: CameraPose):
    heading, pitch, roll = body_attitude(pose)
    x, y, z, w = attitude_quaternion(heading, pitch, roll)
    vec3 = ts.types["geometry_msgs/msg/Vector3"]
    unknown = np.zeros(9)
    unknown[0] = -1.0  # REP: covariance[0] = -1 means "not provided"
    orientation_cov = np.diag([math.radians(0.5) ** 2] * 3).reshape(-1)
    return ts.types["sensor_msgs/msg/Imu"](
        header=_header(ts, t_ns, FRAME_IDS["imu"]),
        orientation=ts.types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
        orientation_covariance=orientation_cov, angular_velocity=vec3(x=0.0, y=0.0, z=0.0),
        angular_velocity_covariance=unknown.copy(), linear_acceleration=vec3(x=0.0, y=0.0, z=0.0),
        linear_acceleration_covariance=unknown.copy())


def _navsatfix(ts, t_ns: int, lat: float, lon: float, alt: float):
    status_t = ts.types["sensor_msgs/msg/NavSatStatus"]
    fix_t = ts.types["sensor_msgs/msg/NavSatFix"]
    return fix_t(header=_header(ts, t_ns, FRAME_IDS["gps"]),
                 status=status_t(status=status_t.STATUS_FIX, service=status_t.SERVICE_GPS),
                 latitude=float(lat), longitude=float(lon), altitude=float(alt),
                 position_covariance=np.diag([1e-4, 1e-4, 1e-4]).reshape(-1),
                 position_covariance_type=fix_t.COVARIANCE_TYPE_DIAGONAL_KNOWN)


def _image_msg(ts, t_ns: int, rgb: np.ndarray, compressed: bool, jpeg_quality: int):
    header = _header(ts, t_ns, FRAME_IDS["camera"])
    if compressed:
        enc = encode_compressed(rgb, "jpeg", jpeg_quality)
        # image_transport's format string for a JPEG of a colour image
        return ts.types[MSG_COMPRESSED](header=header, format="rgb8; jpeg compressed bgr8",
                                        data=np.frombuffer(enc["data"], np.uint8))
    f = encode_image(rgb, "rgb8")
    return ts.types[MSG_IMAGE](header=header, height=f["height"], width=f["width"], encoding=f["encoding"],
                               is_bigendian=f["is_bigendian"], step=f["step"],
                               data=np.frombuffer(bytes(f["data"]), np.uint8))


def write_flight_bag(out: str | Path, map_path: str | Path, cfg: Config, frames: int = 100, rate_hz: float = 10.0,
                     seed: int = 0, storage: str = "sqlite3", compressed: bool = False,
                     speed_m_s: float = DEFAULT_SPEED_M_S, altitude_m: float | None = None, jpeg_quality: int = 90,
                     progress: bool = False) -> Path:
    """Write a rosbag2 directory ``out`` of a synthetic flight over the orthophoto at ``map_path`` (step function).

    Args:
        out: bag directory to create (must not exist); built in a temporary directory next to it, then renamed.
        map_path: georeferenced orthophoto (read with ``cfg.map``).
        cfg: ``cfg.render`` gives the camera (size, field of view), altitude range, tilt limit and photometric
            degradation.
        frames: number of camera frames; the flight lasts ``frames / rate_hz`` seconds.
        rate_hz: camera (and imu, altitude, ground truth) rate, Hz.
        seed: same seed, same bag contents.
        storage: ``sqlite3`` or ``mcap``.
        compressed: JPEG CompressedImage on ``/camera/image_raw/compressed`` instead of rgb8 on ``/camera/image_raw``.
        speed_m_s, altitude_m: see :func:`mobilegeo_ros.geo.flight.flight_poses`.
        jpeg_quality: JPEG quality of compressed frames (1..100).

    Raises:
        BagError: ``out`` exists, bad storage or counts. GeoError: map problems (see ``flight_poses``).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    out = Path(out)
    if out.exists():
        raise BagError(f"output bag {str(out)!r} already exists; choose a new path or remove it")
    if storage not in STORAGES:
        raise BagError(f"storage {storage!r} is not one of {', '.join(STORAGES)}")
    if frames < 1 or not rate_hz > 0:
        raise BagError(f"need at least one frame and a positive rate, got {frames} frames at {rate_hz} Hz")
    if not 1 <= jpeg_quality <= 100:
        raise BagError(f"jpeg quality {jpeg_quality} is outside 1..100")
    ortho = read_orthophoto(map_path, cfg.map)
    camera = CameraModel.from_config(cfg.render)
    poses = flight_poses(ortho, frames / rate_hz, rate_hz, seed, cfg.render, speed_m_s=speed_m_s,
                         altitude_m=altitude_m, camera=camera)[:frames]
    ts = typestore()
    meta = {
        "map_path": str(Path(map_path).resolve()), "map": dataclasses.asdict(cfg.map), "crs_wkt": ortho.crs.to_wkt(),
        "bounds": list(ortho.bounds), "camera": dataclasses.asdict(camera), "frames": frames, "rate_hz": rate_hz,
        "seed": seed, "speed_m_s": speed_m_s, "altitude_m": altitude_m, "compressed": compressed,
        "epoch_ns": EPOCH_NS, "camera_mount": "rigid", "recommended_node_parameters": {"node.use_imu_tilt": True},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(tmp_root / out.name, version=BAG_VERSION, storage_plugin=plugin)
        writer.set_custom_data(CUSTOM_DATA_KEY, json.dumps(meta))
        writer.open()
        try:
            img_topic, img_type = (TOPIC_COMPRESSED, MSG_COMPRESSED) if compressed else (TOPIC_IMAGE, MSG_IMAGE)
            conns = {name: writer.add_connection(topic, msgtype, typestore=ts) for name, topic, msgtype in (
                ("info", TOPIC_CAMERA_INFO, "sensor_msgs/msg/CameraInfo"), ("imu", TOPIC_IMU, "sensor_msgs/msg/Imu"),
                ("alt", TOPIC_ALTITUDE, "std_msgs/msg/Float64"), ("truth", TOPIC_TRUTH, "sensor_msgs/msg/NavSatFix"),
                ("image", img_topic, img_type))}
            float64 = ts.types["std_msgs/msg/Float64"]
            images = flight_frames(ortho, poses, camera, cfg, seed)
            if progress:
                from tqdm import tqdm
                images = tqdm(images, total=len(poses), desc="make-bag", unit="frame")
            for (t_s, pose), rgb in zip(poses, images, strict=False):
                t_ns = EPOCH_NS + round(t_s * 1e9)
                lat, lon = ortho.map_to_wgs84(pose.easting, pose.northing)
                for name, msg in (("info", _camera_info(ts, t_ns, camera)), ("imu", _imu(ts, t_ns, pose)),
                                  ("alt", float64(data=float(pose.altitude_m))),
                                  ("truth", _navsatfix(ts, t_ns, float(lat), float(lon), pose.altitude_m))):
                    writer.write(conns[name], t_ns, ts.serialize_cdr(msg, msg.__msgtype__))
                msg = _image_msg(ts, t_ns, rgb, compressed, jpeg_quality)
                writer.write(conns["image"], t_ns + IMAGE_LOG_DELAY_NS, ts.serialize_cdr(msg, msg.__msgtype__))
        finally:
            writer.close()
        os.rename(tmp_root / out.name, out)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Reading


def bag_metadata(path: str | Path) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` mapping of a bag's ``metadata.yaml`` (BagError if missing or invalid)."""
    meta_path = Path(path) / "metadata.yaml"
    if not meta_path.is_file():
        raise BagError(f"{str(path)!r} is not a rosbag2 directory (no metadata.yaml)")
    try:
        data = yaml.safe_load(meta_path.read_text())
        return dict(data["rosbag2_bagfile_information"])
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise BagError(f"{str(meta_path)!r} is not valid rosbag2 metadata: {e}") from None


def flight_info(path: str | Path) -> dict[str, Any] | None:
    """The flight description :func:`write_flight_bag` stored in the bag (None for other bags)."""
    custom = bag_metadata(path).get("custom_data") or {}
    raw = custom.get(CUSTOM_DATA_KEY)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise BagError(f"bag {str(path)!r}: custom_data {CUSTOM_DATA_KEY!r} is not JSON: {e}") from None


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    bag_metadata(path)  # a clear error before rosbags' own
    reader = Reader(path)
    try:
        reader.open()
    except ReaderError as e:
        raise BagError(f"cannot open bag {str(path)!r}: {e}") from None
    return reader


def _register_bag_types(ts, connections) -> set[str]:
    """Register message definitions stored in the bag that the type store lacks; returns the types it can decode."""
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    known = set(ts.types)
    for c in connections:
        if c.msgtype in known or c.msgdef is None or not c.msgdef.data:
            continue
        try:
            fmt = getattr(c.msgdef.format, "name", str(c.msgdef.format)).lower()
            types = (get_types_from_idl(c.msgdef.data) if "idl" in fmt
                     else get_types_from_msg(c.msgdef.data, c.msgtype))
            ts.register(types)
            known = set(ts.types)
        except Exception:  # noqa: BLE001 - an undecodable custom type only makes that topic unreadable
            continue
    return known


def bag_topics(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{topic: {"type": msgtype, "count": messages}}`` of a bag."""
    reader = _open_reader(Path(path))
    try:
        return {name: {"type": t.msgtype, "count": t.msgcount} for name, t in reader.topics.items()}
    finally:
        reader.close()


def read_bag(path: str | Path, topics: list[str] | None = None, raw: bool = False
             ) -> Iterator[tuple[str, int, Any]]:
    """Messages of a rosbag2 (sqlite3 or mcap) in log-time order: ``(topic, log_time_ns, msg)``.

    ``msg`` is the rosbags dataclass of the message (fields as in the .msg definition; arrays as numpy), or with
    ``raw=True`` the serialized CDR bytes exactly as stored (what a ROS publisher sends). ``topics``: only these
    (BagError names any the bag lacks). Message types missing from the Humble type store are registered from the
    definitions stored in the bag; topics whose types cannot be decoded raise BagError (unless ``raw``).
    """
    path = Path(path)
    reader = _open_reader(path)
    try:
        conns = list(reader.connections)
        if topics is not None:
            missing = sorted(set(topics) - {c.topic for c in conns})
            if missing:
                raise BagError(f"bag {str(path)!r} has no topic(s) {', '.join(missing)}; it has "
                               f"{', '.join(sorted({c.topic for c in conns}))}")
            conns = [c for c in conns if c.topic in set(topics)]
        ts = typestore()
        if not raw:
            known = _register_bag_types(ts, conns)
            bad = sorted({f"{c.topic} ({c.msgtype})" for c in conns if c.msgtype not in known})
            if bad:
                raise BagError(f"bag {str(path)!r}: cannot decode the message type of {', '.join(bad)}")
        for conn, t_ns, data in reader.messages(connections=conns):
            yield conn.topic, int(t_ns), (bytes(data) if raw else ts.deserialize_cdr(data, conn.msgtype))
    finally:
        reader.close()


def stamp_ns(msg: Any) -> int:
    """Header stamp of a rosbags message, nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def decode_bag_image(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """A rosbags Image or CompressedImage message -> ``H×W×3`` uint8 RGB (io.images decoders)."""
    from mobilegeo_ros.io.images import DEFAULT_MAX_PIXELS, decode_compressed, decode_image

    limit = max_pixels or DEFAULT_MAX_PIXELS
    if msg.__msgtype__ == MSG_COMPRESSED:
        return decode_compressed(msg.format, msg.data, max_pixels=limit)
    if msg.__msgtype__ == MSG_IMAGE:
        return decode_image(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data,
                            max_pixels=limit)
    raise BagError(f"{msg.__msgtype__} is not an image message")


__all__ = [
    "BAG_VERSION", "BagError", "EPOCH_NS", "FRAME_IDS", "IMAGE_LOG_DELAY_NS", "IMAGE_TYPES", "MSG_COMPRESSED",
    "MSG_IMAGE", "STORAGES", "TOPIC_ALTITUDE", "TOPIC_CAMERA_INFO", "TOPIC_COMPRESSED", "TOPIC_IMAGE", "TOPIC_IMU",
    "TOPIC_TRUTH", "attitude_quaternion", "bag_metadata", "bag_topics", "decode_bag_image", "flight_frames",
    "flight_info", "read_bag", "stamp_ns", "typestore", "write_flight_bag",
]
