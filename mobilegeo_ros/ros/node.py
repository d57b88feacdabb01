"""``localize_node``: the ROS 2 face of the localizer (console script ``localize_node``; ``ros2 run mobilegeo_ros
localize_node``; ``ros2 launch mobilegeo_ros localize.launch.py``).

A thin adapter: callbacks copy message fields into plain values; decoding, the window, retrieval and filtering live in
:mod:`mobilegeo_ros.ros.pipeline` and the pure core. Inference runs in one worker thread fed by a 1-slot mailbox (the
newest frame wins, older unprocessed frames are dropped and counted), so latency stays bounded when the camera is
faster than the model.

Parameters: the runtime settings of :class:`mobilegeo_ros.config.Config` (``config.node_keys()``: the estimator,
refine, tracker and node sections, how to run the model and search the index) as ``section.key`` (type, description
and range from ``config.describe()``), plus ``config_file`` (a YAML file read by the CLI's loader; its values are the
defaults that ``--ros-args -p``/``--params-file`` override) and ``index_dir``. Settings that describe the index (map,
model identity, index kind/heading/rotations) are read from its index.json, not declared. Unknown or ill-typed
parameters, or a missing/mismatched index or model file, stop the start-up with a message and exit code 2.

Topics (relative, so namespaces and remaps apply):
  in:  the camera, one transport at a time (``node.image_transport``, as image_transport's choice): ``image``
       (sensor_msgs/Image, ``raw``) or ``<image>/compressed`` (sensor_msgs/CompressedImage, ``compressed``), where
       ``<image>`` is the resolved (remapped) ``image`` topic; ``camera_info`` (optional, field of view) is the sibling
       of the image topic (``/cam/image_raw`` -> ``/cam/camera_info``) unless remapped itself; ``imu``
       (sensor_msgs/Imu: heading and, with ``node.use_imu_tilt``, tilt; REP-103 orientation of body FLU in ENU, see
       :mod:`.pipeline`), ``altitude`` (std_msgs/Float64, metres above ground, unstamped), ``altitude_range``
       (sensor_msgs/Range from a downward rangefinder: height above ground, stamped), ``gnss_prior``
       (sensor_msgs/NavSatFix bounding the search). Priors are matched to each image's header stamp
       (:class:`.pipeline.PriorState`, ``node.prior_timeout_s``).
  QoS: every input is overridable the ROS 2 way, ``qos_overrides./<resolved topic>.subscription.reliability|depth|
       history``. Without an override, priors and camera_info are subscribed best effort (compatible with every
       publisher), and the camera subscription follows its publishers (reliable when all offer reliable: large raw
       images over best-effort DDS are lost by Fast DDS's default transports), re-checked every diagnostics period.
       When publishers exist but no image arrives, or a publisher's QoS is incompatible, a throttled warning names
       the topic and the fix.
  out: ``~/fix`` (sensor_msgs/NavSatFix in ``node.base_frame``, image stamp, STATUS_NO_FIX when not confident,
       covariance DIAGONAL_KNOWN in ENU m², Kalman-filtered when ``node.filter_enabled``; altitude above the
       WGS84 ellipsoid from ``node.dem_file`` / ``node.ground_alt_m``, else NaN), ``~/fix_raw`` (the same
       per frame before the Kalman smoothing), ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped in
       ``node.map_frame``: local ENU anchored at the ground at the index origin; z:
       :class:`mobilegeo_ros.tracker.TrackResult` ``u``), ``~/velocity``
       (geometry_msgs/TwistWithCovarianceStamped, ENU m/s from the Kalman filter), ``~/odometry`` (nav_msgs/Odometry,
       ``map_frame`` -> ``base_frame``, REP-105: pose in the map frame, twist in the body frame), ``/diagnostics``
       (diagnostic_msgs/DiagnosticArray every ``node.diagnostics_period_s``). Output QoS is overridable as well.
  Run-time parameters: the settings marked ``runtime`` in :mod:`mobilegeo_ros.config` (thresholds, the keyframe
  schedule, the stale timeout, outputs on/off) accept ``ros2 param set`` with the same validation as the config
  loader; every other parameter is read-only (set at start-up).
"""

from __future__ import annotations

import math
import posixpath
import signal
import sys
import threading
import time
import typing
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped, TwistWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix, NavSatStatus, Range
from std_msgs.msg import Float64

from mobilegeo_ros import config as config_mod
from mobilegeo_ros.estimator.status import FixStatus
from mobilegeo_ros.geo.raster import GeoError
from mobilegeo_ros.model import resolve_backend
from mobilegeo_ros.ros.pipeline import (
    STALE, UNKNOWN_VARIANCE, Frame, LatestMailbox, LocalizationPipeline, Output, PriorState, Stats, diagnostic_level,
    heading_to_quaternion,
)

NODE_NAME = "localize_node"
#: 1-sigma of a heading measured by a map registration or a track from one (degrees; registered headings agree with
#: the true heading to about a degree on the dgsamples views, docs/tracker.md).
HEADING_SIGMA_REGISTERED_DEG = 3.0
_INT_MAX = 2**63 - 1
#: The spin loop of :func:`main` wakes at least this often to see a shutdown request (seconds).
SPIN_POLL_S = 0.1
_LEVEL_BYTES = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR,
                3: DiagnosticStatus.STALE}
#: Settings that ``ros2 param set`` may change while the node runs (``runtime=True`` in mobilegeo_ros.config); the
#: components read them from the shared Config on every frame.
RUNTIME_PARAMETERS = frozenset(k for k, m in config_mod.describe().items() if m.get("runtime"))
#: Seconds between repeated warnings of the same kind (rejected frames, silent camera topic, incompatible QoS).
WARN_THROTTLE_S = 10.0
#: Publishers present this long without any image arriving: warn (seconds).
SILENT_CAMERA_WARN_S = 3.0


class StartupError(Exception):
    """Start-up refused (bad parameter, missing or mismatched file); the message says which and why."""


def _param_type(hint) -> Parameter.Type:
    if hint is bool:
        return Parameter.Type.BOOL
    if hint is int:
        return Parameter.Type.INTEGER
    if hint is float:
        return Parameter.Type.DOUBLE
    if hint is str:
        return Parameter.Type.STRING
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return {int: Parameter.Type.INTEGER_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
                str: Parameter.Type.STRING_ARRAY}[item]
    raise TypeError(f"no ROS parameter type for {hint}")  # pragma: no cover - programming error


def _descriptor(name: str, meta: dict, ptype: Parameter.Type) -> ParameterDescriptor:
    runtime = bool(meta.get("runtime"))
    d = ParameterDescriptor(name=name, type=ptype.value, description=meta.get("help", ""), read_only=not runtime,
                            additional_constraints="changeable at run time (ros2 param set)" if runtime else
                            "read-only: set at start-up (restart the node to change it)")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return d
    if ptype == Parameter.Type.INTEGER:
        d.integer_range = [IntegerRange(from_value=int(lo if lo is not None else -_INT_MAX),
                                        to_value=int(hi if hi is not None else _INT_MAX), step=0)]
    elif ptype == Parameter.Type.DOUBLE:
        d.floating_point_range = [FloatingPointRange(from_value=float(lo if lo is not None else -sys.float_info.max),
                                                     to_value=float(hi if hi is not None else sys.float_info.max),
                                                     step=0.0)]
    return d


def _node_only_from_file(path: str) -> dict:
    """Node-only keys (``index_dir``) of a ROS parameter file's ``ros__parameters`` (others are config keys)."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    for v in data.values():
        if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict):
            return {k: val for k, val in v["ros__parameters"].items() if k == "index_dir"}
    return {}


def _altitude_variance(out: Output) -> float:
    """Variance (m²) of the published altitude: the prior's (1 m assumed: the message carries none) or the solved
    camera pose's; :data:`UNKNOWN_VARIANCE` when the altitude is unknown."""
    known = math.isfinite(out.altitude_m) and math.isfinite(out.altitude_sigma_m)
    return float(out.altitude_sigma_m) ** 2 if known else UNKNOWN_VARIANCE


def _stamp_s(stamp) -> float:
    return stamp.sec + 1e-9 * stamp.nanosec


class _CameraInput:
    """The camera subscription of a :class:`LocalizeNode`: which topic (``node.image_transport``; compressed =
    ``<image>/compressed`` unless ``image/compressed`` is remapped itself), which QoS (``qos_overrides`` when given,
    else following the publishers: reliable when all of them offer reliable), and the warnings when publishers exist
    but nothing arrives. ``camera_info`` is the image topic's sibling unless remapped itself. Used from the executor
    thread only."""

    def __init__(self, node: LocalizeNode):
        self.node = node
        self.raw_topic = node.resolve_topic_name("image")
        remapped = node.resolve_topic_name("image/compressed")
        self.compressed_topic = (remapped if remapped != node.resolve_topic_name("image/compressed", only_expand=True)
                                 else self.raw_topic + "/compressed")
        info = node.resolve_topic_name("camera_info")
        self.info_topic = (info if info != node.resolve_topic_name("camera_info", only_expand=True)
                           else posixpath.join(posixpath.dirname(self.raw_topic), "camera_info"))
        self.sub = None
        self.topic, self.transport, self.reliability = "", "", ""
        self.auto = True
        self.publishers = 0
        self._silent_since: float | None = None

    @property
    def override_prefix(self) -> str:
        return f"qos_overrides.{self.topic}.subscription."

    def _publishers_reliable(self, infos) -> bool:
        return bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)

    def subscribe(self) -> None:
        """(Re)create the subscription for the configured transport and the publishers' QoS."""
        n = self.node
        transport = n.cfg.node.image_transport
        self.topic = self.compressed_topic if transport == "compressed" else self.raw_topic
        msg_type, callback = (CompressedImage, n._on_compressed) if transport == "compressed" else (Image, n._on_image)
        self.auto = not any(k.startswith(self.override_prefix) for k in n._parameter_overrides)
        reliable = self.auto and self._publishers_reliable(n.get_publishers_info_by_topic(self.topic))
        if self.sub is not None:
            n.destroy_subscription(self.sub)
        self.sub = n._subscribe(msg_type, self.topic, callback, n._input_qos(reliable), overridable=not self.auto)
        self.transport = transport
        self.reliability = ("reliable" if self.sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                            else "best_effort")
        n.get_logger().info(f"camera: {msg_type.__name__} on {self.topic}, {self.reliability} "
                            f"({'following the publishers' if self.auto else 'qos_overrides'}), camera_info on "
                            f"{self.info_topic}")

    def check(self, now: float, snap: dict) -> None:
        """Every diagnostics period: follow the publishers' reliability; warn when publishers exist but nothing
        arrives."""
        n = self.node
        infos = n.get_publishers_info_by_topic(self.topic)
        self.publishers = len(infos)
        if self.auto and infos and self._publishers_reliable(infos) != (self.reliability == "reliable"):
            self.subscribe()
        if not infos or now - snap["last_image_s"] <= SILENT_CAMERA_WARN_S:
            self._silent_since = None
            return
        if self._silent_since is None:
            self._silent_since = now
        if now - self._silent_since < SILENT_CAMERA_WARN_S:
            return
        offered = sorted({i.qos_profile.reliability.name.lower() for i in infos})
        hint = ("large raw images (e.g. 640x480 rgb8, 0.9 MB) sent best effort are lost by Fast DDS's default "
                "transports: publish the camera with reliable QoS, or set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in "
                "both processes, or use the compressed transport (node.image_transport: compressed)"
                if self.reliability == "best_effort" else
                "check the publisher's message type and its QoS (qos_overrides."
                f"{self.topic}.subscription.reliability)")
        n.get_logger().warning(
            f"no image received on {self.topic} for {now - self._silent_since + SILENT_CAMERA_WARN_S:.0f} s although "
            f"{len(infos)} publisher(s) offer it ({', '.join(offered)}; subscribed {self.reliability}): {hint}",
            throttle_duration_sec=WARN_THROTTLE_S)


class LocalizeNode(Node):
    """See the module docstring. Construct, then :meth:`start` (loads the model and index), then spin."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.cfg, self.config_file, self.index_dir = self._load_parameters()
        self.pipeline: LocalizationPipeline | None = None
        self.worker: threading.Thread | None = None
        self.bridges: list = []
        self.mailbox = LatestMailbox()
        self.stats = Stats()
        self.priors = PriorState(self.cfg)
        self._prev_snapshot: dict | None = None
        self._hfov_deg: float | None = None
        self._camera: _CameraInput | None = None
        self._inputs_received: dict[str, int] = {"camera_info": 0, "imu": 0, "altitude": 0,
                                                  "altitude_range": 0, "gnss_prior": 0}

    # -----------------------------------------------------------------------------------------------------------
    # Parameters

    def _declare(self, name: str, default, descriptor: ParameterDescriptor):
        try:
            if isinstance(default, list) and not default:
                # an empty list carries no element type: declare the type explicitly
                p = self.declare_parameter(name, Parameter.Type(descriptor.type), descriptor)
                value = p.value
                return [] if value is None else list(value)
            value = self.declare_parameter(name, default, descriptor).value
            return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
        except rclpy.exceptions.InvalidParameterTypeException as e:
            raise StartupError(f"parameter {name}: wrong type ({e}); expected {Parameter.Type(descriptor.type).name}"
                               ) from None
        except rclpy.exceptions.InvalidParameterValueException as e:
            raise StartupError(f"parameter {name}: {e}") from None

    def _widen_int_overrides(self, types: dict[str, Parameter.Type]) -> None:
        """Accept ``2`` for a double parameter (YAML and ``-p x:=2`` give integers), as the config loader does."""
        for name, ptype in types.items():
            p = self._parameter_overrides.get(name)
            if p is None:
                continue
            if ptype == Parameter.Type.DOUBLE and p.type_ == Parameter.Type.INTEGER:
                self._parameter_overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(p.value))
            elif ptype == Parameter.Type.DOUBLE_ARRAY and p.type_ == Parameter.Type.INTEGER_ARRAY:
                self._parameter_overrides[name] = Parameter(name, Parameter.Type.DOUBLE_ARRAY,
                                                            [float(v) for v in p.value])

    def _load_parameters(self) -> tuple[config_mod.Config, str, str]:
        """Declare the parameters and build the Config: the settings that describe the index (map.*, the model's
        identity, index.kind/heading/rotations...) come from the index's index.json; the runtime settings
        (:func:`config_mod.node_keys`) from the config file, overridden by ``--ros-args``."""
        str_t = Parameter.Type.STRING
        config_file = self._declare("config_file", "", _descriptor(
            "config_file", {"help": "YAML config (nested layout or ROS parameter file) giving the defaults that "
                                    "--ros-args override; empty = built-in defaults"}, str_t))
        try:
            file_values = config_mod.read_config_values(config_file) if config_file else {}
            from_file = _node_only_from_file(config_file)
        except config_mod.ConfigError as e:
            raise StartupError(str(e)) from None
        except (OSError, yaml.YAMLError) as e:
            raise StartupError(f"config file {config_file!r}: {e}") from None
        index_dir = self._declare("index_dir", str(from_file.get("index_dir", "")), _descriptor(
            "index_dir", {"help": "tile index directory (mobilegeo build-index output)"}, str_t))
        node_keys = config_mod.node_keys()
        defaults = self._index_settings(str(index_dir), file_values)
        defaults.update({k: v for k, v in file_values.items() if k in node_keys})
        described = config_mod.describe()
        types = {k: _param_type(described[k]["type"]) for k in node_keys}
        self._widen_int_overrides(types)
        for k in node_keys:
            defaults[k] = self._declare(k, defaults[k], _descriptor(k, described[k], types[k]))
        unknown = sorted(n for n in set(self._parameter_overrides) - set(self._parameters)
                         if not n.startswith("qos_overrides."))
        if unknown:
            raise StartupError("; ".join(self._why_not_a_parameter(u) for u in unknown))
        try:
            cfg = config_mod.from_flat(defaults)
        except config_mod.ConfigError as e:
            raise StartupError(f"parameter {e}") from None
        return cfg, str(config_file), str(index_dir)

    def _index_settings(self, index_dir: str, file_values: dict) -> dict:
        """All settings, flat: the index's own (map, model identity, index) where its index.json records them, the
        config file's otherwise; a config file contradicting the index is warned about (the index wins)."""
        from mobilegeo_ros.index.facts import IndexFacts, IndexFileError

        settings = config_mod.flatten(config_mod.from_flat(file_values))
        try:
            recorded = config_mod.flatten(IndexFacts.read(index_dir).build_config())
        except (IndexFileError, OSError, config_mod.ConfigError):
            return settings  # no readable index yet: start() says why, or an old index serves with the file's values
        node_keys = set(config_mod.node_keys())
        for key, value in recorded.items():
            if key in node_keys or key.split(".")[0] not in ("map", "model", "index"):
                continue
            if key in file_values and file_values[key] != value:
                self.get_logger().warning(f"config file sets {key} = {file_values[key]!r}, but the index was built "
                                          f"with {value!r}: the index's value is used")
            settings[key] = value
        for key in ("model.weights", "index.ivf_nprobe", "index.hnsw_ef_search"):
            settings[key] = recorded[key]  # the index's build values are the defaults of these runtime settings
        return settings

    @staticmethod
    def _why_not_a_parameter(name: str) -> str:
        if name in config_mod.REMOVED_KEYS:
            return f"parameter {name} was removed: {config_mod.REMOVED_KEYS[name]}"
        if name in config_mod.describe():
            if name.split(".")[0] in ("map", "model", "index"):
                return (f"parameter {name} describes the tile index: {NODE_NAME} reads it from the index's "
                        "index.json (rebuild the index to change it)")
            return f"parameter {name} is not a setting of {NODE_NAME} (it is used by the mobilegeo CLI)"
        return (f"unknown parameter {name} (see config/localize.yaml for the parameters of {NODE_NAME})")

    # -----------------------------------------------------------------------------------------------------------
    # Start-up

    def start(self) -> None:
        """Load the model and index, create the interfaces and start the worker. Raises StartupError."""
        from mobilegeo_ros.localizer import Localizer

        if not self.index_dir:
            raise StartupError("parameter index_dir is empty: give the tile index directory "
                               "(--ros-args -p index_dir:=/path/to/index)")
        if not Path(self.index_dir).is_dir():
            raise StartupError(f"index directory {self.index_dir!r} does not exist")
        self.get_logger().info(f"starting: loading the index {self.index_dir} and the model, then a warm-up")
        try:
            loc = Localizer.from_files(self.index_dir, self.cfg)
        except (ValueError, RuntimeError, OSError) as e:
            raise StartupError(f"cannot load the index {self.index_dir!r} or model "
                               f"{self.cfg.model.weights or '(shipped default)'!r}: {e}") from None
        try:
            self.pipeline = LocalizationPipeline(loc, self.cfg, self.stats)
        except GeoError as e:  # node.dem_file missing, unreadable or not georeferenced
            raise StartupError(f"node.dem_file: {e}") from None
        # the first frame would otherwise pay the one-time costs (seconds on a real map): run the real path now
        try:
            warm = self.pipeline.warm_up()
        except Exception as e:  # noqa: BLE001 - whatever breaks here would break every frame: refuse, one line
            raise StartupError(f"warm-up on the index {self.index_dir!r} failed: {type(e).__name__}: {e}") from None
        self.get_logger().info(
            f"warm-up: {warm.seconds:.2f} s (model, faiss search, map features of {warm.map_levels} pyramid "
            f"levels, a view cut from the map: {warm.status.value})")
        self._make_bridges()
        self._make_interfaces()
        self.worker = threading.Thread(target=self._work, name="localize_worker", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"ready: index {self.index_dir} (origin {loc.origin_lat:.6f}, {loc.origin_lon:.6f}), backend "
            f"{resolve_backend(self.cfg.model)} (model.backend {self.cfg.model.backend}), window "
            f"{self.cfg.node.window_size} views / {self.cfg.node.window_s} s, "
            f"config {self.config_file or '(defaults)'}")

    def _make_bridges(self) -> None:
        n = self.cfg.node
        try:
            if n.nmea_enabled:
                from mobilegeo_ros.io.nmea import NmeaBridge
                self.bridges.append(NmeaBridge(n.nmea_host, n.nmea_port, n.nmea_serial_device, n.nmea_baud,
                                               n.nmea_talker, n.hdop_uere_m))
            if n.mavlink_enabled:
                from mobilegeo_ros.io.mavlink import MavlinkBridge
                self.bridges.append(MavlinkBridge(n.mavlink_host, n.mavlink_port, n.mavlink_system_id,
                                                  n.mavlink_component_id, n.mavlink_gps_id, n.hdop_uere_m))
        except (ValueError, OSError, ImportError) as e:
            raise StartupError(f"flight-stack bridge: {e}") from None

    def _make_interfaces(self) -> None:
        n = self.cfg.node
        self._camera = _CameraInput(self)
        self._camera.subscribe()
        prior_qos = self._input_qos(reliable=False)
        self._subscribe(CameraInfo, self._camera.info_topic, self._on_camera_info, prior_qos)
        self._subscribe(Imu, "imu", self._on_imu, prior_qos)
        self._subscribe(Float64, "altitude", self._on_altitude, prior_qos)
        self._subscribe(Range, "altitude_range", self._on_altitude_range, prior_qos)
        self._subscribe(NavSatFix, "gnss_prior", self._on_gnss_prior, prior_qos)
        overridable = QoSOverridingOptions.with_default_policies()
        self.pub_fix = self.create_publisher(NavSatFix, "~/fix", 10, qos_overriding_options=overridable)
        self.pub_fix_raw = self.create_publisher(NavSatFix, "~/fix_raw", 10, qos_overriding_options=overridable)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10,
                                              qos_overriding_options=overridable)
        self.pub_vel = self.create_publisher(TwistWithCovarianceStamped, "~/velocity", 10,
                                             qos_overriding_options=overridable)
        self.pub_odom = self.create_publisher(Odometry, "~/odometry", 10, qos_overriding_options=overridable)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._refuse_stray_qos_overrides()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # steady clock: diagnostics and staleness keep working when use_sim_time is set and /clock stops
        self.create_timer(n.diagnostics_period_s, self._on_diagnostics_timer,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _input_qos(self, reliable: bool) -> QoSProfile:
        """Default QoS of an input (before ``qos_overrides``): keep the last ``node.qos_depth``, volatile."""
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.cfg.node.qos_depth,
                          reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)

    def _subscribe(self, msg_type, topic: str, callback, qos: QoSProfile, overridable: bool = True):
        """A subscription whose QoS ``qos_overrides./<topic>.subscription.*`` may override, with a warning that names
        the topic and the fix when a publisher's QoS is incompatible. Without overrides (the camera following its
        publishers) an incompatible publisher is not warned about: the next check re-subscribes to match it."""
        resolved = self.resolve_topic_name(topic)
        events = SubscriptionEventCallbacks(
            incompatible_qos=(lambda info, t=resolved: self._on_incompatible_qos(t, info)) if overridable
            else (lambda info: None), use_default_callbacks=False)
        return self.create_subscription(
            msg_type, topic, callback, qos, event_callbacks=events,
            qos_overriding_options=QoSOverridingOptions.with_default_policies() if overridable else None)

    def _on_incompatible_qos(self, topic: str, info) -> None:
        from rclpy.qos import qos_policy_name_from_kind

        policy = qos_policy_name_from_kind(info.last_policy_kind)
        self.get_logger().warning(
            f"{topic}: a publisher offers QoS incompatible with this subscription ({policy}); its messages are not "
            f"received. Match it with qos_overrides.{topic}.subscription.{policy.lower()}:=<value> (e.g. "
            "best_effort for a best-effort driver)", throttle_duration_sec=WARN_THROTTLE_S)

    def _refuse_stray_qos_overrides(self) -> None:
        """A ``qos_overrides.<topic>...`` naming no topic of this node is a typo (often the unremapped name). Both
        camera transports' topics count (the transport can change at run time)."""
        camera = tuple(f"qos_overrides.{t}.subscription." for t in (self._camera.raw_topic,
                                                                     self._camera.compressed_topic))
        stray = sorted(k for k in self._parameter_overrides
                       if k.startswith("qos_overrides.") and not self.has_parameter(k) and not k.startswith(camera))
        if stray:
            topics = sorted({t for t, _ in self.get_subscriber_names_and_types_by_node(self.get_name(),
                                                                                         self.get_namespace())}
                            | {t for t, _ in self.get_publisher_names_and_types_by_node(self.get_name(),
                                                                                          self.get_namespace())})
            raise StartupError(f"unknown parameter(s): {', '.join(stray)}: no such topic of {NODE_NAME} (its topics "
                               f"after remapping: {', '.join(topics)})")

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """``ros2 param set`` on a run-time setting: validated as the config loader validates, then applied to the
        Config every component reads. Read-only settings never get here (rclpy refuses them by their descriptor)."""
        changes = {p.name: p.value for p in params if p.name in RUNTIME_PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        flat = config_mod.flatten(self.cfg)
        flat.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in changes.items()})
        try:
            new = config_mod.from_flat(flat)
        except config_mod.ConfigError as e:
            return SetParametersResult(successful=False, reason=str(e))
        for key in changes:
            section, name = key.split(".", 1)
            old = getattr(getattr(self.cfg, section), name)
            value = getattr(getattr(new, section), name)
            setattr(getattr(self.cfg, section), name, value)
            self.get_logger().info(f"parameter {key}: {old!r} -> {value!r}")
        if "node.image_transport" in changes and self._camera.transport != self.cfg.node.image_transport:
            self._camera.subscribe()
        return SetParametersResult(successful=True)

    # -----------------------------------------------------------------------------------------------------------
    # Callbacks (executor thread): copy fields, hand over, count

    def _enqueue(self, frame: Frame) -> None:
        self.stats.note_received(frame.received_s)
        if self.mailbox.put(frame):
            with self.stats.lock:
                self.stats.dropped += 1

    def _on_image(self, msg: Image) -> None:
        self._enqueue(Frame("raw", {"height": msg.height, "width": msg.width, "encoding": msg.encoding,
                                    "is_bigendian": msg.is_bigendian, "step": msg.step, "data": msg.data},
                            _stamp_s(msg.header.stamp), msg.header.stamp, frame_id=msg.header.frame_id))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._enqueue(Frame("compressed", {"format": msg.format, "data": msg.data}, _stamp_s(msg.header.stamp),
                            msg.header.stamp, frame_id=msg.header.frame_id))

    def _count_input(self, kind: str) -> None:
        with self.stats.lock:
            self._inputs_received[kind] += 1

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._count_input("camera_info")
        fx = float(msg.k[0])
        if msg.width > 0 and math.isfinite(fx) and fx > 0:
            self._hfov_deg = math.degrees(2.0 * math.atan(msg.width / (2.0 * fx)))
            self.priors.set_hfov(self._hfov_deg)

    def _prior_error(self, what: str, e: Exception) -> None:
        self.stats.note_error("prior_errors", f"{what}: {e}")
        self.get_logger().warning(f"{what} prior ignored: {e}", throttle_duration_sec=WARN_THROTTLE_S)

    def _prior_stamp_s(self, stamp=None) -> float:
        """A prior's time for matching it to image stamps: its header stamp, or for a zero stamp (a driver that does
        not stamp) or no header (std_msgs/Float64) the node clock now (ROS time: the bag's clock under use_sim_time)."""
        if stamp is not None and (stamp.sec != 0 or stamp.nanosec != 0):
            return _stamp_s(stamp)
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_imu(self, msg: Imu) -> None:
        self._count_input("imu")
        q = msg.orientation
        try:
            if msg.orientation_covariance[0] == -1.0:
                raise ValueError("no orientation in this message (orientation_covariance[0] = -1, REP-145)")
            self.priors.set_imu(q.x, q.y, q.z, q.w, self._prior_stamp_s(msg.header.stamp))
        except ValueError as e:
            self._prior_error("imu", e)

    def _on_altitude(self, msg: Float64) -> None:
        self._count_input("altitude")
        try:
            self.priors.set_altitude(float(msg.data), self._prior_stamp_s())
        except ValueError as e:
            self._prior_error("altitude", e)

    def _on_altitude_range(self, msg: Range) -> None:
        self._count_input("altitude_range")
        try:
            self.priors.set_range(float(msg.range), float(msg.min_range), float(msg.max_range),
                                  self._prior_stamp_s(msg.header.stamp))
        except ValueError as e:
            self._prior_error("altitude_range", e)

    def _on_gnss_prior(self, msg: NavSatFix) -> None:
        self._count_input("gnss_prior")
        cov = None
        if msg.position_covariance_type != NavSatFix.COVARIANCE_TYPE_UNKNOWN:
            cov = (float(msg.position_covariance[0]), float(msg.position_covariance[4]))
        self.priors.set_gnss(float(msg.latitude), float(msg.longitude), int(msg.status.status), cov,
                             self._prior_stamp_s(msg.header.stamp))

    # -----------------------------------------------------------------------------------------------------------
    # Worker thread

    def _work(self) -> None:
        while not self.mailbox.closed:
            frame = self.mailbox.get(timeout=0.2)
            if frame is None:
                continue
            out = self.pipeline.process(frame, self.priors.priors(frame.stamp_s))  # priors at the image stamp
            if out is None:  # rejected (undecodable) or failed: counted in the stats, shown in the log
                self.get_logger().warning(f"frame stamped {frame.stamp_s:.3f} not localized: "
                                          f"{self.stats.snapshot()['last_error']}",
                                          throttle_duration_sec=WARN_THROTTLE_S)
                continue
            try:
                self._publish(out)
            except Exception as e:  # noqa: BLE001 - publishing during shutdown; anything else is shown
                if not rclpy.ok(context=self.context):
                    return
                self.stats.note_error("errors", f"publish: {type(e).__name__}: {e}")

    def _publish(self, out: Output) -> None:
        n = self.cfg.node
        self.pub_fix.publish(self._navsatfix(out))
        if n.publish_fix_raw:
            self.pub_fix_raw.publish(self._navsatfix(out, raw=True))
        if out.status.is_fix:
            if n.publish_pose:
                self.pub_pose.publish(self._pose(out))
            if n.publish_velocity and out.vel_en is not None:
                self.pub_vel.publish(self._twist(out))
            if n.publish_odometry:
                self.pub_odom.publish(self._odometry(out))
        self._send_bridges(out.flight_stack_fix(self.cfg))

    def _send_bridges(self, fix) -> None:
        for b in self.bridges:
            try:
                b.send(fix)
            except Exception as e:  # noqa: BLE001 - a bridge failure (network, encoding) must not stop the fixes
                self.stats.note_error("errors", f"{type(b).__name__}: {e}")

    def _no_fix(self, stamp) -> NavSatFix:
        msg = NavSatFix()
        msg.header.stamp = stamp
        msg.header.frame_id = self.cfg.node.base_frame
        msg.status.service = 0  # no satellite system: the position comes from the camera
        msg.status.status = NavSatStatus.STATUS_NO_FIX
        msg.latitude = msg.longitude = msg.altitude = math.nan
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        return msg

    def _navsatfix(self, out: Output, raw: bool = False) -> NavSatFix:
        """``~/fix`` (filtered) or, with ``raw``, ``~/fix_raw`` (the frame's own fix before the smoothing)."""
        msg = self._no_fix(out.frame.stamp)
        if not out.status.is_fix:
            return msg
        lat, lon, cov_en = (out.raw_lat, out.raw_lon, out.raw_cov_en) if raw else (out.lat, out.lon, out.cov_en)
        msg.status.status = NavSatStatus.STATUS_FIX
        msg.latitude, msg.longitude = float(lat), float(lon)
        # altitude above the WGS84 ellipsoid (ground height from node.dem_file / node.ground_alt_m + height above
        # ground); NaN with a huge variance when either is unknown, as the message definition asks
        known_alt = math.isfinite(out.alt_m)
        msg.altitude = float(out.alt_m) if known_alt else math.nan
        cov = [0.0] * 9
        cov[0], cov[4] = float(cov_en[0, 0]), float(cov_en[1, 1])
        cov[8] = _altitude_variance(out) if known_alt else UNKNOWN_VARIANCE
        msg.position_covariance = cov
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
        return msg

    def _pose(self, out: Output) -> PoseWithCovarianceStamped:
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = out.frame.stamp
        msg.header.frame_id = self.cfg.node.map_frame
        p = msg.pose.pose.position
        p.x, p.y = float(out.e), float(out.n)
        p.z = float(out.u) if math.isfinite(out.u) else 0.0
        cov = [0.0] * 36
        cov[0], cov[1], cov[6], cov[7] = (float(out.cov_en[0, 0]), float(out.cov_en[0, 1]), float(out.cov_en[1, 0]),
                                          float(out.cov_en[1, 1]))
        cov[14] = _altitude_variance(out)
        cov[21] = cov[28] = UNKNOWN_VARIANCE  # roll and pitch are not estimated
        o = msg.pose.pose.orientation
        if out.heading_deg is not None and math.isfinite(out.heading_deg):
            o.x, o.y, o.z, o.w = heading_to_quaternion(out.heading_deg)
            if out.status in (FixStatus.VERIFIED, FixStatus.TRACKED):
                cov[35] = math.radians(HEADING_SIGMA_REGISTERED_DEG) ** 2  # measured on the map
            else:
                # heading quantised to the gallery rotation step: uniform error over one step
                step = math.radians(360.0 / max(self.cfg.index.rotations, 1))
                cov[35] = step**2 / 12.0
        else:
            o.x, o.y, o.z, o.w = 0.0, 0.0, 0.0, 1.0
            cov[35] = UNKNOWN_VARIANCE
        msg.pose.covariance = cov
        return msg

    def _odometry(self, out: Output) -> Odometry:
        """nav_msgs/Odometry (REP-105): pose of ``base_frame`` in ``map_frame`` (as ``~/pose``), twist in
        ``base_frame`` (x forward, y left): the filter's ENU velocity turned by the heading; unknown (huge variance)
        without a heading or a velocity."""
        msg = Odometry()
        msg.header.stamp = out.frame.stamp
        msg.header.frame_id = self.cfg.node.map_frame
        msg.child_frame_id = self.cfg.node.base_frame
        msg.pose = self._pose(out).pose
        cov = [0.0] * 36
        cov[14] = cov[21] = cov[28] = cov[35] = UNKNOWN_VARIANCE
        heading = out.heading_deg if out.heading_deg is not None and math.isfinite(out.heading_deg) else None
        if out.vel_en is None or heading is None:
            cov[0] = cov[7] = UNKNOWN_VARIANCE
        else:
            h = math.radians(heading)  # clockwise from north: forward = (sin h, cos h) in ENU, left = (-cos h, sin h)
            rot = np.array([[math.sin(h), math.cos(h)], [-math.cos(h), math.sin(h)]])
            v = rot @ np.asarray(out.vel_en, float)
            vc = rot @ np.asarray(out.vel_cov, float) @ rot.T
            msg.twist.twist.linear.x, msg.twist.twist.linear.y = float(v[0]), float(v[1])
            cov[0], cov[1], cov[6], cov[7] = float(vc[0, 0]), float(vc[0, 1]), float(vc[1, 0]), float(vc[1, 1])
        msg.twist.covariance = cov
        return msg

    def _twist(self, out: Output) -> TwistWithCovarianceStamped:
        msg = TwistWithCovarianceStamped()
        msg.header.stamp = out.frame.stamp
        msg.header.frame_id = self.cfg.node.map_frame
        msg.twist.twist.linear.x, msg.twist.twist.linear.y = float(out.vel_en[0]), float(out.vel_en[1])
        cov = [0.0] * 36
        vc = out.vel_cov
        cov[0], cov[1], cov[6], cov[7] = float(vc[0, 0]), float(vc[0, 1]), float(vc[1, 0]), float(vc[1, 1])
        cov[14] = cov[21] = cov[28] = cov[35] = UNKNOWN_VARIANCE
        msg.twist.covariance = cov
        return msg

    # -----------------------------------------------------------------------------------------------------------
    # Diagnostics and staleness

    def _on_diagnostics_timer(self) -> None:
        now = time.monotonic()
        snap = self.stats.snapshot()
        level, message = diagnostic_level(snap, self._prev_snapshot, now, self.cfg.node.stale_timeout_s)
        self._prev_snapshot = snap
        stamp = self.get_clock().now().to_msg()
        self._camera.check(now, snap)
        if level == STALE:
            # nobody may keep using an old position: say NO_FIX explicitly (same frame as every fix)
            self.pub_fix.publish(self._no_fix(stamp))
            if self.bridges:
                from mobilegeo_ros.io import FlightStackFix
                self._send_bridges(FlightStackFix(stamp_s=time.time(), valid=False))
        self.pub_diag.publish(self._diagnostics(snap, level, message, stamp, now))

    def _diagnostics(self, snap: dict, level: int, message: str, stamp, now: float) -> DiagnosticArray:
        def f(x: float, fmt: str = ".1f") -> str:
            return "nan" if x is None or not math.isfinite(x) else format(x, fmt)

        values = {
            "input_rate_hz": f(self.stats.input_rate_hz(now), ".2f"),
            "inference_latency_ms": f(snap["latency_last_ms"]),
            "inference_latency_mean_ms": f(snap["latency_mean_ms"]),
            "inference_latency_p99_ms": f(snap["latency_p99_ms"]),
            "window_size": str(snap["window"]),
            "match_score": f(snap["last_score"], ".3f"),
            "frames_received": str(snap["received"]),
            "frames_processed": str(snap["processed"]),
            "frames_dropped": str(snap["dropped"]),
            "frames_rejected": str(snap["rejected"]),
            "frames_failed": str(snap["errors"]),
            "fixes": str(snap["fixes"]),
            "fixes_verified": str(snap["by_status"].get("verified", 0)),
            "fixes_tracked": str(snap["by_status"].get("tracked", 0)),
            "fixes_retrieval": str(snap["by_status"].get("retrieval", 0)),
            "no_fixes": str(snap["no_fixes"]),
            "filter_rejected": str(snap["filter_rejected"]),
            "prior_errors": str(snap["prior_errors"]),
            "last_status": snap["last_status"],
            "last_reason": snap["last_reason"],
            "last_error": snap["last_error"],
            "seconds_since_image": f(now - snap["last_image_s"], ".2f"),
            "camera_hfov_deg": f(self._hfov_deg) if self._hfov_deg else "unknown",
            "image_topic": self._camera.topic,
            "image_transport": self.cfg.node.image_transport,
            "image_reliability": self._camera.reliability,
            "image_publishers": str(self._camera.publishers),
            "camera_info_topic": self._camera.info_topic,
            **{f"{k}_received": str(v) for k, v in self._inputs_received.items()},
            "config_file": self.config_file,
            "index_dir": self.index_dir,
            "backend": resolve_backend(self.cfg.model),
            "window_size_max": str(self.cfg.node.window_size),
            "warmup_s": f(self.pipeline.warm.seconds, ".2f") if self.pipeline.warm else "nan",
            "warmup_status": self.pipeline.warm.status.value if self.pipeline.warm else "",
            "first_frame_latency_ms": f(snap["latency_first_ms"]),
            "map_loads_after_ready": str(self.pipeline.map_loads_since_warm_up()),
        }
        st = DiagnosticStatus(level=_LEVEL_BYTES[level], name=f"{self.get_name()}: localization",
                              message=message, hardware_id="camera",
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
        arr = DiagnosticArray()
        arr.header.stamp = stamp
        arr.status = [st]
        return arr

    # -----------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker and close the bridges (idempotent)."""
        self.mailbox.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None
        if self.pipeline is not None:
            self.pipeline.close()
        for b in self.bridges:
            b.close()
        self.bridges = []


class _ShutdownRequested(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM during start-up (model, index, warm-up)."""


class _ShutdownSignals:
    """SIGINT/SIGTERM of the node process (rclpy's own handlers are not installed).

    A terminal's Ctrl-C reaches every process of its group: ``ros2 launch`` and the node get SIGINT together, and
    launch then forwards another SIGINT (SIGTERM after its timeout) to the node. So the FIRST signal requests the
    shutdown, during start-up by raising :class:`_ShutdownRequested` (start-up can take seconds) and while spinning
    by setting :attr:`requested` (the spin loop wakes every ``SPIN_POLL_S``), and every later signal is ignored
    (SIG_IGN): nothing can interrupt the cleanup (``destroy_node``) with a KeyboardInterrupt, nor kill the process
    while the interpreter exits (Python resets its own handlers to the default action, which kills with -2, during
    finalization; it leaves SIG_IGN alone).
    """

    def __init__(self) -> None:
        self.requested: str = ""  # the name of the signal that asked for the shutdown
        self._raise = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.requested:
            return
        self.requested = signal.Signals(signum).name
        self.ignore()
        if self._raise:
            self._raise = False
            raise _ShutdownRequested(self.requested)

    def start_up_done(self) -> None:
        """From now on a signal only sets :attr:`requested` (the spin loop or the cleanup is running)."""
        self._raise = False

    @staticmethod
    def ignore() -> None:
        """Ignore SIGINT and SIGTERM from now on (the shutdown is under way or the exit status is decided)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def main(args: list[str] | None = None) -> int:
    """Console script ``localize_node``. Exit codes: 0 clean shutdown (SIGINT/SIGTERM, repeated or not, at any
    point), 2 start-up refused (one line ``start-up refused: ...`` on stderr)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    signals = _ShutdownSignals()
    node: LocalizeNode | None = None
    executor = None
    try:
        rclpy.init(args=sys.argv if args is None else args, signal_handler_options=SignalHandlerOptions.NO)
        try:
            node = LocalizeNode()
            node.start()
        except StartupError as e:
            if signals.requested:
                # The shutdown signal came first and a library turned it into its own error (a compiled module's
                # initialisation interrupted by it raises ImportError, e.g. onnxruntime's): shut down, refuse nothing.
                rclpy.logging.get_logger(NODE_NAME).info(f"{signals.requested}: shutting down during start-up")
                return 0
            rclpy.logging.get_logger(NODE_NAME).fatal(f"start-up refused: {e}")
            return 2
        signals.start_up_done()
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        while not signals.requested:
            executor.spin_once(timeout_sec=SPIN_POLL_S)
        node.get_logger().info(f"{signals.requested}: shutting down")
        return 0
    except _ShutdownRequested as e:
        rclpy.logging.get_logger(NODE_NAME).info(f"{e}: shutting down during start-up")
        return 0
    except ExternalShutdownException:  # the context was shut down from elsewhere
        return 0
    finally:
        signals.start_up_done()  # a first signal arriving during the cleanup must not raise either
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        signals.ignore()  # the exit status is decided: a late signal must not kill the exiting interpreter


if __name__ == "__main__":
    sys.exit(main())
