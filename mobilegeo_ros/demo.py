"""The README demo: localize synthetic drone views on real imagery (dgsamples, Longmont CO).

Cross-date, cross-sensor on purpose: the satellite map is the WorldView-2 scene of 20 Jun 2014 (0.5 m, pansharpened),
the drone views are rendered from the WorldView-3 scene of 6 Oct 2014 (0.3 m) of the same ~1 km², so the views differ
from the map in season, sensor, resolution, perspective (tilt), heading, altitude and lighting.

Steps (each takes paths and returns paths):
1. :func:`build_demo_index`: tile pyramid + embeddings of the WV2 map → index directory (cached; the imagery's licence
   forbids committing anything derived from it, so the cache lives outside the repository).
3. :func:`run_demo_flight`: a 10 s flight over WV3 tracked frame by frame (verified keyframes, tracked frames).
2. :func:`run_demo`: render views from WV3 at random poses, localize each with the IMU attitude and the altitude as
   priors (no heading: the heading comes from the match), refined geometrically against the map when
   ``refine.enabled``, and write ``summary.json``, ``fixes.csv`` and ``track.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobilegeo_ros.config import Config, to_dict
from mobilegeo_ros.eval.localization import recall_at_k, summarize_errors, tile_contains
from mobilegeo_ros.geo import dgsamples
from mobilegeo_ros.geo.render import CameraModel, image_to_ground, photometric, random_poses, render_view
from mobilegeo_ros.index.build import build_index
from mobilegeo_ros.localizer import Localizer, Priors
from mobilegeo_ros.tracker import Tracker
from mobilegeo_ros.index.facts import use_runtime_config
from mobilegeo_ros.index.tile_index import TileIndex
from mobilegeo_ros.model import EmbeddingModel, load_model
from mobilegeo_ros.model.weights import describe_weights


def default_cache_dir() -> Path:
    """``$MOBILEGEO_CACHE`` or ``$XDG_CACHE_HOME/mobilegeo`` (default ``~/.cache/mobilegeo``)."""
    if os.environ.get("MOBILEGEO_CACHE"):
        return Path(os.environ["MOBILEGEO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobilegeo"


def build_demo_index(cfg: Config, cache_dir: Path, progress: bool = True, model: EmbeddingModel | None = None
                     ) -> Path:
    """Index of the WV2 map for ``cfg`` (reused when the config and model are unchanged) → index directory.
    ``model``: embed with this model instead of ``cfg.model`` (e.g. a teacher in benchmarks/bench_teachers.py)."""
    wv2 = dgsamples.scene("wv2")
    cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv2.pan)))
    model = model or load_model(cfg.model)
    key = json.dumps({"map": to_dict(cfg)["map"], "index": to_dict(cfg)["index"], "model": model.identity()},
                     sort_keys=True)
    out = cache_dir / f"index-wv2-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (out / "index.json").is_file():
        build_index(wv2.mul, out, cfg, model=model, progress=progress)
    return out


def adapt_demo_weights(cfg: Config, cache_dir: Path, minutes: float, progress: bool = True, log=print) -> Path:
    """Mission-area adaptation (:func:`mobilegeo_ros.train.adapt.adapt`) of ``cfg``'s model on the WV2 map, cached
    in ``cache_dir`` (the weights derive from dgsamples: never inside the repository) → ``student.safetensors``."""
    import shutil
    import tempfile

    from mobilegeo_ros.train.adapt import ADAPT_RECIPE, adapt

    wv2 = dgsamples.scene("wv2")
    map_cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv2.pan)))
    d = to_dict(map_cfg)
    key = json.dumps({"map": d["map"], "render": d["render"], "index": d["index"], "minutes": minutes,
                      "recipe": ADAPT_RECIPE, "model": load_model(cfg.model).identity()}, sort_keys=True)
    out = cache_dir / f"adapt-wv2-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "student.safetensors").is_file():
        log(f"      adapted student (cached): {out / 'student.safetensors'}")
        return out / "student.safetensors"
    log(f"      adapting the student to the WV2 map for {minutes:g} min (mobilegeo adapt) ...")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=cache_dir))
    try:
        adapt(wv2.mul, work / "run", map_cfg, minutes=minutes, progress=progress)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work / "run", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out / "student.safetensors"


def run_demo(out_dir: Path, cfg: Config, n_views: int = 40, seed: int = 0, cache_dir: Path | None = None,
             progress: bool = True, log=print, model: EmbeddingModel | None = None) -> Path:
    """Run the demo, write the report into ``out_dir`` and return ``out_dir / "summary.json"``. ``model``: embed
    the map and the views with this model instead of ``cfg.model`` (same protocol otherwise)."""
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or default_cache_dir()
    log("[1/3] satellite map: WorldView-2, 2014-06-20, 0.5 m (dgsamples) → tile index")
    t0 = time.perf_counter()
    index_dir = build_demo_index(cfg, cache_dir, progress, model=model)
    t_index = time.perf_counter() - t0
    if model is None:
        localizer = Localizer.from_files(index_dir, cfg)
    else:
        index = TileIndex.load(index_dir)
        use_runtime_config(index, cfg)
        localizer = Localizer(index, model, cfg, index_dir=index_dir)
    tracker = Tracker(localizer, cfg)  # the node's path; each random view is a new flight (no track to follow)
    index = localizer.index
    log(f"      {index_dir}  ({index.ntotal} vectors, built/loaded in {t_index:.1f} s)")

    log("[2/3] drone views: rendered from WorldView-3, 2014-10-06, 0.3 m (another date and sensor)")
    drone_map = dgsamples.load_scene("wv3")
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    rng = np.random.default_rng(seed)
    poses = random_poses(drone_map, n_views, rng, cfg.render, camera)

    log(f"[3/3] localizing {n_views} views (priors: IMU pitch/roll and altitude; heading unknown)")
    cols = index.columns
    rows_out, hits, errors, sigmas, is_fix, heading_err, latencies, refined = [], [], [], [], [], [], [], []
    for i, pose in enumerate(tqdm(poses, desc="localize", unit="view", disable=not progress)):
        image = photometric(render_view(drone_map, pose, camera), rng, cfg.render)
        priors = Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg, altitude_m=pose.altitude_m,
                        hfov_deg=camera.hfov_deg)
        tracker.reset()
        res = tracker.process(image, 0.0, priors)
        fix = res.fix
        ce, cn = image_to_ground(pose, camera, camera.width_px / 2.0, camera.height_px / 2.0)
        ranked = np.asarray(fix.retrieval.ranked_rows if fix is not None and fix.retrieval else [], np.int64)
        hits.append(tile_contains(cols["center_e"][ranked], cols["center_n"][ranked], cols["size_m"][ranked],
                                  float(ce), float(cn)))
        err = math.hypot(res.easting - pose.easting, res.northing - pose.northing)
        errors.append(err)
        sigmas.append(res.sigma_m)
        is_fix.append(res.status.is_fix)
        latencies.append(res.latency_s)
        refined.append(res.status.value == "verified")
        if res.heading_deg is not None:
            heading_err.append(abs((res.heading_deg - pose.yaw_deg + 180.0) % 360.0 - 180.0))
        rows_out.append({
            "view": i, "true_e": pose.easting, "true_n": pose.northing, "true_lat": None, "true_lon": None,
            "altitude_m": pose.altitude_m, "yaw_deg": pose.yaw_deg, "pitch_deg": pose.pitch_deg,
            "roll_deg": pose.roll_deg, "status": res.status.value, "est_e": res.easting, "est_n": res.northing,
            "lat": res.lat, "lon": res.lon, "error_m": err, "sigma_m": res.sigma_m, "score": res.score,
            "heading_deg": res.heading_deg, "latency_ms": 1e3 * res.latency_s, "refined": res.status.value ==
            "verified", "inliers": res.inliers, "est_altitude_m": res.altitude_m, "est_pitch_deg": res.pitch_deg,
            "est_roll_deg": res.roll_deg, "reason": res.reason,
        })
    for r in rows_out:
        r["true_lat"], r["true_lon"] = drone_map.map_to_wgs84(r["true_e"], r["true_n"])

    errors_a = np.array(errors)
    stats = summarize_errors(errors_a, np.array(sigmas), np.array(is_fix))
    recall = recall_at_k(hits, (1, 5, 10))
    summary = {
        "dataset": "dgsamples Longmont CO: map WV2 2014-06-20 0.5 m, views from WV3 2014-10-06 0.3 m",
        "model": model.name if model is not None else cfg.model.name,
        "model_weights": describe_weights(cfg.model.weights) if model is None else model.identity()["weights_sha256"],
        "heading": cfg.index.heading, "rotations": cfg.index.rotations, "tile_sizes_m": cfg.map.tile_sizes_m,
        "index_vectors": index.ntotal, "views": n_views, "seed": seed,
        **recall, **stats.as_dict(),
        "median_error_all_views_m": float(np.median(errors_a)),
        "refine": cfg.refine.enabled, "refined_rate": float(np.mean(refined)),
        "median_heading_error_deg": float(np.median(heading_err)) if heading_err else None,
        "mean_latency_ms": 1e3 * float(np.mean(latencies)),
        "index_time_s": t_index, "total_time_s": time.perf_counter() - t_start,
        "index_dir": str(index_dir), "config": to_dict(cfg),
    }
    with open(out_dir / "fixes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)
    plot_track(out_dir / "track.png", localizer, rows_out, summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir / "summary.json"


def run_demo_flight(out_dir: Path, cfg: Config, seconds: float = 10.0, rate_hz: float = 10.0, seed: int = 0,
                    cache_dir: Path | None = None, progress: bool = True) -> Path:
    """A synthetic flight over WV3 (smooth loop at 8 m/s, rigid camera, IMU attitude + altitude + field of view as
    priors) localized frame by frame by the tracker, as the node does: ``summary.json`` (verified / tracked / no fix,
    errors to the drone position, 2σ coverage, ms per frame) and ``frames.csv`` in ``out_dir``."""
    from mobilegeo_ros.geo.flight import flight_poses

    out_dir.mkdir(parents=True, exist_ok=True)
    localizer = Localizer.from_files(build_demo_index(cfg, cache_dir or default_cache_dir(), progress), cfg)
    tracker = Tracker(localizer, cfg)
    wv3 = dgsamples.load_scene("wv3")
    camera = CameraModel(cfg.render.image_width_px, cfg.render.image_height_px, cfg.render.hfov_deg)
    poses = flight_poses(wv3, seconds, rate_hz, seed, cfg.render, camera=camera)
    rng = np.random.default_rng([seed, 1])
    rows = []
    for t, pose in tqdm(poses, desc="flight", unit="frame", disable=not progress):
        image = photometric(render_view(wv3, pose, camera), rng, cfg.render)
        res = tracker.process(image, t, Priors(pitch_deg=pose.pitch_deg, roll_deg=pose.roll_deg,
                                               altitude_m=pose.altitude_m, hfov_deg=camera.hfov_deg))
        rows.append({"t_s": t, "status": res.status.value, "error_m": math.hypot(res.easting - pose.easting,
                                                                              res.northing - pose.northing),
                     "sigma_m": res.sigma_m, "latency_ms": 1e3 * res.latency_s, "reason": res.reason})
    stats = summarize_errors(np.array([r["error_m"] for r in rows]), np.array([r["sigma_m"] for r in rows]),
                             np.array([r["status"] != "no_fix" for r in rows]))
    lat = np.array([r["latency_ms"] for r in rows])
    summary = {"frames": len(rows), "seconds": seconds, "rate_hz": rate_hz, "seed": seed,
               **{k: sum(r["status"] == k for r in rows) for k in ("verified", "tracked", "no_fix")},
               **stats.as_dict(), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
               "matcher": cfg.refine.matcher}
    with open(out_dir / "frames.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir / "summary.json"


def format_flight_table(summary: dict) -> str:
    """The demo flight's table (Markdown)."""
    def f(key: str) -> str:
        v = summary.get(key)
        return "n/a" if v is None else f"{v:.1f}"

    return "\n".join([
        "| frames | verified | tracked | no fix | median err | p95 err | within 2σ | fixes > 50 m | ms/frame p50 / p99 |",
        "|" + "---|" * 9,
        f"| {summary['frames']} | {summary['verified']} | {summary['tracked']} | {summary['no_fix']} | "
        f"{f('median_error_m')} m | {f('p95_error_m')} m | "
        f"{100 * (summary['within_2sigma_fraction'] or 0):.0f} % | {summary['wrong_confident_fixes']} | "
        f"{summary['p50_ms']:.0f} / {summary['p99_ms']:.0f} |"])


def plot_track(path: Path, localizer: Localizer, rows: list[dict], summary: dict) -> Path:
    """PNG: map (index tile centres as context) with true positions, estimates and their 2-sigma circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from mobilegeo_ros.geo.raster import read_orthophoto

    wv2 = dgsamples.scene("wv2")
    background = read_orthophoto(wv2.pan)
    left, bottom, right, top = background.bounds
    fig, ax = plt.subplots(figsize=(9, 9))
    step = max(1, background.rgb.shape[0] // 1000)
    ax.imshow(background.rgb[::step, ::step], extent=(left, right, bottom, top), alpha=0.8)
    for r in rows:
        ok = r["status"] != "no_fix"
        ax.plot(r["true_e"], r["true_n"], "o", color="lime", ms=5)
        if math.isfinite(r["est_e"]):
            ax.plot([r["true_e"], r["est_e"]], [r["true_n"], r["est_n"]], "-", color="yellow" if ok else "grey", lw=1)
            ax.plot(r["est_e"], r["est_n"], "x", color="red" if ok else "grey", ms=6)
            if ok and math.isfinite(r["sigma_m"]):
                ax.add_patch(Circle((r["est_e"], r["est_n"]), 2 * r["sigma_m"], fill=False, color="red", lw=0.5,
                                    alpha=0.6))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("easting (m, EPSG:32613)")
    ax.set_ylabel("northing (m)")
    ax.set_title(f"truth (green) vs fixes (red x, 2σ circles; grey = no fix)\n"
                 f"R@1 {summary['recall@1']:.0f}%  median error {summary['median_error_m']:.1f} m  "
                 f"fix rate {100 * summary['fix_rate']:.0f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(summary: dict) -> str:
    """The demo's result table (Markdown)."""
    def f(key: str, fmt: str = "{:.1f}") -> str:
        v = summary.get(key)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    head = ("| views | fixes | refined | recall@1 | recall@5 | recall@10 | median err (fixes) | p95 err | within 2σ | "
            "fixes > 50 m | median heading err | ms/query |")
    sep = "|" + "---|" * 12
    refined = "off" if not summary.get("refine", False) else f"{100 * summary.get('refined_rate', 0.0):.0f} %"
    row = (f"| {summary['views']} | {summary['fixes']} ({100 * summary['fix_rate']:.0f} %) | {refined} | "
           f"{f('recall@1')} % | "
           f"{f('recall@5')} % | {f('recall@10')} % | {f('median_error_m')} m | {f('p95_error_m')} m | "
           f"{100 * summary['within_2sigma_fraction']:.0f} % | {summary['wrong_confident_fixes']} | "
           f"{f('median_heading_error_deg')}° | "
           f"{f('mean_latency_ms', '{:.0f}')} |")
    return "\n".join([head, sep, row])
