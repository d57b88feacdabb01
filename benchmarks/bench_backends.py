#!/usr/bin/env python3
"""Side-by-side benchmark: inference backends, the baselines a user would pick, and index memory. One run, one JSON.

1. backends (also ``mobilegeo bench``): per model (student MobileNetV2-GeM, teacher ResNet-50-thin) × backend:
   FLOPs, params, images/s and latency p50/p99 at batch 1 and 32 (:mod:`mobilegeo_ros.model.bench`).
2. baselines, same rendered views of the same map in the same run: the ImageNet MobileNetV2-GeM embedding (untrained
   here: it *is* the student until trained weights land) through the Localizer (retrieval only), and local features
   (OpenCV SIFT and ORB + RANSAC homography against a map window around a prior, GISNav style) through
   :func:`mobilegeo_ros.estimator.refine.register_window` and ``bench_refine.drone_position`` (not re-implemented
   here). recall@1: retrieval's top-1 tile contains the ground point under the image centre; for local features,
   an accepted registration whose centre is within half the smallest tile side of it on both axes (the same
   tolerance). Errors are to the drone position, over fixes.
3. memory: bytes per vector of each faiss index kind (measured on serialised indexes) + tile metadata, turned into
   memory per tile, per km² and for a 1000 km² map at the configured tile sizes, overlap and rotations.

    .venv/bin/python benchmarks/bench_backends.py --json /tmp/bench_backends.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobilegeo_ros.config import Config, IndexConfig, from_dict  # noqa: E402
from mobilegeo_ros.model.bench import format_table, run_backend_bench, write_json  # noqa: E402


# --------------------------------------------------------------------------------------------------------------------
def bench_baselines(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from mobilegeo_ros.eval.localization import tile_contains
    from mobilegeo_ros.geo.raster import read_orthophoto
    from mobilegeo_ros.geo.render import CameraModel, image_to_ground, photometric, random_poses, render_view
    from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
    from mobilegeo_ros.index.build import build_index
    from mobilegeo_ros.localizer import Localizer, Priors

    try:
        from bench_refine import BASELINE_WINDOW_M, drone_position

        from mobilegeo_ros.estimator.refine import register_window
    except ImportError as e:  # the geometric-refinement work is not in this tree
        print(f"local-feature baselines unavailable: {e}")
        register_window = None

    map_path = Path(args.map) if args.map else write_synthetic_geotiff(tmp / "map.tif", args.map_px, args.map_px,
                                                                        0.5, seed=3)
    raw = {"model": {"backend": "onnxruntime", "num_threads": args.threads}}
    cfg = from_dict(raw)
    if hasattr(cfg, "refine"):
        cfg.refine.enabled = False  # the embedding baseline is retrieval only
    t = time.perf_counter()
    index_dir = build_index(map_path, tmp / "index", cfg, progress=False)
    build_s = time.perf_counter() - t
    loc = Localizer.from_files(index_dir, cfg)
    ortho = read_orthophoto(map_path, cfg.map)
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    rng = np.random.default_rng(args.seed)
    poses = random_poses(ortho, args.views, rng, cfg.render, camera)
    views = [photometric(render_view(ortho, p, camera), rng, cfg.render) for p in poses]
    centres = [tuple(float(c) for c in image_to_ground(p, camera, camera.width_px / 2, camera.height_px / 2))
               for p in poses]
    tol = min(cfg.map.tile_sizes_m) / 2.0
    cols = loc.index.columns
    print(f"\nbaselines: {len(views)} views of {map_path.name} ({ortho.rgb.shape[1]}×{ortho.rgb.shape[0]} px, "
          f"{ortho.gsd_m:g} m), index {loc.index.ntotal} vectors built in {build_s:.0f} s")

    rows = []

    def summarise(method, hits, errors, times, note=""):
        errors = np.asarray(errors, float)
        fixes = np.isfinite(errors)
        r = {"method": method, "views": len(hits), "recall_at_1": 100.0 * float(np.mean(hits)),
             "fix_rate": float(fixes.mean()),
             "median_error_m": float(np.median(errors[fixes])) if fixes.any() else None,
             "ms_per_query": 1e3 * float(np.median(times)), "note": note}
        rows.append(r)
        med = f"{r['median_error_m']:.1f}" if r["median_error_m"] is not None else "-"
        print(f"{method:<44s} {r['recall_at_1']:>8.1f} {r['fix_rate']:>8.2f} {med:>10s} {r['ms_per_query']:>9.1f}",
              flush=True)

    print(f"{'method':<44s} {'recall@1':>8s} {'fix rate':>8s} {'median m':>10s} {'ms/query':>9s}")
    hits, errors, times = [], [], []
    for img, pose, (ce, cn) in zip(views, poses, centres):
        priors = Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                        hfov_deg=cfg.render.hfov_deg)
        t = time.perf_counter()
        fix = loc.localize([img], priors)
        times.append(time.perf_counter() - t)
        _, top = loc.index.search(loc.embed([img]), 1)
        r0 = int(top[0, 0])
        hits.append(bool(tile_contains(cols["center_e"][r0], cols["center_n"][r0], cols["size_m"][r0], ce, cn)))
        errors.append(math.hypot(fix.easting - pose.easting, fix.northing - pose.northing)
                      if fix.status.is_fix else math.nan)
    summarise("ImageNet MobileNetV2-GeM (= student, untrained) ORT", hits, errors, times,
              "Localizer retrieval only, no heading prior")

    if register_window is not None:
        for feats in ("sift", "orb"):
            hits, errors, times = [], [], []
            for img, pose, (ce, cn) in zip(views, poses, centres):
                t = time.perf_counter()
                reg = register_window(img, ortho, pose.easting, pose.northing, BASELINE_WINDOW_M, matcher=feats)
                times.append(time.perf_counter() - t)
                ok = reg.ok and abs(reg.center_e - ce) <= tol and abs(reg.center_n - cn) <= tol
                hits.append(bool(ok))
                if reg.ok:
                    de, dn = drone_position(reg, pose)
                    errors.append(math.hypot(de - pose.easting, dn - pose.northing))
                else:
                    errors.append(math.nan)
            summarise(f"{feats.upper()} + RANSAC homography, {BASELINE_WINDOW_M:.0f} m window", hits, errors, times,
                      "prior = true position (window centre)")
    return rows


# --------------------------------------------------------------------------------------------------------------------
def bench_memory(args: argparse.Namespace, cfg: Config) -> dict:
    import faiss

    from bench_index import IDENTITY, clustered, columns  # the same synthetic vectors as bench_index.py

    from mobilegeo_ros.index.tile_index import TileIndex

    n, dim = args.memory_vectors, 1280
    x = clustered(n, dim, np.random.default_rng(0))
    half = n // 2

    def marginal(build) -> tuple[float, float]:
        """(bytes per added vector, fixed bytes): serialised size at n and n/2 vectors (same trained structures
        where there are any), so codebooks and centroids are not smeared over the vectors."""
        big, small = faiss.serialize_index(build(x)).nbytes, faiss.serialize_index(build(x[:half])).nbytes
        per = (big - small) / (n - half)
        return per, big - per * n

    def tile_index(kind: str):
        # ivf_nlist fixed so IVF is really built at this size (the default 4·sqrt(N) would need more vectors)
        cfg = IndexConfig(kind=kind, ivf_nlist=256)
        return lambda v: TileIndex.build(v, columns(len(v)), {**IDENTITY, "dim": dim}, "", {}, cfg).index

    per_vector: dict[str, tuple[float, float]] = {k: marginal(tile_index(k)) for k in ("flat", "ivf", "hnsw")}
    # IVF-PQ is not an index.kind yet: measured with faiss directly (64 bytes of PQ codes + 8 of id per vector).
    ivfpq = faiss.index_factory(dim, "IVF256,PQ64", faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(x)

    def add_pq(v):
        idx = faiss.clone_index(ivfpq)
        idx.add(v)
        return idx

    per_vector["ivfpq (IVF256,PQ64; not an index.kind)"] = marginal(add_pq)
    buf = io.BytesIO()
    cols = columns(n)
    from mobilegeo_ros.index.tile_index import COLUMNS
    np.savez(buf, **{k: np.asarray(cols[k], dtype=COLUMNS[k]) for k in COLUMNS})
    meta_bytes = buf.getbuffer().nbytes / n
    rot = cfg.index.rotations if cfg.index.heading == "gallery_rotations" else 1
    tiles_km2 = sum(1e6 / (s * (1.0 - cfg.map.overlap)) ** 2 for s in cfg.map.tile_sizes_m)
    vectors_km2 = tiles_km2 * rot
    out = {"measured_on_vectors": n, "dim": dim, "metadata_bytes_per_vector": meta_bytes,
           "tile_sizes_m": cfg.map.tile_sizes_m, "overlap": cfg.map.overlap, "rotations": rot,
           "ground_resolution_m_per_px": [s / cfg.map.tile_px for s in cfg.map.tile_sizes_m],
           "tiles_per_km2": tiles_km2, "vectors_per_km2": vectors_km2, "kinds": []}
    print(f"\nindex memory, {dim}-d vectors: tiles {cfg.map.tile_sizes_m} m at {cfg.map.tile_px} px "
          f"({', '.join(f'{s / cfg.map.tile_px:.2f}' for s in cfg.map.tile_sizes_m)} m/px), overlap "
          f"{cfg.map.overlap:g}, {rot} rotations: {tiles_km2:.0f} tiles/km², {vectors_km2:.0f} vectors/km²; "
          f"bytes/vector = serialised size growth from {half} to {n} vectors (+{meta_bytes:.0f} B metadata)")
    print(f"{'index kind':<42s} {'B/vector':>9s} {'fixed MiB':>9s} {'KiB/tile':>9s} {'MiB/km²':>9s} "
          f"{'GiB/1000 km²':>13s}")
    for kind, (b, fixed) in per_vector.items():
        total = b + meta_bytes
        row = {"kind": kind, "bytes_per_vector": b, "fixed_bytes": fixed, "bytes_per_tile": total * rot,
               "mib_per_km2": total * vectors_km2 / 2**20, "gib_per_1000_km2": total * vectors_km2 * 1000 / 2**30}
        out["kinds"].append(row)
        print(f"{kind:<42s} {b:>9.0f} {fixed / 2**20:>9.2f} {row['bytes_per_tile'] / 1024:>9.1f} {row['mib_per_km2']:>9.2f} "
              f"{row['gib_per_1000_km2']:>13.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="backends,baselines,memory", help="default %(default)s")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--map", help="GeoTIFF for the baselines (default: a synthetic 0.5 m map in a temp dir)")
    ap.add_argument("--map-px", type=int, default=1600, help="synthetic map side, pixels (default %(default)s)")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-vectors", type=int, default=20000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    result: dict = {}
    if "backends" in sections:
        result["backends"] = run_backend_bench(tuple(int(b) for b in args.batches.split(",")), args.threads,
                                               args.min_seconds, log=None)
        print(format_table(result["backends"]))
        env = result["backends"]["environment"]
        print(f"({env['threads']} threads on {env['cpu_count']} cores, load average {env['loadavg_1min_at_start']:.1f}"
              f" at start; {env['timing']})")
    if "baselines" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            result["baselines"] = bench_baselines(args, Path(tmp))
    if "memory" in sections:
        result["memory"] = bench_memory(args, Config())
    if args.json:
        write_json(result, args.json)
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
