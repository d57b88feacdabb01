"""Geometric refinement, measured: retrieval only vs local-feature baselines vs retrieval + refinement.

On the same rendered views (any heading, tilt ≤ render.max_tilt_deg, altitude in render.altitude_m, photometric
noise), in one run:

(a) retrieval only: the Localizer with ``refine.enabled: false`` (tile-level position);
(b) SIFT + RANSAC homography against a 400 m map window around the *known true position* (a prior retrieval does not
    need), :func:`mobilegeo_ros.estimator.refine.register_window`;
(c) ORB + RANSAC, same prior;
(d) retrieval + refinement (the Localizer with the configured ``refine`` section), priors: IMU pitch/roll, altitude,
    field of view (no heading);
(e) as (d) without any prior; its error is to the ground point under the image centre (without attitude and altitude
    the drone's offset from it is unknown).

Reported per method: fix rate, median and 95th-percentile error of the fixes, fraction of fixes within 2 sigma, time
per query (mean, and the refined-fix share for d/e). The map keypoints of (d)/(e) are detected once per map block and
cached: the cache is filled before timing (reported separately), as the index itself is built before.

    .venv/bin/python benchmarks/bench_refine.py                 # synthetic map (licence-clean), a few minutes
    .venv/bin/python benchmarks/bench_refine.py --dgsamples     # real cross-date pair (WV2 map, WV3 views)

With ``--dgsamples`` the index is cached like the demo's (``$MOBILEGEO_CACHE``, outside the repository) and
everything else derived from the imagery goes to a temporary directory under /tmp (its licence forbids committing it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import Config, load_config  # noqa: E402
from mobilegeo_ros.estimator.refine import Registration, register_window  # noqa: E402
from mobilegeo_ros.eval.localization import summarize_errors  # noqa: E402
from mobilegeo_ros.geo.raster import read_orthophoto  # noqa: E402
from mobilegeo_ros.geo.render import (  # noqa: E402
    CameraModel,
    CameraPose,
    image_to_ground,
    photometric,
    random_poses,
    render_view,
)
from mobilegeo_ros.index.build import build_index  # noqa: E402
from mobilegeo_ros.localizer import Localizer, Priors  # noqa: E402
from mobilegeo_ros.model import load_model  # noqa: E402

BASELINE_WINDOW_M = 400.0


def drone_position(reg: Registration, pose: CameraPose) -> tuple[float, float]:
    """The drone position from a registered image centre, with the pose's attitude and altitude as priors and the
    registered heading (what the Localizer does for its refined fixes)."""
    de, dn = image_to_ground(CameraPose(0.0, 0.0, pose.altitude_m, reg.heading_deg, pose.pitch_deg, pose.roll_deg),
                             CameraModel(100, 100, 60.0), 50.0, 50.0)
    return reg.center_e - float(de), reg.center_n - float(dn)


def row(name: str, errors, sigmas, fixes, times, refined=None) -> dict:
    s = summarize_errors(np.array(errors), np.array(sigmas), np.array(fixes))
    return {"method": name, "views": s.queries, "fix_rate": s.fix_rate, "median_error_m": s.median_error_m,
            "p95_error_m": s.p95_error_m, "within_2sigma": s.within_2sigma_fraction,
            "ms_per_query": 1e3 * float(np.mean(times)),
            "refined_rate": None if refined is None else float(np.mean(refined))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dgsamples", action="store_true", help="use the real WV2 map / WV3 views instead of synthetic")
    ap.add_argument("--views", type=int, default=30, help="rendered views (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", help="base config YAML (render, map, index, refine sections)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    base = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="mobilegeo-bench-refine-"))
    model = load_model(base.model)
    if args.dgsamples:
        from mobilegeo_ros import demo
        from mobilegeo_ros.geo import dgsamples

        index_dir = demo.build_demo_index(base, demo.default_cache_dir(), progress=True)
        drone_map = dgsamples.load_scene("wv3")
        map_ortho = dgsamples.load_scene("wv2")
        label = "dgsamples: map WV2 2014-06-20 (0.5 m), views from WV3 2014-10-06 (0.3 m)"
    else:
        from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

        map_path = write_synthetic_geotiff(work / "map.tif", width_px=1200, height_px=1200, gsd_m=0.5, seed=11)
        index_dir = build_index(map_path, work / "index", base, model=model, progress=False)
        map_ortho = drone_map = read_orthophoto(map_path, base.map)
        label = "synthetic 600 m map (views rendered from the same map)"

    cfg_ref: Config = dataclasses.replace(base, refine=dataclasses.replace(base.refine, enabled=True))
    cfg_ret: Config = dataclasses.replace(base, refine=dataclasses.replace(base.refine, enabled=False))
    loc_ref = Localizer.from_files(index_dir, cfg_ref)
    loc_ret = Localizer(loc_ref.index, loc_ref.model, cfg_ret)
    t0 = time.perf_counter()
    refiner = loc_ref.refiner()
    left, bottom, right, top = refiner.map.bounds
    refiner.map_features.window(0, (left + right) / 2, (bottom + top) / 2, 1e7)  # fill the keypoint cache
    t_warm = time.perf_counter() - t0

    camera = CameraModel(base.render.image_width_px, base.render.image_height_px, base.render.hfov_deg)
    rng = np.random.default_rng(args.seed)
    poses = random_poses(drone_map, args.views, rng, base.render, camera)
    views = [photometric(render_view(drone_map, p, camera), rng, base.render) for p in poses]

    res: dict[str, dict[str, list]] = {k: {"e": [], "s": [], "f": [], "t": [], "r": []} for k in "abcde"}

    def add(key, err, sigma, ok, t, refined=None):
        d = res[key]
        d["e"].append(err)
        d["s"].append(sigma)
        d["f"].append(ok)
        d["t"].append(t)
        d["r"].append(refined)

    for pose, img in zip(poses, views, strict=True):
        priors = Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                        hfov_deg=camera.hfov_deg)
        fix = loc_ret.localize([img], priors)
        add("a", math.hypot(fix.easting - pose.easting, fix.northing - pose.northing), fix.sigma_m,
            fix.status.is_fix, fix.latency_s)
        for key, feats in (("b", "sift"), ("c", "orb")):
            reg = register_window(img, map_ortho, pose.easting, pose.northing, BASELINE_WINDOW_M, matcher=feats)
            e, n = drone_position(reg, pose) if math.isfinite(reg.center_e) else (math.nan, math.nan)
            add(key, math.hypot(e - pose.easting, n - pose.northing), reg.sigma_m, reg.ok, reg.time_s)
        fix = loc_ref.localize([img], priors)
        add("d", math.hypot(fix.easting - pose.easting, fix.northing - pose.northing), fix.sigma_m,
            fix.status.is_fix, fix.latency_s, fix.refined)
        fix = loc_ref.localize([img])
        ce, cn = image_to_ground(pose, camera, camera.width_px / 2, camera.height_px / 2)
        add("e", math.hypot(fix.easting - float(ce), fix.northing - float(cn)), fix.sigma_m, fix.status.is_fix,
            fix.latency_s, fix.refined)

    names = {
        "a": "(a) retrieval only",
        "b": f"(b) SIFT + RANSAC, {BASELINE_WINDOW_M:.0f} m window at the true position",
        "c": f"(c) ORB + RANSAC, {BASELINE_WINDOW_M:.0f} m window at the true position",
        "d": f"(d) retrieval + refinement ({base.refine.matcher}, top {base.refine.top_k}), priors",
        "e": "(e) retrieval + refinement, no priors (error to the image-centre ground point)",
    }
    results = [row(names[k], d["e"], d["s"], d["f"], d["t"], d["r"] if k in "de" else None)
               for k, d in res.items()]

    print(f"\nrefinement — {label}; {args.views} views, any heading, tilt ≤ {base.render.max_tilt_deg}°, "
          f"altitude {base.render.altitude_m[0]:.0f}–{base.render.altitude_m[1]:.0f} m; map keypoint cache filled "
          f"in {t_warm:.1f} s before timing")
    print("| method | fixes | refined | median err m | p95 err m | within 2σ | ms/query |")
    print("|---|---|---|---|---|---|---|")

    def fmt(v, f="{:.1f}"):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)

    for r in results:
        print(f"| {r['method']} | {100 * r['fix_rate']:.0f} % | "
              f"{fmt(None if r['refined_rate'] is None else 100 * r['refined_rate'], '{:.0f} %')} | "
              f"{fmt(r['median_error_m'])} | {fmt(r['p95_error_m'])} | {fmt(100 * r['within_2sigma'], '{:.0f} %')} | "
              f"{r['ms_per_query']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "map_cache_s": t_warm, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
