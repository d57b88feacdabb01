"""One typed configuration for the node, the CLI and training.

Every setting lives in a dataclass below, with its unit in the name (``_m``, ``_deg``, ``_px``, ``_s``) and a one-line
description in ``metadata["help"]`` (the ROS node declares its parameters from these). YAML files are loaded with
:func:`load_config`; unknown keys and ill-typed values fail loudly with :class:`ConfigError` naming the key.

YAML layout (every section optional, every key optional)::

    map:       {tile_sizes_m: [120, 180], overlap: 0.5, ...}
    model:     {name: mobilenetv2_gem, weights: "", ...}
    index:     {kind: flat, heading: gallery_rotations, ...}
    estimator: {top_k: 10, ...}
    refine:    {enabled: true, features: sift, top_k: 5, ...}
    render:    {image_width_px: 640, ...}

A ROS parameter file (``localize_node: {ros__parameters: {...}}``) is accepted as well; there the sections are
flattened with dots (``model.backend``), see :func:`flatten` / :func:`from_flat`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key or file."""


#: Settings that existed in earlier releases, and what replaced them (named in the unknown-key error).
REMOVED_KEYS = {
    "node.qos_reliable": "QoS is set per topic: qos_overrides./<topic>.subscription.reliability (the camera "
                         "subscription follows its publishers by default; README, ROS section)",
    "refine.every_n_frames": "the tracker's keyframes replaced it (tracker.keyframe_every_s)",
    "refine.features": "renamed refine.matcher",
}


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (used by ``--help`` and ROS parameter descriptors)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class MapConfig:
    """How a GeoTIFF orthophoto is turned into satellite tiles."""

    tile_sizes_m: list[float] = _f([120.0, 180.0], "ground footprints (side, metres) of the tile pyramid levels")
    overlap: float = _f(0.5, "fraction of a tile shared with its neighbour (0 = no overlap, must be < 1)", min=0.0,
                        max=0.95)
    tile_px: int = _f(224, "side in pixels of each tile after resampling (the model input size)", min=32, max=1024)
    stretch_percentiles: list[float] = _f([1.0, 99.0], "low/high percentiles of the 8-bit contrast stretch")
    rgb_bands: list[int] = _f([], "1-based band numbers to use as R,G,B; empty = guess from the band count "
                                  "(8-band WorldView: 5,3,2; 4-band: 3,2,1; 3-band: 1,2,3; 1-band: grey)")
    pansharpen_with: str = _f("", "optional path of a higher-resolution panchromatic GeoTIFF of the same scene "
                                  "(Brovey pansharpening of the multispectral map)")


@dataclass
class ModelConfig:
    """The embedding network and its preprocessing."""

    name: str = _f("mobilenetv2_gem", "embedding model: mobilenetv2_gem (MobileNetV2 + GeM)")
    weights: str = _f("", "weights file (safetensors or a torch state dict); empty = the shipped "
                             "student models/student.safetensors (else the ImageNet MobileNetV2)")
    input_px: int = _f(224, "square input size fed to the network, pixels", min=32, max=1024)
    gem_p: float = _f(3.0, "GeM pooling exponent p (1 = average pooling, large = max pooling)", min=1.0, max=10.0)
    backend: str = _f("auto", "inference backend: auto (onnxruntime for fp32 on the CPU when installed, the fastest "
                              "here; else torch) | torch | onnxruntime | tensorrt")
    device: str = _f("cpu", "torch device (cpu, cuda, cuda:0)")
    precision: str = _f("fp32", "inference precision: fp32 | fp16 (torch on CUDA, tensorrt) | int8 (tensorrt, "
                                "calibrated engine)")
    num_threads: int = _f(2, "CPU threads for inference (0 = library default)", min=0, max=256)
    batch_size: int = _f(32, "images per forward pass when embedding many images", min=1, max=4096)


@dataclass
class IndexConfig:
    """The faiss tile index and how camera heading is handled."""

    kind: str = _f("flat", "faiss index: flat (exact) | ivf (IVF-Flat, big maps) | ivf_pq (IVF + product "
                           "quantization: pq_bytes per vector, ~40-80x smaller than flat, mission-size maps) | hnsw "
                           "(graph, big maps) | auto (flat while the vectors fit in auto_flat_max_mib, else ivf_pq)")
    heading: str = _f("gallery_rotations",
                      "yaw handling: gallery_rotations (rotated tile copies) | query_rotations (rotate the query) "
                      "| none (north-up views only)")
    rotations: int = _f(8, "number of evenly spaced rotations (gallery copies or query copies)", min=1, max=72)
    ivf_nlist: int = _f(0, "IVF lists; 0 = 4*sqrt(number of vectors)", min=0)
    ivf_nprobe: int = _f(16, "IVF lists visited per query", min=1)
    pq_bytes: int = _f(64, "ivf_pq: bytes per vector (sub-quantizers of 8 bits; must divide the embedding "
                           "dimension)", min=1, max=1024)
    auto_flat_max_mib: float = _f(512.0, "kind auto: an exact flat index while its float32 vectors take at most "
                                         "this much memory, MiB; ivf_pq above", min=0.0)
    hnsw_m: int = _f(32, "HNSW graph degree", min=4, max=128)
    hnsw_ef_search: int = _f(128, "HNSW search breadth", min=8)


@dataclass
class EstimatorConfig:
    """Turning the top-k retrieved tiles into a position, a 1-sigma uncertainty and a fix/no-fix decision."""

    top_k: int = _f(10, "tiles retrieved per query (after merging rotations)", min=1, max=1000)
    cluster_radius_m: float = _f(0.0, "matches within this distance of the best one vote for it; 0 = the smallest "
                                      "tile size", min=0.0)
    softmax_temperature: float = _f(0.02, "temperature turning cosine scores into match weights", min=1e-4)
    min_score: float = _f(0.3, "no fix below this cosine similarity of the best match", min=-1.0, max=1.0,
                          runtime=True)
    min_margin: float = _f(0.0, "no fix if the best cluster's weight share minus the next one is below this",
                           min=0.0, max=1.0, runtime=True)
    min_cluster_weight: float = _f(0.35, "no fix if the winning cluster holds less than this share of the weight",
                                   min=0.0, max=1.0, runtime=True)
    sigma_floor_m: float = _f(0.0, "smallest reported 1-sigma; 0 = a quarter of the matched tile size", min=0.0)
    sigma_scale: float = _f(1.0, "multiplier on the reported 1-sigma (calibration)", min=0.1, max=100.0)
    gate_widening: bool = _f(True, "a position prior (gnss_prior, the track, a user's area) gates the search to "
                                   "its radius; when nothing verifies inside, search rings ever wider, then the rest "
                                   "of the index; false = the gate is a hard limit", runtime=True)
    gate_widen_factor: float = _f(4.0, "each widening step multiplies the gate's radius by this", min=1.5,
                                  max=100.0, runtime=True)
    gate_widen_steps: int = _f(1, "rings searched after the gate before the rest of the index", min=0, max=10,
                               runtime=True)
    max_sigma_m: float = _f(0.0, "no fix when the reported 1-sigma of a retrieval (unrefined) fix exceeds this, "
                                 "metres; 0 = no ceiling (tile-level fixes in retrieval-only mode are kept)", min=0.0, runtime=True)


@dataclass
class RefineConfig:
    """Geometric refinement and verification of the retrieved tiles (local features + homography on the map)."""

    enabled: bool = _f(True, "register the newest view against the map around the top retrieved tiles (metre-level "
                             "fix, heading, verification); false = retrieval only (fastest)")
    matcher: str = _f("sift", "local features and their matching: sift | orb | akaze (OpenCV, ratio test) | xfeat "
                              "(learned XFeat, mutual nearest neighbour) | xfeat_lighterglue (XFeat + LighterGlue); "
                              "xfeat* are not rotation invariant: the view is turned north-up by a heading "
                              "hypothesis first (docs/matchers.md)")
    heading_hypotheses: int = _f(1, "matchers that are not rotation invariant, without a yaw prior: 1 = each "
                                    "candidate's gallery rotation as the heading; 3 = also that rotation plus and "
                                    "minus one gallery step (3 query detections)", min=1, max=3)
    top_k: int = _f(5, "retrieved tiles (best first) whose map windows are registered", min=1, max=100, runtime=True)
    max_features: int = _f(3000, "keypoints kept in the view (strongest first)", min=16, max=100000)
    block_px: int = _f(256, "map keypoints are detected once per square block of this side (cached), pixels",
                       min=64, max=4096)
    block_features: int = _f(1000, "keypoints kept per map block (strongest first)", min=16, max=100000)
    map_cache_mib: float = _f(512.0, "memory for map keypoints held at once, MiB (least recently used chunks of "
                                     "blocks are dropped beyond it and read again from INDEX_DIR/map_features)",
                              min=1.0)
    window_margin_m: float = _f(20.0, "extra ground margin around tile + view footprint in the map window, metres",
                                min=0.0)
    ratio: float = _f(0.9, "Lowe ratio test: best / second-best descriptor distance below this", min=0.1, max=1.0)
    orientation_tolerance_deg: float = _f(30.0, "keep matches whose keypoint rotation is within this of the "
                                                "dominant one; 0 = no orientation filter", min=0.0, max=180.0)
    ransac: str = _f("magsac", "robust homography estimator: magsac (cv2.USAC_MAGSAC) | ransac (cv2.RANSAC)")
    ransac_threshold_px: float = _f(3.0, "inlier threshold at the matching resolution, pixels", min=0.1,
                                    max=100.0)
    ransac_iterations: int = _f(2000, "maximum robust-estimator iterations", min=10, max=1000000)
    min_inliers: int = _f(0, "verification: fewest homography inliers; 0 = the measured default of the matcher "
                             "(sift 15, xfeat 40, xfeat_lighterglue 20; docs/matchers.md)", min=0, runtime=True)
    min_inlier_ratio: float = _f(0.1, "verification: fewest inliers per ratio-test match", min=0.0, max=1.0, runtime=True)
    min_inlier_spread: float = _f(0.05, "verification: convex hull of the inliers covers at least this fraction of "
                                        "the image", min=0.0, max=1.0)
    max_scale_ratio: float = _f(1.35, "verification: registered ground resolution within this factor of the "
                                      "expected one (altitude prior known; squared without it)", min=1.0)
    max_anisotropy: float = _f(1.6, "verification: largest ratio of the homography's two local scales (tilt, "
                                    "shear)", min=1.0)
    max_heading_error_deg: float = _f(30.0, "verification: registered heading within this of the yaw prior, "
                                            "degrees", min=0.0, max=180.0)
    ambiguity_ratio: float = _f(0.7, "no fix when another verified candidate elsewhere has at least this share of "
                                     "the best one's inliers", min=0.0, max=1.0)
    ambiguity_distance_m: float = _f(15.0, "verified candidates closer than this agree (no ambiguity), metres",
                                     min=0.0)
    stop_inliers: int = _f(100, "stop registering further candidates once one verifies with this many inliers; 0 "
                                "= register all top_k", min=0)
    fallback: str = _f("no_fix", "when no candidate verifies: no_fix (prefer no fix to a possibly wrong one; "
                                 "default) | retrieval (the retrieval fix with its larger sigma: more fixes, some "
                                 "tens of metres off)")
    sigma_floor_m: float = _f(2.5, "smallest reported 1-sigma of the registered image-centre point (building "
                                    "parallax, date changes: 1-3 m on real imagery), metres", min=0.0)
    sigma_scale: float = _f(2.0, "multiplier on the 1-sigma propagated from the inlier residuals (they ignore "
                                 "building parallax and date changes)", min=0.1, max=100.0)
    attitude_sigma_deg: float = _f(1.0, "1-sigma of the pitch/roll prior: adds altitude*tan(this) to the sigma of "
                                        "the drone position under a tilted camera, degrees", min=0.0, max=45.0)
    pose_tilt_sigma_deg: float = _f(2.0, "1-sigma of the camera tilt solved on the map without an IMU attitude (a "
                                         "cross-date homography's perspective is noisy): adds altitude*tan(this) to "
                                         "the drone position's sigma, degrees", min=0.0, max=45.0)
    max_time_s: float = _f(0.0, "time budget per query: no further candidate is registered once this is spent, "
                                "seconds; 0 = none", min=0.0)
    map_path: str = _f("", "orthophoto used for registration; empty = the map recorded in the index (index.json), "
                           "read with the map settings the index was built with")
    map_features_at_build: bool = _f(False, "mobilegeo build-index also detects the map-side features of "
                                            "refine.matcher for every pyramid level registration uses "
                                            "(INDEX_DIR/map_features); false = each block on first use")


@dataclass
class RenderConfig:
    """Synthetic drone camera views rendered from an orthophoto."""

    image_width_px: int = _f(640, "rendered image width, pixels", min=16, max=8192)
    image_height_px: int = _f(480, "rendered image height, pixels", min=16, max=8192)
    hfov_deg: float = _f(70.0, "horizontal field of view of the pinhole camera, degrees", min=5.0, max=150.0)
    altitude_m: list[float] = _f([100.0, 150.0], "altitude above ground range [min, max], metres")
    max_yaw_deg: float = _f(180.0, "yaw drawn uniformly in [-max, max], degrees clockwise from north", min=0.0,
                            max=180.0)
    max_tilt_deg: float = _f(15.0, "pitch and roll drawn uniformly in [-max, max], degrees", min=0.0, max=60.0)
    brightness: float = _f(0.25, "max relative brightness change", min=0.0, max=1.0)
    contrast: float = _f(0.25, "max relative contrast change", min=0.0, max=1.0)
    blur_sigma_px: float = _f(1.0, "max Gaussian blur sigma, pixels", min=0.0, max=10.0)
    noise_std: float = _f(4.0, "max additive Gaussian noise std, 8-bit levels", min=0.0, max=64.0)
    jpeg_quality: list[int] = _f([60, 95], "JPEG re-encoding quality range [min, max]; [] = no JPEG")


@dataclass
class TrackerConfig:
    """The camera-rate tracker (mobilegeo_ros/tracker.py): keyframes registered on the map, frames in between
    tracked frame to frame (sparse optical flow, homography chained onto the map)."""

    enabled: bool = _f(True, "track frame to frame between keyframes (a fix for every frame at camera rate); false "
                             "= every frame is localized on its own (retrieval + registration)")
    keyframe_every_s: float = _f(0.5, "register a keyframe at least this often while tracking (image stamps), "
                                      "seconds", min=0.0, runtime=True)
    keyframe_policy: str = _f("schedule", "which frames become keyframes: schedule (every keyframe_every_s) | msrm "
                                          "(a due frame is registered only when it adds information: its thumbnail's "
                                          "mutual information with the last keyframe's is below keyframe_max_mi)")
    keyframe_max_mi: float = _f(0.8, "msrm policy: a due frame sharing more than this mutual information (nats, "
                                     "Gaussian model of thumbnail correlation) with the last keyframe is redundant "
                                     "and skipped", min=0.0)
    keyframe_sigma_m: float = _f(5.0, "register a keyframe as soon as the tracked 1-sigma exceeds this, metres",
                                 min=0.0, runtime=True)
    keyframe_min_overlap: float = _f(0.6, "register a keyframe when less than this share of the keyframe's image is "
                                          "still in view", min=0.0, max=1.0, runtime=True)
    max_track_sigma_m: float = _f(20.0, "a tracked position whose 1-sigma exceeds this is no fix (track lost), "
                                        "metres", min=0.0, runtime=True)
    max_track_s: float = _f(10.0, "a track not confirmed by a verified keyframe for this long is dropped, seconds",
                            min=0.0, runtime=True)
    drift_fraction: float = _f(0.03, "tracked 1-sigma grows by this share of the distance tracked since the "
                                     "keyframe (chained homographies drift in scale and heading)", min=0.0, max=1.0)
    drift_per_frame_m: float = _f(0.05, "and by this much per tracked frame (flow noise), metres", min=0.0)
    track_width_px: int = _f(320, "frames are tracked at this width (downscaled), pixels", min=64, max=4096)
    track_features: int = _f(300, "corners tracked between consecutive frames", min=16, max=5000)
    min_track_inliers: int = _f(25, "fewer homography inliers between consecutive frames lose the track", min=8)
    gate_probability: float = _f(0.999, "a keyframe farther from the track than this chi-square (2 dof) gate is a "
                                        "relocalization event (retrieval around the track, then everywhere)",
                                 min=0.5, max=0.999999)
    gate_floor_m: float = _f(10.0, "keyframes within this distance of the track always agree, metres", min=0.0)
    max_tilt_deg: float = _f(20.0, "without camera intrinsics the pose cannot be solved: the sigma covers a tilt "
                                   "up to this (altitude * tan), degrees", min=0.0, max=60.0)


@dataclass
class NodeConfig:
    """ROS 2 node settings (topics, window, timeouts, flight-stack bridges). Used only by mobilegeo_ros/ros/."""

    window_size: int = _f(5, "views kept in the sliding window", min=1, max=64)
    window_s: float = _f(2.0, "views older than this (image stamps) leave the window, seconds; 0 = no age limit",
                         min=0.0, runtime=True)
    max_views: int = _f(3, "views fused per fix after redundancy pruning (msrm.select_views)", min=1, max=64, runtime=True)
    max_view_similarity: float = _f(0.995, "a view more similar than this (cosine) to a kept view is pruned as "
                                           "redundant", min=-1.0, max=1.0)
    stale_timeout_s: float = _f(1.0, "no image for this long: status NO_FIX and diagnostics STALE, seconds",
                                min=0.05, runtime=True)
    diagnostics_period_s: float = _f(1.0, "period of /diagnostics (and of NO_FIX while stale), seconds", min=0.05,
                                     max=60.0)
    image_transport: str = _f("raw", "which camera input is subscribed: raw (sensor_msgs/Image on image) | "
                                     "compressed (sensor_msgs/CompressedImage on image/compressed); one at a time, "
                                     "as image_transport's transport choice", runtime=True)
    qos_depth: int = _f(5, "subscription queue depth (the node itself keeps only the latest frame); per-topic QoS: "
                           "qos_overrides./<topic>.subscription.<policy> (README, ROS section)", min=1, max=1000)
    max_image_pixels: int = _f(8192 * 8192, "larger images are rejected before decoding, pixels", min=1)
    map_frame: str = _f("map", "frame_id of ~/pose, ~/velocity and ~/odometry (local ENU anchored at the index "
                               "origin, REP-105)")
    base_frame: str = _f("base_link", "the drone's body frame: frame_id of ~/fix and ~/fix_raw, child_frame_id of "
                                      "~/odometry (REP-105)")
    publish_fix_raw: bool = _f(True, "publish ~/fix_raw: every frame's own fix before the Kalman smoothing (the "
                                     "outlier gate still applies), for users who fuse themselves", runtime=True)
    publish_pose: bool = _f(True, "publish ~/pose (geometry_msgs/PoseWithCovarianceStamped, filtered)", runtime=True)
    publish_velocity: bool = _f(True, "publish ~/velocity (geometry_msgs/TwistWithCovarianceStamped, filtered)",
                                runtime=True)
    publish_odometry: bool = _f(True, "publish ~/odometry (nav_msgs/Odometry, map -> base_frame, filtered; for "
                                      "robot_localization)", runtime=True)
    keyframes_in_background: bool = _f(True, "register keyframes in a worker thread while every frame is tracked "
                                             "(camera rate); false = inline: a frame waits for its registration "
                                             "(what mobilegeo localize and the demo do)")
    opencv_threads: int = _f(1, "OpenCV worker threads (cv2.setNumThreads); 1 keeps a background keyframe "
                                "registration on one core so the per-frame tracking keeps the other; 0 = OpenCV's "
                                "default (all cores)", min=0, max=256)
    heading_feedback_s: float = _f(1.0, "without an IMU heading, the heading registered on a frame at most this "
                                        "much older is the next frames' yaw prior (narrows the search), seconds; 0 = "
                                        "off", min=0.0, runtime=True)
    prior_timeout_s: float = _f(2.0, "time matching of the priors to an image: imu/altitude/gnss_prior samples whose "
                                     "header stamp is more than this from the image's header stamp are not used "
                                     "(imu and altitude are interpolated between the two samples around the image "
                                     "stamp when both are this close, else the nearest one is used; messages with a "
                                     "zero stamp and std_msgs/Float64 altitudes are stamped with the node clock at "
                                     "receipt), seconds", min=0.0)
    use_imu_tilt: bool = _f(False, "use the IMU pitch/roll as camera tilt (camera rigidly fixed looking down); "
                                   "false = gimballed nadir camera (tilt 0)")
    camera_yaw_offset_deg: float = _f(0.0, "compass angle from the body forward axis to the image top edge, "
                                           "degrees clockwise", min=-180.0, max=180.0)
    gnss_prior_radius_m: float = _f(300.0, "search radius around a gnss_prior fix (grown by its 3-sigma), metres",
                                    min=1.0)
    dem_file: str = _f("", "GeoTIFF of ground heights above the WGS84 ellipsoid (metres, any CRS), sampled at each "
                           "fix: published altitude = ground height + height above ground; empty = none")
    ground_alt_m: float = _f(math.nan, "ground height above the WGS84 ellipsoid where node.dem_file gives none (or "
                                       "without one), metres; .nan = unknown: ~/fix altitude NaN and no altitude "
                                       "sent to the flight stack", nan_allowed=True)
    geoid_separation_m: float = _f(math.nan, "geoid height above the WGS84 ellipsoid in the mission area (EGM96 / "
                                             "EGM2008 N), metres: NMEA GGA and MAVLink get the altitude above mean sea "
                                             "level = ellipsoidal altitude - this; .nan = unknown: no MSL altitude "
                                             "sent", nan_allowed=True)
    filter_enabled: bool = _f(True, "smooth fixes with the constant-velocity Kalman filter (outlier gate, "
                                    "velocity); false publishes raw fixes")
    filter_accel_psd: float = _f(2.0, "Kalman process noise: acceleration spectral density, m^2/s^3", min=1e-6,
                                 max=1e4)
    filter_gate_probability: float = _f(0.999, "Mahalanobis gate: chi-square (2 dof) probability; fixes outside "
                                               "are rejected", min=0.5, max=0.999999)
    filter_max_rejections: int = _f(3, "consecutive rejected fixes before the filter resets on the new one",
                                    min=1, max=1000)
    filter_max_gap_s: float = _f(5.0, "a longer gap between fixes resets the filter, seconds", min=0.01)
    satellites_reported: int = _f(12, "satellite count sent to the flight stack with a fix (a camera fix has none)",
                                  min=0, max=64)
    hdop_uere_m: float = _f(5.0, "HDOP sent = 1-sigma horizontal error / this, metres", min=0.1, max=100.0)
    nmea_enabled: bool = _f(False, "send NMEA 0183 GGA + RMC + GST for every fix")
    nmea_host: str = _f("127.0.0.1", "NMEA UDP destination host (only this host:port receives datagrams)")
    nmea_port: int = _f(25100, "NMEA UDP destination port", min=1, max=65535)
    nmea_serial_device: str = _f("", "serial device for NMEA instead of UDP (e.g. /dev/ttyUSB0; needs pyserial)")
    nmea_baud: int = _f(115200, "NMEA serial baud rate", min=1200, max=4000000)
    nmea_talker: str = _f("GP", "NMEA talker id (GP, GN)")
    mavlink_enabled: bool = _f(False, "send MAVLink2 GPS_INPUT (ArduPilot GPS_TYPE 14) for every fix")
    mavlink_host: str = _f("127.0.0.1", "MAVLink UDP destination host (only this host:port receives datagrams)")
    mavlink_port: int = _f(14550, "MAVLink UDP destination port", min=1, max=65535)
    mavlink_system_id: int = _f(1, "MAVLink source system id", min=0, max=255)
    mavlink_component_id: int = _f(220, "MAVLink source component id", min=0, max=255)
    mavlink_gps_id: int = _f(0, "GPS_INPUT gps_id (ArduPilot GPS instance)", min=0, max=9)


@dataclass
class Config:
    """The whole configuration."""

    map: MapConfig = field(default_factory=MapConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    def validate(self) -> Config:
        """Check cross-field constraints and choices; returns self or raises :class:`ConfigError`."""
        choices = {
            "model.backend": (self.model.backend, ("auto", "torch", "onnxruntime", "tensorrt")),
            "model.name": (self.model.name, ("mobilenetv2_gem",)),
            "index.kind": (self.index.kind, ("flat", "ivf", "ivf_pq", "hnsw", "auto")),
            "index.heading": (self.index.heading, ("gallery_rotations", "query_rotations", "none")),
            "refine.matcher": (self.refine.matcher, ("sift", "orb", "akaze", "xfeat", "xfeat_lighterglue")),
            "refine.ransac": (self.refine.ransac, ("magsac", "ransac")),
            "refine.fallback": (self.refine.fallback, ("retrieval", "no_fix")),
            "tracker.keyframe_policy": (self.tracker.keyframe_policy, ("schedule", "msrm")),
            "node.image_transport": (self.node.image_transport, ("raw", "compressed")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        if not self.map.tile_sizes_m or any(s <= 0 for s in self.map.tile_sizes_m):
            raise ConfigError("map.tile_sizes_m: needs at least one positive size in metres")
        lo, hi = self._pair("map.stretch_percentiles", self.map.stretch_percentiles)
        if not 0 <= lo < hi <= 100:
            raise ConfigError("map.stretch_percentiles: need 0 <= low < high <= 100")
        if self.map.rgb_bands and (len(self.map.rgb_bands) != 3 or min(self.map.rgb_bands) < 1):
            raise ConfigError("map.rgb_bands: give three 1-based band numbers, e.g. [5, 3, 2]")
        a0, a1 = self._pair("render.altitude_m", self.render.altitude_m)
        if not 0 < a0 <= a1:
            raise ConfigError("render.altitude_m: need 0 < min <= max")
        if self.render.jpeg_quality:
            q0, q1 = self._pair("render.jpeg_quality", self.render.jpeg_quality)
            if not 1 <= q0 <= q1 <= 100:
                raise ConfigError("render.jpeg_quality: need 1 <= min <= max <= 100")
        for section in dataclasses.fields(self):
            obj = getattr(self, section.name)
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, float) and math.isnan(value) and not f.metadata.get("nan_allowed"):
                    raise ConfigError(f"{section.name}.{f.name}: NaN is not a value of this setting")
                lo_, hi_ = f.metadata.get("min"), f.metadata.get("max")
                if lo_ is not None and value < lo_ or hi_ is not None and value > hi_:
                    raise ConfigError(f"{section.name}.{f.name}: {value!r} is outside [{lo_}, {hi_}]")
        return self

    @staticmethod
    def _pair(key: str, values: list) -> tuple:
        if len(values) != 2:
            raise ConfigError(f"{key}: expected two values [min, max], got {values!r}")
        return values[0], values[1]


# --------------------------------------------------------------------------------------------------------------------
# Loading and type checking


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint ``hint``; ints are accepted for floats. Raises ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (list, typing.List):  # noqa: UP006
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in _NAN_WORDS:
            return math.nan  # `nan` is a double to ROS parameter files but a string to PyYAML: the same here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        # one NaN object: dataclass equality compares fields by identity first, so configs that both say "unknown"
        # compare equal (NaN != NaN)
        return math.nan if math.isnan(value) else value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


#: Strings read as NaN for a float setting (PyYAML reads ``.nan`` as a float but ``nan`` as a string).
_NAN_WORDS = frozenset({"nan", ".nan"})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(__import__(cls.__module__, fromlist=["_"])))


def _update(obj: Any, data: dict, prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(type(obj))
    known = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            if path in REMOVED_KEYS:
                raise ConfigError(f"{path!r} was removed: {REMOVED_KEYS[path]}")
            raise ConfigError(f"unknown key {path!r}; known keys here: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def from_dict(data: dict | None) -> Config:
    """Build a validated :class:`Config` from nested dicts (YAML layout)."""
    cfg = Config()
    _update(cfg, data or {}, "")
    return cfg.validate()


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"section.key": value}`` for every setting (used for ROS parameters)."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            out[f"{section.name}.{f.name}"] = getattr(obj, f.name)
    return out


def describe() -> dict[str, dict[str, Any]]:
    """``{"section.key": {"help", "type", "min", "max"}}`` for every setting."""
    out: dict[str, dict[str, Any]] = {}
    cfg = Config()
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            out[f"{section.name}.{f.name}"] = {"type": hints[f.name], **f.metadata}
    return out


def from_flat(values: dict[str, Any]) -> Config:
    """Inverse of :func:`flatten`: ``{"model.backend": "torch"}`` -> Config (unknown keys fail)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, dot, name = key.partition(".")
        if not dot:
            raise ConfigError(f"unknown key {key!r}: expected 'section.name'")
        nested.setdefault(section, {})[name] = value
    return from_dict(nested)


def load_config(path: str | Path | None) -> Config:
    """Load a YAML config file (nested layout or a ROS parameter file); ``None`` gives the defaults."""
    if path is None:
        return Config().validate()
    return from_flat(read_config_values(path))


def read_config_values(path: str | Path) -> dict[str, Any]:
    """The settings a YAML config file sets (nested layout or a ROS parameter file) as ``{"section.key": value}``,
    coerced and validated as a whole (:class:`ConfigError` naming the file and key); keys it leaves out are absent."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: top level must be a mapping")
    # ROS parameter file: {node_name: {ros__parameters: {...}}}; take the first node's parameters.
    ros_params = [v["ros__parameters"] for v in data.values() if isinstance(v, dict) and "ros__parameters" in v]
    if ros_params:
        data = {k: v for k, v in _flatten_yaml(ros_params[0]).items() if k.split(".")[0] in _SECTIONS}
    else:
        data = _flatten_yaml(data)
    try:
        full = flatten(from_flat(data))
    except ConfigError as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None
    return {k: full[k] for k in data}


_SECTIONS = {f.name for f in dataclasses.fields(Config)}

#: Sections the ROS node declares whole (runtime settings).
NODE_SECTIONS = ("estimator", "refine", "tracker", "node")
#: Settings of the map/model/index sections that say how to run the model and search the index (the node declares
#: them); the other keys of those sections describe the index and are read from its index.json.
RUNTIME_KEYS_IN_BUILD_SECTIONS = ("model.weights", "model.backend", "model.device", "model.precision",
                                  "model.num_threads", "model.batch_size", "index.ivf_nprobe", "index.hnsw_ef_search")


def node_keys() -> list[str]:
    """The settings localize_node declares as ROS parameters, in :func:`describe` order."""
    return [k for k in describe() if k.split(".")[0] in NODE_SECTIONS or k in RUNTIME_KEYS_IN_BUILD_SECTIONS]


def _flatten_yaml(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted ROS parameter dicts -> dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_yaml(v, f"{key}."))
        else:
            out[key] = v
    return out


def to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML layout) of a config."""
    return dataclasses.asdict(cfg)


__all__ = [
    "Config", "ConfigError", "EstimatorConfig", "IndexConfig", "MapConfig", "ModelConfig", "NodeConfig", "RefineConfig",
    "RenderConfig", "TrackerConfig", "describe", "flatten", "from_dict", "from_flat", "load_config", "node_keys",
    "read_config_values", "to_dict",
]
