#!/usr/bin/env python3
"""The camera-rate tracker on real cross-date imagery (dgsamples: map WV2 2014-06-20, views from WV3 2014-10-06).

Three parts, each printing one table with every matcher side by side:

``views``   independent random views (the demo's direction and render settings), each a new flight for the tracker
            (retrieval + registration from scratch): fixes (verified / no fix), error to the DRONE position (not the
            image centre), 2σ coverage, fixes > 50 m, CPU ms per frame by stage. Prior modes: ``imu`` (pitch/roll,
            altitude and the field of view; heading unknown — the demo), ``hfov`` (only the camera's field of view:
            no attitude, no altitude; the pose is solved on the map), ``none-hfov`` (altitude only: no intrinsics,
            the sigma covers the unknown tilt).
``flight``  a synthetic flight over WV3 (flight_poses: smooth loop at 8 m/s, rigid camera, IMU attitude), processed
            inline frame by frame: verified / tracked / no fix, errors, 2σ coverage, per-stage CPU ms, latency of
            tracked frames and of keyframes.
``node``    the same kind of flight written to a rosbag (JPEG) and replayed at its real rate through the real
            ``localize_node`` (keyframes registered in the background): fixes per second, p50/p99 latency from image
            publish to fix, verified/tracked counts from /diagnostics, errors and 2σ coverage.

    .venv/bin/python benchmarks/bench_tracker.py views --views 70 --seeds 1,2,3 --matchers sift,xfeat
    .venv/bin/python benchmarks/bench_tracker.py flight --seconds 30 --rate-hz 10 --matchers sift,xfeat
    .venv/bin/python benchmarks/bench_tracker.py node --seconds 60 --rate-hz 30 --matchers xfeat

The dgsamples licence is restricted: the index, renders, bags and reports live under ~/.cache/mobilegeo or /tmp.
Timings depend on what else the machine is doing; the script prints the load average with each table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import Config, from_dict, to_dict  # noqa: E402
from mobilegeo_ros.eval.localization import summarize_errors  # noqa: E402
from mobilegeo_ros.geo import dgsamples  # noqa: E402
from mobilegeo_ros.geo.flight import flight_poses  # noqa: E402
from mobilegeo_ros.geo.render import CameraModel, photometric, random_poses, render_view  # noqa: E402
from mobilegeo_ros.localizer import Localizer, Priors  # noqa: E402
from mobilegeo_ros.tracker import Tracker  # noqa: E402


def _config(matcher: str, overrides: list[str]) -> Config:
    data = to_dict(Config())
    key = "matcher" if "matcher" in data["refine"] else "features"
    data["refine"][key] = matcher
    for item in overrides:
        name, _, value = item.partition("=")
        section, _, field = name.partition(".")
        data[section][field] = yaml.safe_load(value)
    return from_dict(data)


def _index(cfg: Config) -> Path:
    from mobilegeo_ros.demo import build_demo_index, default_cache_dir

    return build_demo_index(cfg, default_cache_dir(), progress=False)


def _priors(mode: str, pose, camera: CameraModel) -> Priors:
    if mode == "imu":
        return Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                      hfov_deg=camera.hfov_deg)
    if mode == "hfov":
        return Priors(hfov_deg=camera.hfov_deg)
    if mode == "none-hfov":
        return Priors(altitude_m=pose.altitude_m)
    raise ValueError(mode)


def _summary(errors, sigmas, statuses, stage_ms, latencies) -> dict:
    errors, sigmas = np.array(errors, float), np.array(sigmas, float)
    is_fix = np.array([s != "no_fix" for s in statuses])
    s = summarize_errors(errors, sigmas, is_fix).as_dict()
    out = {"frames": len(statuses), **{k: sum(x == k for x in statuses) for k in ("verified", "tracked", "no_fix")},
           **{k: s[k] for k in ("fix_rate", "median_error_m", "p95_error_m", "max_error_m", "within_2sigma_fraction",
                                "wrong_confident_fixes", "mean_sigma_m")}}
    for status in ("verified", "tracked"):
        sel = np.array([x == status for x in statuses])
        if sel.any():
            ok = summarize_errors(errors[sel], sigmas[sel], np.ones(sel.sum(), bool))
            out[f"{status}_median_error_m"] = ok.median_error_m
            out[f"{status}_p95_error_m"] = ok.p95_error_m
            out[f"{status}_within_2sigma"] = ok.within_2sigma_fraction
    lat = 1e3 * np.array(latencies)
    out["p50_ms"], out["p99_ms"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    keys = sorted({k for d in stage_ms for k in d})
    out["ms_per_frame"] = {k: float(np.mean([d.get(k, 0.0) for d in stage_ms])) for k in keys}
    return out


def bench_views(args) -> dict:
    wv3 = dgsamples.load_scene("wv3")
    results = {}
    for matcher in args.matchers:
        cfg = _config(matcher, args.set)
        loc = Localizer.from_files(_index(cfg), cfg)
        tr = Tracker(loc, cfg)
        camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
        for mode in args.priors:
            errs, sigs, sts, stages, lats, rows = [], [], [], [], [], []
            for seed in args.seeds:
                rng = np.random.default_rng(seed)
                for pose in random_poses(wv3, args.views, rng, cfg.render, camera):
                    image = photometric(render_view(wv3, pose, camera), rng, cfg.render)
                    tr.reset()
                    res = tr.process(image, 0.0, _priors(mode, pose, camera))
                    errs.append(math.hypot(res.easting - pose.easting, res.northing - pose.northing))
                    sigs.append(res.sigma_m)
                    sts.append(res.status.value)
                    stages.append(res.stage_ms)
                    lats.append(res.latency_s)
                    rows.append((seed, res.status.value, errs[-1], sigs[-1], pose.altitude_m, res.altitude_m,
                                 pose.pitch_deg, pose.roll_deg, res.pitch_deg, res.roll_deg, res.inliers))
            if args.frames_csv:
                import csv
                with open(f"{args.frames_csv}.{matcher}.{mode}.csv", "w", newline="") as f:
                    csv.writer(f).writerows([("seed", "status", "error_m", "sigma_m", "alt", "est_alt", "pitch",
                                              "roll", "est_pitch", "est_roll", "inliers"), *rows])
            results[f"{matcher} / {mode}"] = _summary(errs, sigs, sts, stages, lats)
            print(f"  {matcher} / {mode}: {json.dumps(results[f'{matcher} / {mode}'])}", flush=True)
    return results


def _flight(cfg: Config, seconds: float, rate_hz: float, seed: int):
    wv3 = dgsamples.load_scene("wv3")
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    return wv3, camera, flight_poses(wv3, seconds, rate_hz, seed, cfg.render, camera=camera)


def bench_flight(args) -> dict:
    results = {}
    for matcher in args.matchers:
        cfg = _config(matcher, args.set)
        loc = Localizer.from_files(_index(cfg), cfg)
        for seed in args.seeds:
            wv3, camera, poses = _flight(cfg, args.seconds, args.rate_hz, seed)
            tr = Tracker(loc, cfg)
            rng = np.random.default_rng([seed, 1])
            errs, sigs, sts, stages, lats, kf_lat, tr_lat, rows = [], [], [], [], [], [], [], []
            for t, pose in poses:
                image = photometric(render_view(wv3, pose, camera), rng, cfg.render)
                res = tr.process(image, t, _priors("imu", pose, camera))
                errs.append(math.hypot(res.easting - pose.easting, res.northing - pose.northing))
                sigs.append(res.sigma_m)
                sts.append(res.status.value)
                stages.append(res.stage_ms)
                lats.append(res.latency_s)
                rows.append((t, res.status.value, errs[-1], sigs[-1], res.tracked_m, res.reason[:80]))
                (kf_lat if ("register" in res.stage_ms or "localize" in res.stage_ms) else tr_lat).append(
                    1e3 * res.latency_s)
            s = _summary(errs, sigs, sts, stages, lats)
            s["tracked_frame_p99_ms"] = float(np.percentile(tr_lat, 99)) if tr_lat else None
            s["keyframe_p50_ms"] = float(np.percentile(kf_lat, 50)) if kf_lat else None
            s["counts"] = dict(tr.counts)
            results[f"{matcher} / seed {seed}"] = s
            if args.frames_csv:
                import csv
                with open(f"{args.frames_csv}.{matcher}.{seed}.csv", "w", newline="") as f:
                    csv.writer(f).writerows([("t_s", "status", "error_m", "sigma_m", "tracked_m", "reason"), *rows])
            print(f"  {matcher} / seed {seed}: {json.dumps(s)}", flush=True)
    return results


def bench_node(args) -> dict:
    from mobilegeo_ros.io.bag import write_flight_bag
    from mobilegeo_ros.ros.replay import run_replay

    results = {}
    wv3 = dgsamples.scene("wv3")
    for matcher in args.matchers:
        cfg = _config(matcher, args.set)
        index = _index(cfg)
        for seed in args.seeds:
            root = Path(tempfile.mkdtemp(prefix="bench_tracker_node."))
            bag = Path(args.bag_cache) / f"wv3_{int(args.seconds * args.rate_hz)}f_{args.rate_hz:g}hz_seed{seed}" \
                if args.bag_cache else root / "bag"
            if not (bag / "metadata.yaml").is_file():
                bag_cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv3.pan)))
                write_flight_bag(bag, wv3.mul, bag_cfg, frames=int(args.seconds * args.rate_hz),
                                 rate_hz=args.rate_hz, seed=seed, compressed=True)
            params = {"refine." + ("matcher" if "matcher" in to_dict(cfg)["refine"] else "features"): matcher}
            for item in args.set:
                name, _, value = item.partition("=")
                params[name] = yaml.safe_load(value)
            s = run_replay(bag, index, root / "report", rate=1.0, params=params)
            diag = s.get("node_diagnostics") or {}
            keep = {k: s.get(k) for k in ("frames", "fixes", "no_fix", "dropped", "fix_rate", "median_error_m",
                                          "p95_error_m", "max_error_m", "within_2sigma_fraction",
                                          "wrong_confident_fixes", "p50_latency_ms", "p99_latency_ms", "play_s")}
            keep["fixes_per_s"] = s["fixes"] / s["play_s"] if s.get("play_s") else None
            keep.update({k: diag.get(k) for k in ("fixes_verified", "fixes_tracked", "fixes_retrieval",
                                                  "inference_latency_p99_ms")})
            results[f"{matcher} / seed {seed}"] = keep
            print(f"  {matcher} / seed {seed}: {json.dumps(keep)}  (report {root / 'report'})", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["views", "flight", "node"])
    ap.add_argument("--matchers", default="sift", type=lambda s: s.split(","),
                    help="comma-separated refine matchers, one column each (default %(default)s)")
    ap.add_argument("--seeds", default="1", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--views", type=int, default=70, help="views per seed (views part)")
    ap.add_argument("--priors", default="imu", type=lambda s: s.split(","),
                    help="prior modes for the views part: imu, hfov, none-hfov (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=30.0, help="flight length (flight, node parts)")
    ap.add_argument("--rate-hz", type=float, default=10.0, help="camera rate (flight, node parts)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override (repeatable), e.g. tracker.keyframe_every_s=1.0")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--bag-cache", help="node part: keep/reuse the rendered bags in this folder (outside the repo)")
    ap.add_argument("--frames-csv", help="flight part: write per-frame rows to PREFIX.MATCHER.SEED.csv")
    args = ap.parse_args(argv)
    print(f"bench_tracker {args.part}: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    results = {"views": bench_views, "flight": bench_flight, "node": bench_node}[args.part](args)
    print(f"done in {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
