"""Replay a rosbag2 into ``localize_node`` (a separate process) and report how well it localized.

:func:`run_replay`:

1. reads the bag with :mod:`mobilegeo_ros.io.bag` (rosbags; sqlite3 or mcap), picks the camera topic (``--topic`` or
   the bag's only Image/CompressedImage topic) and the ground truth (``/ground_truth/fix``, when present);
2. starts the node: ``python -m mobilegeo_ros.ros.node --ros-args -p index_dir:=... -p config_file:=...
   -r image:=<camera topic>`` (or ``image/compressed``), plus ``imu``/``altitude``/``camera_info`` remaps when the bag
   has the topics :func:`~mobilegeo_ros.io.bag.write_flight_bag` writes. Without ``--config`` the node gets the config
   the index was built with (``index.json``), so model and index always match. The bag's recommended node parameters
   (e.g. ``node.use_imu_tilt`` for a rigidly mounted camera) are applied unless ``params`` overrides them. Child and
   player use their own ``ROS_DOMAIN_ID`` so parallel replays do not see each other;
3. waits until every player publisher is matched by the node's subscriptions and the player's ``~/fix`` subscription
   by the node's publisher;
4. publishes the bag's messages (the serialized bytes as stored, like ``ros2 bag play``) with their log-time spacing
   divided by ``rate``, and ``/clock`` at each message's log time (for ``use_sim_time``). Publishers are RELIABLE and
   the node's camera subscription is set reliable (``qos_overrides``) unless ``reliable=False``, so frames are lost
   only where the node itself drops them (its 1-slot mailbox when inference is slower than the camera);
5. records ``/localize_node/fix`` (and the last ``/diagnostics``), stops the node with SIGINT and matches each fix to
   its image by header stamp;
6. writes ``report_dir/summary.json``, ``track.csv``, ``track.png`` and ``node.log`` (atomically: a temporary
   directory renamed into place).

Latency = receive time of a fix in the player minus the time the player published its image (one monotonic clock).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mobilegeo_ros.io.bag import (
    IMAGE_TYPES, TOPIC_ALTITUDE, TOPIC_CAMERA_INFO, TOPIC_IMU, TOPIC_TRUTH, BagError, bag_topics, flight_info,
    read_bag, stamp_ns, typestore,
)
from mobilegeo_ros.util.files import atomic_directory

NODE_NAME = "localize_node"
FIX_TOPIC = f"/{NODE_NAME}/fix"
TRACK_COLUMNS = ["stamp_ns", "t_s", "status", "lat", "lon", "sigma_m", "truth_lat", "truth_lon", "error_m",
                 "latency_ms", "truth_e_m", "truth_n_m", "fix_e_m", "fix_n_m"]
#: Node inputs the replay remaps to the topics :func:`mobilegeo_ros.io.bag.write_flight_bag` writes.
PRIOR_REMAPS = {"imu": (TOPIC_IMU, "sensor_msgs/msg/Imu"), "altitude": (TOPIC_ALTITUDE, "std_msgs/msg/Float64"),
                "camera_info": (TOPIC_CAMERA_INFO, "sensor_msgs/msg/CameraInfo")}


class ReplayError(RuntimeError):
    """The replay could not run (bad bag or topic, node refused to start or died); the message says why."""


@dataclass
class _Recorder:
    """Fixes and diagnostics received by the player (callbacks on the executor thread)."""

    fixes: dict[int, list[tuple[float, Any]]] = field(default_factory=dict)  # stamp_ns -> [(receipt, msg)]
    last_fix_s: float = 0.0
    diagnostics: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_fix(self, msg) -> None:
        now = time.monotonic()
        key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.fixes.setdefault(key, []).append((now, msg))
            self.last_fix_s = now

    def on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if st.name.startswith(NODE_NAME) or NODE_NAME in st.name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in st.values}
                    self.diagnostics["level"] = str(int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                                    else int(st.level))
                    self.diagnostics["message"] = st.message


def _msg_class(msgtype: str):
    """rclpy message class of a ``pkg/msg/Type`` name (ReplayError when its package is not installed)."""
    pkg, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise ReplayError(f"message type {msgtype} is not installed for rclpy (pip package ros-{pkg.replace('_', '-')}"
                          f" or a ROS 2 install)") from None


def pick_image_topic(topics: dict[str, dict[str, Any]], topic: str | None, bag: Path) -> tuple[str, str]:
    """(topic, msgtype) of the camera topic: ``topic`` if given (must be an image topic), else the only one."""
    if topic is not None:
        if topic not in topics:
            raise ReplayError(f"bag {str(bag)!r} has no topic {topic!r}; it has {', '.join(sorted(topics))}")
        if topics[topic]["type"] not in IMAGE_TYPES:
            raise ReplayError(f"topic {topic!r} of bag {str(bag)!r} is a {topics[topic]['type']}, not "
                              "sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage")
        return topic, topics[topic]["type"]
    images = sorted(t for t, v in topics.items() if v["type"] in IMAGE_TYPES)
    if len(images) != 1:
        raise ReplayError(f"bag {str(bag)!r} has {len(images)} image topics ({', '.join(images) or 'none'}); "
                          "choose one with --topic")
    return images[0], topics[images[0]]["type"]


def _index_config_file(index_dir: Path, dest: Path) -> Path:
    """Write the config the index was built with (:class:`~mobilegeo_ros.index.facts.IndexFacts`) as a YAML file
    for the node's config_file."""
    from mobilegeo_ros.index.facts import IndexFacts, IndexFileError

    try:
        stored = IndexFacts.read(index_dir).build_config_dict
    except IndexFileError as e:
        raise ReplayError(f"{e}; pass --config") from None
    dest.write_text(yaml.safe_dump(stored, sort_keys=False))
    return dest


def _param_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(_param_value(x) for x in v) + "]"
    return str(v)


def _pick_domain_id() -> int:
    """A ROS domain id for one replay (1..100 minus ids used by the test suite); ROS_DOMAIN_ID is not inherited
    because a parallel replay would share it."""
    used = {0, 62}
    return random.SystemRandom().choice([d for d in range(1, 101) if d not in used])


def geodesic_error_m(lat: np.ndarray, lon: np.ndarray, lat_t: np.ndarray, lon_t: np.ndarray) -> np.ndarray:
    """Horizontal distances (metres, WGS84 ellipsoid through pyproj) between fixes and ground truth."""
    from pyproj import Geod

    _, _, d = Geod(ellps="WGS84").inv(np.asarray(lon, float), np.asarray(lat, float), np.asarray(lon_t, float),
                                      np.asarray(lat_t, float))
    return np.asarray(d, float)


def run_replay(bag: str | Path, index_dir: str | Path, report_dir: str | Path, rate: float = 1.0,
               topic: str | None = None, config: str | Path | None = None, use_sim_time: bool = False,
               reliable: bool = True, params: dict[str, Any] | None = None, domain_id: int | None = None,
               startup_timeout_s: float = 180.0, drain_timeout_s: float = 30.0,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Replay ``bag`` into a localize_node process and write the report; returns the summary dict.

    Args:
        bag: rosbag2 directory (sqlite3 or mcap).
        index_dir: tile index directory (``mobilegeo build-index`` output) given to the node.
        report_dir: output directory (must not exist or be empty).
        rate: playback speed factor (2 = twice as fast as recorded).
        topic: camera topic (Image or CompressedImage); default: the bag's only image topic.
        config: node config file; default: the config the index was built with.
        use_sim_time: start the node with ``use_sim_time:=true`` (the player publishes /clock in any case).
        reliable: RELIABLE QoS on both sides (the node's ``qos_overrides./<camera topic>.subscription.reliability``);
            False: best effort on both sides.
        params: extra node parameters ``{"node.window_size": 3}`` (override the bag's recommendations).
        domain_id: ROS domain of the node and the player (default: a random free-looking one).
        startup_timeout_s: the node must be matched within this time (model and index loading), seconds.
        drain_timeout_s: after the last message, wait at most this long for outstanding fixes, seconds.
        log: progress lines (e.g. ``print``); None is silent.

    Raises:
        ReplayError, BagError: bad arguments, a bag without the topic, or a node that refused to start or died.
    """
    say = log or (lambda _msg: None)
    bag, index_dir, report_dir = Path(bag), Path(index_dir), Path(report_dir)
    if not rate > 0:
        raise ReplayError(f"--rate must be positive, got {rate}")
    if report_dir.exists() and (not report_dir.is_dir() or any(report_dir.iterdir())):
        raise ReplayError(f"report directory {str(report_dir)!r} already exists and is not empty")
    if not (index_dir / "index.json").is_file():
        raise ReplayError(f"index directory {str(index_dir)!r} does not exist or has no index.json")
    if config is not None and not Path(config).is_file():
        raise ReplayError(f"config file {str(config)!r} does not exist")
    topics = bag_topics(bag)
    image_topic, image_type = pick_image_topic(topics, topic, bag)
    flight = flight_info(bag)

    truth: dict[int, tuple[float, float]] = {}
    if TOPIC_TRUTH in topics and topics[TOPIC_TRUTH]["type"] == "sensor_msgs/msg/NavSatFix":
        for _, _, m in read_bag(bag, [TOPIC_TRUTH]):
            if m.status.status >= 0:
                truth[stamp_ns(m)] = (float(m.latitude), float(m.longitude))

    play = {image_topic: image_type}
    remaps = {"image/compressed" if image_type.endswith("CompressedImage") else "image": image_topic}
    for node_topic, (bag_topic, msgtype) in PRIOR_REMAPS.items():
        if topics.get(bag_topic, {}).get("type") == msgtype:
            play[bag_topic] = msgtype
            remaps[node_topic] = bag_topic

    with atomic_directory(report_dir) as tmp:
        config_file = Path(config).resolve() if config is not None else _index_config_file(index_dir,
                                                                                             tmp / "node_config.yaml")
        node_params: dict[str, Any] = {"index_dir": str(index_dir.resolve()), "config_file": str(config_file)}
        camera = image_topic if image_topic.startswith("/") else "/" + image_topic
        node_params[f"qos_overrides.{camera}.subscription.reliability"] = "reliable" if reliable else "best_effort"
        if image_type.endswith("CompressedImage"):
            node_params["node.image_transport"] = "compressed"
        if use_sim_time:
            node_params["use_sim_time"] = True
        if flight:
            node_params.update(flight.get("recommended_node_parameters", {}))
        node_params.update(params or {})
        domain = int(domain_id) if domain_id is not None else _pick_domain_id()
        record = _play(bag, play, image_topic, node_params, remaps, domain, rate, tmp / "node.log",
                       startup_timeout_s, drain_timeout_s, say)
        summary = _analyse(record, truth, tmp, flight)
        summary.update({"bag": str(bag.resolve()), "image_topic": image_topic, "index_dir": str(index_dir.resolve()),
                        "rate": rate, "use_sim_time": use_sim_time, "reliable_qos": reliable,
                        "ros_domain_id": domain, "node_parameters": node_params, "remaps": remaps,
                        "node_returncode": record["returncode"], "node_diagnostics": record["diagnostics"]})
        if config is None:  # the copy of the index's config moves with the report
            node_params["config_file"] = str((report_dir / config_file.name).resolve())
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _node_command(params: dict[str, Any], remaps: dict[str, str]) -> list[str]:
    cmd = [sys.executable, "-m", "mobilegeo_ros.ros.node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={_param_value(v)}"]
    for k, v in remaps.items():
        cmd += ["-r", f"{k}:={v}"]
    return cmd


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _default_signals() -> None:
    """In the node's process before exec: SIGINT/SIGTERM unblocked and at their default action (a blocked mask or an
    ignored SIGINT of the calling thread is inherited across exec, and the node must stop on the driver's SIGINT)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _play(bag: Path, play: dict[str, str], image_topic: str, node_params: dict[str, Any], remaps: dict[str, str],
          domain: int, rate: float, log_path: Path, startup_timeout_s: float, drain_timeout_s: float,
          say: Callable[[str], None]) -> dict[str, Any]:
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import NavSatFix

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    pkg_root = str(Path(__file__).resolve().parents[2])
    # the child imports the same mobilegeo_ros as this process (a source tree or an installed copy)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    rec = _Recorder()
    ts = typestore()

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("mobilegeo_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, name="replay_executor", daemon=True)
    spin.start()
    proc = None
    log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally, after the child exits
    try:
        pubs = {t: node.create_publisher(_msg_class(m), t, reliable) for t, m in play.items()}
        clock_pub = node.create_publisher(Clock, "/clock", 10)
        fix_sub = node.create_subscription(NavSatFix, FIX_TOPIC, rec.on_fix, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", rec.on_diagnostics, 10)

        cmd = _node_command(node_params, remaps)
        say(f"starting the node (ROS_DOMAIN_ID={domain}): {' '.join(cmd[1:4])} ...")
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_default_signals)
        t_start = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise ReplayError(f"the node exited with status {proc.returncode} before it was ready:\n"
                                  f"{_log_tail(log_path)}")
            if all(p.get_subscription_count() > 0 for p in pubs.values()) and fix_sub.get_publisher_count() > 0:
                break
            if time.monotonic() - t_start > startup_timeout_s:
                raise ReplayError(f"the node was not ready after {startup_timeout_s:.0f} s:\n{_log_tail(log_path)}")
            time.sleep(0.05)
        time.sleep(0.5)  # matching is asynchronous: let the node's side of every match complete too
        say(f"node ready after {time.monotonic() - t_start:.1f} s; playing {bag.name} at {rate:g}x")

        frames: list[tuple[int, int, float, str]] = []  # (stamp_ns, log_ns, publish monotonic s, frame_id)
        t0_bag = wall0 = None
        for topic_name, t_ns, data in read_bag(bag, list(play), raw=True):
            if t0_bag is None:
                t0_bag, wall0 = t_ns, time.monotonic() + 0.05
            delay = wall0 + (t_ns - t0_bag) / 1e9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if proc.poll() is not None:
                raise ReplayError(f"the node died during the replay (status {proc.returncode}):\n"
                                  f"{_log_tail(log_path)}")
            clock_pub.publish(Clock(clock=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)))
            pubs[topic_name].publish(data)
            if topic_name == image_topic:
                published = time.monotonic()
                msg = ts.deserialize_cdr(data, play[image_topic])
                frames.append((stamp_ns(msg), t_ns, published, msg.header.frame_id))
        play_s = time.monotonic() - wall0 if wall0 is not None else 0.0
        say(f"played {len(frames)} frames in {play_s:.1f} s; waiting for the last fixes")

        wanted = {f[0] for f in frames}
        end = time.monotonic() + drain_timeout_s
        while time.monotonic() < end:
            with rec.lock:
                answered = wanted <= set(rec.fixes)
                idle = time.monotonic() - max(rec.last_fix_s, wall0 + play_s if wall0 else 0.0)
            if answered or idle > 3.0:
                break
            time.sleep(0.05)
        returncode = _stop(proc)
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc)
        log_file.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spin.join(timeout=5)
    with rec.lock:
        return {"frames": frames, "fixes": dict(rec.fixes), "diagnostics": dict(rec.diagnostics),
                "returncode": returncode, "play_s": play_s}


def _answer(candidates: list[tuple[float, Any]], frame_id: str) -> tuple[float, Any]:
    """The node's answer to one image among fix messages with its stamp: a fix when there is one (a stale NO_FIX from
    the node's timer may carry the same stamp under sim time), else the first (all are NO_FIX then)."""
    for c in candidates:
        if c[1].status.status >= 0:
            return c
    return candidates[0]


def _analyse(record: dict[str, Any], truth: dict[int, tuple[float, float]], out: Path,
             flight: dict[str, Any] | None) -> dict[str, Any]:
    from mobilegeo_ros.eval.localization import summarize_errors

    frames = record["frames"]
    rows = []
    t_first = frames[0][0] if frames else 0
    for stamp, _, published, frame_id in frames:
        row = {"stamp_ns": stamp, "t_s": (stamp - t_first) / 1e9, "status": "dropped", "lat": math.nan,
               "lon": math.nan, "sigma_m": math.nan, "latency_ms": math.nan}
        cands = record["fixes"].get(stamp)
        if cands:
            received, msg = _answer(cands, frame_id)
            row["latency_ms"] = 1e3 * (received - published)
            if msg.status.status >= 0 and math.isfinite(msg.latitude) and math.isfinite(msg.longitude):
                cov = msg.position_covariance
                row.update(status="fix", lat=msg.latitude, lon=msg.longitude,
                           sigma_m=math.sqrt(max(cov[0] + cov[4], 0.0) / 2.0))
            else:
                row["status"] = "no_fix"
        t = truth.get(stamp)
        row["truth_lat"], row["truth_lon"] = t if t else (math.nan, math.nan)
        rows.append(row)

    is_fix = np.array([r["status"] == "fix" for r in rows], bool)
    lat = np.array([r["lat"] for r in rows], float)
    lon = np.array([r["lon"] for r in rows], float)
    tlat = np.array([r["truth_lat"] for r in rows], float)
    tlon = np.array([r["truth_lon"] for r in rows], float)
    has_truth = bool(len(rows)) and bool(np.isfinite(tlat).any())
    errors = np.full(len(rows), math.nan)
    both = is_fix & np.isfinite(tlat)
    if both.any():
        errors[both] = geodesic_error_m(lat[both], lon[both], tlat[both], tlon[both])
    for r, e in zip(rows, errors, strict=True):
        r["error_m"] = float(e)
    lat_ms = np.array([r["latency_ms"] for r in rows], float)
    lat_ms = lat_ms[np.isfinite(lat_ms)]

    summary: dict[str, Any] = {
        "frames": len(rows), "fixes": int(is_fix.sum()), "no_fix": sum(r["status"] == "no_fix" for r in rows),
        "dropped": sum(r["status"] == "dropped" for r in rows),
        "fix_rate": float(is_fix.mean()) if rows else math.nan,
        "mean_latency_ms": float(lat_ms.mean()) if len(lat_ms) else None,
        "p50_latency_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
        "p99_latency_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
        "play_s": record["play_s"],
        "ground_truth": has_truth,
    }
    sig = np.array([r["sigma_m"] for r in rows], float)
    if has_truth:
        s = summarize_errors(errors[np.isfinite(tlat)], sig[np.isfinite(tlat)], both[np.isfinite(tlat)]).as_dict()
        summary.update({k: s[k] for k in ("median_error_m", "p95_error_m", "max_error_m", "mean_sigma_m",
                                          "within_2sigma_fraction", "wrong_confident_fixes")})
    else:
        summary["mean_sigma_m"] = float(np.nanmean(sig)) if is_fix.any() else None
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}

    _local_coordinates(rows)
    with open(out / "track.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TRACK_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r[k], float) and not math.isfinite(r[k]) else
                            (f"{r[k]:.9f}" if k in ("lat", "lon", "truth_lat", "truth_lon") else
                             f"{r[k]:.3f}" if isinstance(r[k], float) else r[k])) for k in TRACK_COLUMNS})
    plot_track(rows, out / "track.png", flight, summary)
    return summary


def _local_coordinates(rows: list[dict[str, Any]]) -> None:
    """Add local ENU metres (``truth_e_m`` ...) anchored at the first known position (truth, else fix)."""
    from mobilegeo_ros.geo.enu import LocalENU

    anchor = next(((r["truth_lat"], r["truth_lon"]) for r in rows if math.isfinite(r["truth_lat"])), None) or \
        next(((r["lat"], r["lon"]) for r in rows if math.isfinite(r["lat"])), None)
    for r in rows:
        r["truth_e_m"] = r["truth_n_m"] = r["fix_e_m"] = r["fix_n_m"] = math.nan
    if anchor is None:
        return
    enu = LocalENU(*anchor)
    for r in rows:
        for src, de, dn in (("truth_", "truth_e_m", "truth_n_m"), ("", "fix_e_m", "fix_n_m")):
            la, lo = r[f"{src}lat"], r[f"{src}lon"]
            if math.isfinite(la) and math.isfinite(lo):
                e, n, _ = enu.to_enu(la, lo, 0.0)
                r[de], r[dn] = float(e), float(n)


def _map_background(flight: dict[str, Any] | None):
    """(orthophoto, None) for the map the bag was rendered from, or (None, reason)."""
    if not flight or not flight.get("map_path"):
        return None, "no map recorded in the bag"
    from mobilegeo_ros.config import MapConfig
    from mobilegeo_ros.geo.raster import GeoError, read_orthophoto

    try:
        return read_orthophoto(flight["map_path"], MapConfig(**flight.get("map", {}))), None
    except (GeoError, TypeError, OSError) as e:
        return None, f"map unavailable: {e}"


def plot_track(rows: list[dict[str, Any]], path: Path, flight: dict[str, Any] | None, summary: dict[str, Any]
               ) -> None:
    """track.png: the fixes and the ground truth over the map (or in local ENU metres) and the error over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 6))
    ortho, why = _map_background(flight)
    lat = np.array([r["lat"] for r in rows], float)
    lon = np.array([r["lon"] for r in rows], float)
    tlat = np.array([r["truth_lat"] for r in rows], float)
    tlon = np.array([r["truth_lon"] for r in rows], float)
    if ortho is not None:
        def xy(la, lo):
            ok = np.isfinite(la) & np.isfinite(lo)
            x, y = np.full(la.shape, np.nan), np.full(la.shape, np.nan)
            if ok.any():
                e, n = ortho.wgs84_to_map(la[ok], lo[ok])
                x[ok], y[ok] = e, n
            return x, y
        step = max(1, max(ortho.rgb.shape[:2]) // 1500)
        left, bottom, right, top = ortho.bounds
        ax.imshow(ortho.rgb[::step, ::step], extent=(left, right, bottom, top), origin="upper")
        tx, ty = xy(tlat, tlon)
        fx, fy = xy(lat, lon)
        ax.set_xlabel("easting (m)")
        ax.set_ylabel("northing (m)")
        pts = np.concatenate([np.stack([tx, ty], 1), np.stack([fx, fy], 1)])
        pts = pts[np.isfinite(pts).all(1)]
        if len(pts):
            pad = 0.15 * max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 50.0)
            ax.set_xlim(max(left, pts[:, 0].min() - pad), min(right, pts[:, 0].max() + pad))
            ax.set_ylim(max(bottom, pts[:, 1].min() - pad), min(top, pts[:, 1].max() + pad))
    else:
        tx, ty = np.array([r["truth_e_m"] for r in rows]), np.array([r["truth_n_m"] for r in rows])
        fx, fy = np.array([r["fix_e_m"] for r in rows]), np.array([r["fix_n_m"] for r in rows])
        ax.set_xlabel("east (m, local ENU)")
        ax.set_ylabel("north (m, local ENU)")
        ax.set_title(why, fontsize=8)
    if np.isfinite(tx).any():
        ax.plot(tx, ty, "-", color="lime", lw=2, label="ground truth")
    ax.plot(fx, fy, "o-", color="red", ms=3, lw=0.8, label="node ~/fix")
    ax.set_aspect("equal")
    ax.legend(loc="best")
    t = np.array([r["t_s"] for r in rows], float)
    err = np.array([r["error_m"] for r in rows], float)
    sig = np.array([r["sigma_m"] for r in rows], float)
    if np.isfinite(err).any():
        ax2.plot(t, err, "o-", ms=3, color="red", label="error (m)")
        ax2.plot(t, 2 * sig, "--", color="grey", label="reported 2σ (m)")
        title = (f"median {summary.get('median_error_m') or math.nan:.1f} m, p95 "
                 f"{summary.get('p95_error_m') or math.nan:.1f} m, fixes {summary['fixes']}/{summary['frames']}")
    else:
        ax2.plot(t, sig, "o-", ms=3, color="grey", label="reported 1σ (m)")
        title = f"no ground truth; fixes {summary['fixes']}/{summary['frames']}"
    miss = np.array([r["status"] != "fix" for r in rows], bool)
    if miss.any():
        ax2.plot(t[miss], np.zeros(miss.sum()), "x", color="black", label="no fix / dropped")
    ax2.set_xlabel("flight time (s)")
    ax2.set_ylabel("metres")
    ax2.set_title(title)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(summary: dict[str, Any]) -> str:
    """The replay summary as a small text table."""
    def f(key: str, fmt: str = ".1f") -> str:
        v = summary.get(key)
        return "-" if v is None else format(v, fmt) if isinstance(v, float) else str(v)

    lines = [f"{'frames':>8} {'fixes':>6} {'no_fix':>6} {'dropped':>7} {'median m':>9} {'p95 m':>7} {'max m':>7} "
             f"{'≤2σ':>5} {'latency ms':>10}",
             f"{f('frames'):>8} {f('fixes'):>6} {f('no_fix'):>6} {f('dropped'):>7} {f('median_error_m'):>9} "
             f"{f('p95_error_m'):>7} {f('max_error_m'):>7} {f('within_2sigma_fraction', '.2f'):>5} "
             f"{f('mean_latency_ms'):>10}"]
    return "\n".join(lines)


__all__ = ["FIX_TOPIC", "ReplayError", "format_summary", "geodesic_error_m", "pick_image_topic", "plot_track",
           "run_replay"]
