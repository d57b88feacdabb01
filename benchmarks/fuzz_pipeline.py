#!/usr/bin/env python3
"""Fuzz the node's message path and the CLI's file inputs; print crashes (must be 0), rejections by reason, fixes.

Message fuzz: ``--n`` frames (default 10 000) through :meth:`LocalizationPipeline.process` with the real localizer on
the synthetic test map (test/synthetic_world.py `synthetic_setup`). Each frame is one of: a wrong or unknown
encoding, a wrong ``step``, a data size that does not match, zero or huge dimensions (claimed, not allocated), tiny
valid images (1×1 ...), truncated / bit-flipped / spliced JPEG and PNG, random bytes under a compressed format, a
NaN / inf stamp, an out-of-order / duplicate / backwards-jumping stamp, odd priors (NaN, inf, out of range) and
about every tenth a valid rendered view. Only the field types a ROS message can carry are used (uint32 sizes, str,
uint8[] data). A crash is an exception escaping ``process``; rejected frames are counted by reason (the field the
decoder names); backend errors by exception type. Afterwards a clean track of valid frames must still localize.

CLI fuzz (``--cli N``): corrupt and odd files handed to ``mobilegeo localize`` and ``mobilegeo build-index``
(in-process :func:`mobilegeo_ros.cli.main`, stderr captured): every run must exit 0 or exit 2 with one line
``mobilegeo: error: ...``; anything else (a traceback, another status) is a crash.

    .venv/bin/python benchmarks/fuzz_pipeline.py --n 10000 --cli 200 --json /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # test helpers: synthetic_world

from mobilegeo_ros import config as config_mod  # noqa: E402
from mobilegeo_ros.io.images import SUPPORTED_ENCODINGS, bytes_per_pixel, encode_compressed, encode_image  # noqa: E402
from mobilegeo_ros.localizer import Priors  # noqa: E402
from mobilegeo_ros.ros.pipeline import Frame, LocalizationPipeline  # noqa: E402

U32 = 2**32 - 1


# ---------------------------------------------------------------------------------------------------------------------
# Malformed messages


def _mutate(blob: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(blob)
    op = rng.integers(4)
    if op == 0:  # truncate
        return bytes(b[: int(rng.integers(0, len(b)))])
    if op == 1:  # flip some bytes
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 16))):
            b[i] = int(rng.integers(256))
        return bytes(b)
    if op == 2:  # rewrite the size fields in the header
        i = b.find(b"IHDR")
        i = i + 4 if i >= 0 else max(b.find(b"\xff\xc0"), 0) + 5
        b[i: i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        return bytes(b)
    i = int(rng.integers(0, len(b)))  # splice random bytes in
    return bytes(b[:i]) + rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes() + bytes(b[i:])


def _raw_fields(rng: np.random.Generator, rgb: np.ndarray) -> tuple[str, dict]:
    """(mutation name, Image fields) with one thing wrong (or odd but legal)."""
    enc = str(rng.choice(SUPPORTED_ENCODINGS))
    f = encode_image(rgb, enc, step=rgb.shape[1] * bytes_per_pixel(enc) + int(rng.integers(0, 4)))
    kind = int(rng.integers(9))
    if kind == 0:
        f["encoding"] = str(rng.choice(["yuv422", "bayer_rggb8", "32FC1", "", "RGB8", "rgb16", "\x00", "mono8 "]))
        return "raw_bad_encoding", f
    if kind == 1:
        f["step"] = int(rng.choice([0, 1, f["step"] - 1, f["step"] + 1, U32, int(rng.integers(0, 10_000))]))
        return "raw_bad_step", f
    if kind == 2:
        d = f["data"]
        f["data"] = d[: int(rng.integers(0, len(d)))] if rng.random() < 0.5 else d + bytes(int(rng.integers(1, 99)))
        return "raw_bad_size", f
    if kind == 3:
        f["height"], f["width"] = (int(rng.choice([0, 1, U32, 65535])), int(rng.choice([0, 1, U32, 65535])))
        return "raw_zero_or_huge_dims", f
    if kind == 4:  # claims a huge image whose data size matches a small stride: refused before allocating
        f.update(height=U32, width=U32, step=U32, data=b"")
        return "raw_zero_or_huge_dims", f
    if kind == 5:  # a legal, tiny image
        h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        return "raw_tiny_valid", encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), enc)
    if kind == 6:
        f["data"] = np.frombuffer(f["data"], np.uint8).copy() if rng.random() < 0.5 else list(f["data"])
        f["is_bigendian"] = int(rng.integers(0, 256))
        return "raw_odd_container", f
    if kind == 7:  # random bytes of the right length: a legal (noise) image
        f["data"] = rng.integers(0, 256, len(f["data"]), dtype=np.uint8).tobytes()
        return "raw_noise_valid", f
    f["data"] = b""
    return "raw_bad_size", f


def _compressed_fields(rng: np.random.Generator, rgb: np.ndarray, blobs: dict) -> tuple[str, dict]:
    kind = int(rng.integers(5))
    which = "jpeg" if rng.random() < 0.5 else "png"
    fmt = str(rng.choice([which, "rgb8; jpeg compressed bgr8", "png", "jpeg", "", "16UC1; compressedDepth png"]))
    if kind == 0:
        return "compressed_random_bytes", {"format": fmt, "data": rng.integers(0, 256, int(rng.integers(0, 2000)),
                                                                             dtype=np.uint8).tobytes()}
    if kind == 1:
        magic = b"\xff\xd8\xff" if which == "jpeg" else b"\x89PNG\r\n\x1a\n"
        tail = rng.integers(0, 256, int(rng.integers(0, 500)), dtype=np.uint8).tobytes()
        return "compressed_magic_then_garbage", {"format": fmt, "data": magic + tail}
    if kind == 2:
        return "compressed_empty", {"format": fmt, "data": b""}
    blob = blobs[which]
    if kind == 3:
        return f"{which}_corrupted", {"format": fmt, "data": _mutate(blob, rng)}
    return f"{which}_truncated", {"format": fmt, "data": blob[: int(rng.integers(0, len(blob)))]}


ODD_STAMPS = [math.nan, math.inf, -math.inf]


def _odd_priors(rng: np.random.Generator) -> Priors | None:
    if rng.random() < 0.7:
        return None
    pick = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e9, -1e9, 360.0, 720.5, 45.0, 80.0, None]

    def v():
        return pick[int(rng.integers(len(pick)))]

    return Priors(yaw_deg=v(), pitch_deg=v(), roll_deg=v(), altitude_m=v(), hfov_deg=v(), lat=v(), lon=v(),
                  radius_m=v())


def _reason(msg: str) -> str:
    """'raw image: step: 3 bytes is smaller ...' -> 'raw image: step' (the field the decoder names)."""
    m = re.match(r"(raw|compressed) image: ([^:]+):", msg)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    return re.sub(r"[-+]?\d[\d.e+-]*|nan|inf", "#", msg)[:60]


def fuzz_messages(n: int, seed: int = 0, valid_every: int = 10, clean_track: int = 30) -> dict:
    """Feed ``n`` fuzzed frames, then ``clean_track`` valid frames; return the figures (see the module docstring)."""
    from mobilegeo_ros.localizer import Localizer
    from synthetic_world import render_views, synthetic_setup

    rng = np.random.default_rng(seed)
    setup = synthetic_setup()
    cfg = config_mod.from_dict({**setup.overrides, "node": {"window_size": 3, "window_s": 5.0, "max_views": 2}})
    pipe = LocalizationPipeline(Localizer.from_files(setup.index_dir, cfg), cfg)
    positions = [(0.3 + 0.4 * a, 0.3 + 0.4 * b) for a in (0.0, 0.25, 0.5, 0.75, 1.0) for b in (0.0, 0.5, 1.0)]
    views = render_views(setup, positions)
    blobs = {kind: encode_compressed(views[0][0], kind)["data"] for kind in ("jpeg", "png")}

    crashes: list[str] = []
    kinds, outcomes = Counter(), Counter()
    secs_by_kind, max_s_by_kind = Counter(), Counter()
    rejected_by_reason, errors_by_type = Counter(), Counter()
    stamp = 1000.0
    t0 = time.perf_counter()
    for i in range(n):
        rgb = views[int(rng.integers(len(views)))][0]
        stamp_kind = int(rng.integers(10))
        if stamp_kind == 0:
            s = ODD_STAMPS[int(rng.integers(3))]
        elif stamp_kind == 1:
            s = stamp  # duplicate
        elif stamp_kind == 2:
            stamp -= float(rng.uniform(0.01, 500.0))  # out of order / backwards jump (bag loop)
            s = stamp
        elif stamp_kind == 3:
            stamp += float(rng.uniform(5.0, 1e6))  # forwards jump beyond the window and the filter gap
            s = stamp
        else:
            stamp += 0.2
            s = stamp
        if i % valid_every == 0:
            name = "valid"
            frame = Frame("raw", encode_image(rgb, str(rng.choice(["rgb8", "bgr8", "mono8"]))), stamp_s=s) \
                if rng.random() < 0.5 else Frame("compressed", encode_compressed(rgb, "jpeg"), stamp_s=s)
        elif rng.random() < 0.5:
            name, fields = _raw_fields(rng, rgb)
            frame = Frame("raw", fields, stamp_s=s)
        else:
            name, fields = _compressed_fields(rng, rgb, blobs)
            frame = Frame("compressed", fields, stamp_s=s)
        if not math.isfinite(s):
            name += "+nan_stamp"
        kinds[name] += 1
        before = pipe.stats.snapshot()
        priors = _odd_priors(rng)
        t1 = time.perf_counter()
        try:
            out = pipe.process(frame, priors)
        except Exception as e:  # noqa: BLE001 - the point of the fuzz: count what escapes
            crashes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        finally:
            dt = time.perf_counter() - t1
            secs_by_kind[name] += dt
            max_s_by_kind[name] = max(max_s_by_kind[name], dt)
        after = pipe.stats.snapshot()
        if out is not None:
            outcomes["fix" if out.status.is_fix else out.status.value] += 1
            if not (not out.status.is_fix or all(map(math.isfinite, (out.e, out.n, out.lat, out.lon)))
                    and np.all(np.isfinite(out.cov_en))):
                crashes.append(f"{name}: a fix with a non-finite position or covariance")
        elif after["errors"] > before["errors"]:
            outcomes["backend_error"] += 1
            errors_by_type[f"{name}: {after['last_error'][:90]}"] += 1
        elif after["rejected"] > before["rejected"]:
            outcomes["rejected"] += 1
            rejected_by_reason[_reason(after["last_error"])] += 1
        else:
            crashes.append(f"{name}: process returned None without counting the frame")
    fuzz_s = time.perf_counter() - t0

    # Afterwards: a clean, in-order track (a straight line at 5 Hz, ~2.7 m per frame) must still localize.
    errs, clean = [], Counter()
    stamp = (stamp if math.isfinite(stamp) else 0.0) + 100.0
    track = render_views(setup, [(0.3 + 0.4 * k / max(clean_track - 1, 1), 0.5) for k in range(clean_track)])
    for rgb, _, (lat, lon) in track:
        stamp += 0.2
        # the priors a camera with camera_info and an altimeter gives (render_views: 60 m, 70° field of view)
        out = pipe.process(Frame("raw", encode_image(rgb, "rgb8"), stamp_s=stamp), Priors(altitude_m=60.0, hfov_deg=70.0))
        clean[("fix" if out.status.is_fix else out.status.value) if out else "none"] += 1
        if out is not None and out.status.is_fix:
            e, n_, _ = pipe.tracker.enu.to_enu(lat, lon, pipe.tracker.enu.origin_h)
            errs.append(math.hypot(out.e - e, out.n - n_))
    return {
        "messages": n, "seconds": fuzz_s, "crashes": len(crashes), "crash_examples": crashes[:10],
        "kinds": dict(kinds), "seconds_by_kind": {k: round(v, 3) for k, v in secs_by_kind.most_common()},
        "max_ms_by_kind": {k: round(1e3 * v, 1) for k, v in max_s_by_kind.most_common()},
        "outcomes": dict(outcomes), "rejected_by_reason": dict(rejected_by_reason.most_common()),
        "backend_errors": dict(errors_by_type.most_common()),
        "stats": {k: v for k, v in pipe.stats.snapshot().items() if isinstance(v, (int, float))},
        "clean_track": {"frames": clean_track, **dict(clean),
                        "median_error_m": float(np.median(errs)) if errs else math.nan,
                        "max_error_m": float(np.max(errs)) if errs else math.nan},
    }


# ---------------------------------------------------------------------------------------------------------------------
# CLI files


def _odd_files(d: Path, rng: np.random.Generator, n: int, good_jpeg: bytes, good_png: bytes,
               good_tif: bytes) -> list[tuple[str, Path]]:
    """``n`` (kind, path) corrupt or odd files."""
    import cv2

    out = []
    for i in range(n):
        k = int(rng.integers(9))
        if k == 0:
            name, ext, data = "random_bytes", str(rng.choice([".jpg", ".png", ".tif", ".bmp", ""])), \
                rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        elif k == 1:
            name, ext, data = "empty", str(rng.choice([".jpg", ".png", ".tif"])), b""
        elif k == 2:
            name, ext, data = "jpeg_truncated_or_corrupt", ".jpg", _mutate(good_jpeg, rng)
        elif k == 3:
            name, ext, data = "png_truncated_or_corrupt", ".png", _mutate(good_png, rng)
        elif k == 4:
            name, ext, data = "tiff_truncated_or_corrupt", ".tif", _mutate(good_tif, rng)
        elif k == 5:  # a JPEG named .png and vice versa (the magic bytes win)
            name, ext, data = "wrong_extension", str(rng.choice([".png", ".jpg", ".tif"])), \
                (good_jpeg if rng.random() < 0.5 else good_png)
        elif k == 6:  # legal but tiny images
            h, w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            ext = str(rng.choice([".png", ".jpg", ".bmp"]))
            ok, enc = cv2.imencode(ext, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            name, data = "tiny_valid_image", enc.tobytes()
        elif k == 7:
            name, ext, data = "directory", "", None
        else:
            name, ext, data = "text", ".jpg", b"hello, not an image\n" * int(rng.integers(0, 50))
        p = d / f"f{i:05d}{ext}"
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
        out.append((name, p))
    return out


def _run_cli(argv: list[str]) -> tuple[int | str, str]:
    """(exit status or 'exception', stderr) of an in-process ``mobilegeo`` run."""
    from mobilegeo_ros import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
        except Exception:  # noqa: BLE001 - counted as a crash
            return "exception", traceback.format_exc()
    return rc, err.getvalue()


def fuzz_cli(n: int, seed: int = 0, work: Path | None = None) -> dict:
    """Hand ``n`` corrupt/odd files to ``localize`` and ``build-index``; returns outcome counts and crash examples."""
    from synthetic_world import render_views, synthetic_setup

    rng = np.random.default_rng(seed)
    setup = synthetic_setup()
    rgb = render_views(setup, [(0.5, 0.5)])[0][0]
    good_jpeg, good_png = encode_compressed(rgb, "jpeg")["data"], encode_compressed(rgb, "png")["data"]
    good_tif = setup.map_path.read_bytes()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        d = Path(tmp)
        cfg_path = d / "cfg.json"
        cfg_path.write_text(json.dumps(setup.overrides))
        files = _odd_files(d, rng, n, good_jpeg, good_png, good_tif)
        outcomes, crashes = Counter(), []
        t0 = time.perf_counter()
        for i, (kind, p) in enumerate(files):
            if i % 2 == 0:
                verb = "localize"
                argv = ["localize", "--index", str(setup.index_dir), str(p)]
            else:
                verb = "build-index"
                argv = ["build-index", str(p), "--out", str(d / f"idx{i}"), "--config", str(cfg_path), "--quiet"]
            rc, err = _run_cli(argv)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            one_line = rc == 2 and len(lines) == 1 and lines[0].startswith("mobilegeo: error:")
            if rc == 0 or one_line:
                outcomes[f"{verb}: {kind}: exit {rc}"] += 1
            else:
                crashes.append(f"{verb} {kind}: rc={rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
            if rc != 0 and (d / f"idx{i}").exists():
                crashes.append(f"{verb} {kind}: left a half-written index directory")
        seconds = time.perf_counter() - t0
    return {"files": n, "seconds": seconds, "crashes": len(crashes), "crash_examples": crashes[:10],
            "outcomes": dict(sorted(outcomes.items()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="fuzzed messages (default 10000)")
    ap.add_argument("--cli", type=int, default=200, help="fuzzed CLI files (default 200; 0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    res = {"messages": fuzz_messages(args.n, args.seed)}
    m = res["messages"]
    print(f"messages handled: {m['messages']} in {m['seconds']:.1f} s   crashes (exceptions escaping process): "
          f"{m['crashes']}")
    print(f"outcomes: {m['outcomes']}")
    print("time per kind (total s / worst ms / count):")
    for k, v in m["seconds_by_kind"].items():
        print(f"  {v:8.2f} s {m['max_ms_by_kind'][k]:9.1f} ms {m['kinds'][k]:6d}  {k}")
    print("rejected by reason:")
    for r, c in m["rejected_by_reason"].items():
        print(f"  {c:6d}  {r}")
    print("backend errors (frame dropped, diagnostics ERROR):")
    for r, c in m["backend_errors"].items():
        print(f"  {c:6d}  {r}")
    print(f"clean track afterwards: {m['clean_track']}")
    for c in m["crash_examples"]:
        print(f"  CRASH {c}")
    if args.cli:
        res["cli"] = c = fuzz_cli(args.cli, args.seed)
        print(f"CLI files: {c['files']} in {c['seconds']:.1f} s   crashes (traceback or exit not in {{0, 2}} "
              f"one-liner): {c['crashes']}")
        for k, v in c["outcomes"].items():
            print(f"  {v:5d}  {k}")
        for e in c["crash_examples"]:
            print(f"  CRASH {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 1 if m["crashes"] or res.get("cli", {}).get("crashes") else 0


if __name__ == "__main__":
    sys.exit(main())
