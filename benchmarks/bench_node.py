#!/usr/bin/env python3
"""End-to-end figures of localize_node (a separate process, real rclpy) at several camera rates.

A synthetic 512 m × 512 m map is indexed once with the default config (224 px MobileNetV2-GeM, 120/180 m tiles, 8
gallery rotations; cached under the temp directory). The node is started with that index and the chosen backend;
this process publishes 640×480 rgb8 camera frames (rendered nadir views at 100 m) at each rate for ``--seconds`` and
records ``~/fix``. For each rate it reports the sustained output rate (fix messages per second, any status), the
share of frames the node dropped (no answer: its 1-slot mailbox keeps only the newest frame while inference runs)
and the latency from image publish to fix receipt (p50/p99, one monotonic clock).

    .venv/bin/python benchmarks/bench_node.py --rates 10,30,60 --seconds 10 --json /tmp/bench_node.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # test helpers: synthetic_world

from synthetic_world import synthetic_setup  # noqa: E402

BENCH_MAP = {"width_px": 1024, "height_px": 1024, "gsd_m": 0.5, "seed": 7}
DOMAIN_ID = 87


def render_frames(setup, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` nadir 640×480 views at 100 m over the bench map (random positions and headings)."""
    from mobilegeo_ros.config import RenderConfig
    from mobilegeo_ros.geo.raster import read_orthophoto
    from mobilegeo_ros.geo.render import CameraModel, random_poses, render_view

    ortho = read_orthophoto(setup.map_path, setup.cfg.map)
    rcfg = RenderConfig(altitude_m=[100.0, 100.0], max_tilt_deg=0.0)
    cam = CameraModel.from_config(rcfg)
    return [render_view(ortho, p, cam) for p in random_poses(ortho, n, np.random.default_rng(seed), rcfg, cam)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,30,60", help="camera rates in Hz (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="publishing time per rate (default %(default)s)")
    ap.add_argument("--backend", default="torch", help="model.backend of the node (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="model.num_threads of the node (default %(default)s)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra node parameter, e.g. refine.every_n_frames:=10 (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, NavSatFix

    from mobilegeo_ros.io.images import encode_image

    t0 = time.perf_counter()
    setup = synthetic_setup(map_kw=BENCH_MAP, overrides={})
    print(f"index ready in {time.perf_counter() - t0:.0f} s: {setup.index_dir}", flush=True)
    frames = [encode_image(f, "rgb8") for f in render_frames(setup, 40)]

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(setup.overrides))
        cmd = [sys.executable, "-m", "mobilegeo_ros.ros.node", "--ros-args", "-p", f"index_dir:={setup.index_dir}",
               "-p", f"config_file:={cfg_file}", "-p", f"model.backend:={args.backend}", "-p",
               f"model.num_threads:={args.threads}",
               "-p", "qos_overrides./image.subscription.reliability:=reliable"]
        for p in args.param:
            cmd += ["-p", p]
        log = open(Path(tmp) / "node.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=DOMAIN_ID)
        node = rclpy.create_node("bench_node_player", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        threading.Thread(target=ex.spin, daemon=True).start()
        received: dict[int, tuple[float, int]] = {}
        lock = threading.Lock()

        def on_fix(msg):
            with lock:
                received.setdefault(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                                    (time.monotonic(), msg.status.status))

        sub = node.create_subscription(NavSatFix, "/localize_node/fix", on_fix,
                                       QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        pub = node.create_publisher(Image, "image", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        rows = []
        try:
            t_start = time.monotonic()
            while not (pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0):
                if proc.poll() is not None or time.monotonic() - t_start > 300:
                    log.flush()
                    raise SystemExit(f"node did not start:\n{(Path(tmp) / 'node.log').read_text()[-3000:]}")
                time.sleep(0.05)
            time.sleep(1.0)
            print(f"node ready after {time.monotonic() - t_start:.1f} s (backend {args.backend}, "
                  f"{args.threads} threads)", flush=True)
            msgs = []
            for f in frames:
                m = Image(height=f["height"], width=f["width"], encoding="rgb8", step=f["step"], data=f["data"])
                m.header.frame_id = "camera"
                msgs.append(m)
            stamp_ns = 1_700_000_000 * 1_000_000_000
            for rate in [float(r) for r in args.rates.split(",")]:
                # warm-up second (not measured), then the measured phase
                published: dict[int, float] = {}
                n = int(round(args.seconds * rate))
                period = 1.0 / rate
                t_next = time.monotonic()
                for i in range(int(rate) + n):
                    t_next += period
                    m = msgs[i % len(msgs)]
                    stamp_ns += int(period * 1e9)
                    m.header.stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
                    delay = t_next - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pub.publish(m)
                    if i >= int(rate):
                        published[stamp_ns] = time.monotonic()
                t_end = time.monotonic()
                time.sleep(2.0)  # outstanding fixes
                with lock:
                    got = {s: received[s] for s in published if s in received}
                first = min(published.values())
                lat = np.array([1e3 * (got[s][0] - published[s]) for s in got])
                span = t_end - first
                row = {"rate_hz": rate, "frames": len(published), "answered": len(got),
                       "fixes": sum(1 for v in got.values() if v[1] >= 0),
                       "output_rate_hz": len(got) / span, "dropped": len(published) - len(got),
                       "dropped_pct": 100.0 * (len(published) - len(got)) / len(published),
                       "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                       "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}
                rows.append(row)
                print(f"  {rate:g} Hz: {row['answered']}/{row['frames']} answered", flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            ex.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)

    params = " ".join(args.param) or "default parameters"
    print(f"\nlocalize_node end to end ({params}): {args.backend} backend, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"640×480 rgb8 frames, {args.seconds:g} s per rate")
    print(f"{'camera Hz':>9} {'frames':>6} {'out Hz':>7} {'fixes':>6} {'dropped':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for r in rows:
        p50 = "-" if r["latency_p50_ms"] is None else f"{r['latency_p50_ms']:.0f}"
        p99 = "-" if r["latency_p99_ms"] is None else f"{r['latency_p99_ms']:.0f}"
        print(f"{r['rate_hz']:>9g} {r['frames']:>6d} {r['output_rate_hz']:>7.1f} {r['fixes']:>6d} "
              f"{r['dropped_pct']:>7.0f}% {p50:>7} {p99:>7}")
    if args.json:
        args.json.write_text(json.dumps({"backend": args.backend, "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
