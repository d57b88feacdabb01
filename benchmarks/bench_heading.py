"""How camera heading is handled, measured: rotated gallery copies vs rotated queries vs nothing.

The same rendered views (any heading, tilt, altitude, lighting) are localized against indexes built three ways
(``index.heading`` = gallery_rotations | query_rotations | none), side by side in one run. Prints recall@1/5, median
error, fix rate, index size and time per query, and writes JSON with ``--json``.

    .venv/bin/python benchmarks/bench_heading.py                 # synthetic map (licence-clean), ~2 min
    .venv/bin/python benchmarks/bench_heading.py --dgsamples     # real cross-date pair (WV2 map, WV3 views)

With ``--dgsamples`` everything derived from the imagery goes to a temporary directory (its licence forbids
committing it).
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
from mobilegeo_ros.eval.localization import recall_at_k, summarize_errors, tile_contains  # noqa: E402
from mobilegeo_ros.geo.raster import read_orthophoto  # noqa: E402
from mobilegeo_ros.geo.render import CameraModel, image_to_ground, photometric, random_poses, render_view  # noqa: E402
from mobilegeo_ros.index.build import build_index  # noqa: E402
from mobilegeo_ros.localizer import Localizer, Priors  # noqa: E402
from mobilegeo_ros.model import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dgsamples", action="store_true", help="use the real WV2 map / WV3 views instead of synthetic")
    ap.add_argument("--views", type=int, default=40, help="rendered views (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", help="base config YAML")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    base = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="mobilegeo-bench-heading-"))
    if args.dgsamples:
        from mobilegeo_ros.geo import dgsamples

        wv2 = dgsamples.scene("wv2")
        map_path = wv2.mul
        base = dataclasses.replace(base, map=dataclasses.replace(base.map, pansharpen_with=str(wv2.pan)))
        drone_map = dgsamples.load_scene("wv3")
        label = "dgsamples: map WV2 2014-06-20, views from WV3 2014-10-06"
    else:
        from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

        map_path = write_synthetic_geotiff(work / "map.tif", width_px=2000, height_px=2000, gsd_m=0.5, seed=11)
        drone_map = read_orthophoto(map_path, base.map)
        label = "synthetic 1 km map (views rendered from the same map)"

    camera = CameraModel(base.render.image_width_px, base.render.image_height_px, base.render.hfov_deg)
    rng = np.random.default_rng(args.seed)
    poses = random_poses(drone_map, args.views, rng, base.render, camera)
    views = [photometric(render_view(drone_map, p, camera), rng, base.render) for p in poses]
    model = load_model(base.model)

    results = []
    for heading in ("gallery_rotations", "query_rotations", "none"):
        cfg: Config = dataclasses.replace(base, index=dataclasses.replace(base.index, heading=heading))
        t0 = time.perf_counter()
        index_dir = build_index(map_path, work / f"index-{heading}", cfg, model=model, progress=False)
        t_build = time.perf_counter() - t0
        loc = Localizer.from_files(index_dir, cfg)
        cols = loc.index.columns
        hits, errs, sig, ok, lat = [], [], [], [], []
        for pose, img in zip(poses, views, strict=True):
            fix = loc.localize([img], Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg,
                                             altitude_m=pose.altitude_m, hfov_deg=camera.hfov_deg))
            ce, cn = image_to_ground(pose, camera, camera.width_px / 2, camera.height_px / 2)
            ranked = np.asarray(fix.retrieval.ranked_rows, np.int64)
            hits.append(tile_contains(cols["center_e"][ranked], cols["center_n"][ranked], cols["size_m"][ranked],
                                      float(ce), float(cn)))
            errs.append(math.hypot(fix.easting - pose.easting, fix.northing - pose.northing))
            sig.append(fix.sigma_m)
            ok.append(fix.status.is_fix)
            lat.append(fix.latency_s)
        s = summarize_errors(np.array(errs), np.array(sig), np.array(ok))
        results.append({"heading": heading, "vectors": loc.index.ntotal, "build_s": t_build,
                        **recall_at_k(hits, (1, 5)), "median_error_m": s.median_error_m, "fix_rate": s.fix_rate,
                        "within_2sigma": s.within_2sigma_fraction, "ms_per_query": 1e3 * float(np.mean(lat))})

    print(f"\nheading handling — {label}; {args.views} views, any heading, tilt ≤ {base.render.max_tilt_deg}°")
    print("| heading | index vectors | build s | R@1 % | R@5 % | median err m | fix rate | within 2σ | ms/query |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['heading']} | {r['vectors']} | {r['build_s']:.0f} | {r['recall@1']:.0f} | {r['recall@5']:.0f} | "
              f"{r['median_error_m']:.1f} | {100 * r['fix_rate']:.0f} % | {100 * r['within_2sigma']:.0f} % | "
              f"{r['ms_per_query']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
