#!/usr/bin/env python3
"""Accelerated long replay through the node's pipeline: memory and latency over time, and the honesty figures.

A drone flies laps of a circle over the synthetic test map (test/synthetic_world.py `synthetic_setup`,
200 m × 200 m) at ``--speed`` m/s; one lap of nadir views (``--size``, default 160×120) is rendered once and replayed
lap after lap with increasing stamps at ``--rate`` Hz until ``--hours`` of flight time have been fed to
:meth:`LocalizationPipeline.process` (the real localizer, window, refinement and Kalman filter), as fast as the CPU
allows. Altitude and heading priors are given as the node would get them from the flight controller.

Printed: frames, wall time, resident memory (RSS, from /proc/self/statm) and latency sampled over time and the
slope of a least-squares line through them (MB per flight hour, ms per flight hour; the first ``--warmup`` fraction
is left out of the fit: caches such as the map keypoints per block fill then), the largest state sizes (window,
latency deque, filter), and the honesty figures on the track (:func:`mobilegeo_ros.eval.localization.
summarize_errors`): fix rate, error percentiles, the fraction of fixes whose true error is within the reported
2-sigma, and the number of fixes with error > 50 m reported with status fix.

    .venv/bin/python benchmarks/soak.py --hours 1 --rate 5 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # test helpers: synthetic_world

from mobilegeo_ros import config as config_mod  # noqa: E402
from mobilegeo_ros.eval.localization import summarize_errors  # noqa: E402
from mobilegeo_ros.io.images import encode_image  # noqa: E402
from mobilegeo_ros.localizer import Priors  # noqa: E402
from mobilegeo_ros.ros.pipeline import Frame, LocalizationPipeline  # noqa: E402

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Resident set size of this process, MB (/proc/self/statm, second field, pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MB


def slope_per_hour(t_h: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against ``t_h`` (hours); NaN with fewer than 2 distinct times."""
    if len(t_h) < 2 or np.ptp(t_h) == 0:
        return math.nan
    return float(np.polyfit(t_h, y, 1)[0])


def lap_views(setup, rate_hz: float, speed_mps: float, radius_m: float, size: tuple[int, int], altitude_m: float):
    """One lap of the circle: ``[(Image fields, (lat, lon))]`` for the frames of one lap at ``rate_hz``."""
    from synthetic_world import render_views

    n = max(8, int(round(2 * math.pi * radius_m / speed_mps * rate_hz)))
    span = 200.0  # SMALL_MAP: 400 px at 0.5 m
    frac = radius_m / span
    pos = [(0.5 + frac * math.cos(2 * math.pi * k / n), 0.5 + frac * math.sin(2 * math.pi * k / n)) for k in range(n)]
    views = render_views(setup, pos, altitude_m=altitude_m, size_px=size)
    return [(encode_image(rgb, "bgr8"), latlon) for rgb, _, latlon in views]


def soak(hours: float, rate_hz: float, speed_mps: float = 5.0, radius_m: float = 50.0,
         size: tuple[int, int] = (160, 120), altitude_m: float = 60.0, samples: int = 60, warmup: float = 0.1,
         max_wall_s: float | None = None, progress: bool = True) -> dict:
    from mobilegeo_ros.localizer import Localizer
    from synthetic_world import synthetic_setup

    setup = synthetic_setup()
    cfg = config_mod.from_dict({**setup.overrides, "node": {"window_size": 5, "window_s": 2.0, "max_views": 3}})
    pipe = LocalizationPipeline(Localizer.from_files(setup.index_dir, cfg), cfg)
    lap = lap_views(setup, rate_hz, speed_mps, radius_m, size, altitude_m)
    frames = int(round(hours * 3600.0 * rate_hz))
    every = max(1, frames // samples)
    priors = Priors(altitude_m=altitude_m, yaw_deg=0.0, hfov_deg=70.0)

    gc.collect()
    rss0 = rss_mb()
    t_h, rss, lat_ms = [], [], []
    window_lat: list[float] = []
    errors, sigmas, is_fix = np.full(frames, np.nan), np.full(frames, np.nan), np.zeros(frames, bool)
    max_window = 0
    wall0 = time.perf_counter()
    done = 0
    for k in range(frames):
        fields, (lat, lon) = lap[k % len(lap)]
        stamp = 1_700_000_000.0 + k / rate_hz
        out = pipe.process(Frame("raw", fields, stamp_s=stamp), priors)
        done = k + 1
        if out is not None:
            window_lat.append(1e3 * out.latency_s)
            if out.status.is_fix:
                e, n, _ = pipe.tracker.enu.to_enu(lat, lon, pipe.tracker.enu.origin_h)
                errors[k] = math.hypot(out.e - e, out.n - n)
                sigmas[k] = math.sqrt(max(np.trace(out.cov_en), 0.0) / 2.0)
                is_fix[k] = True
        max_window = max(max_window, len(pipe.tracker.window))
        if (k + 1) % every == 0 or k + 1 == frames:
            t_h.append((k + 1) / rate_hz / 3600.0)
            rss.append(rss_mb())
            lat_ms.append(float(np.mean(window_lat)) if window_lat else math.nan)
            window_lat = []
            if progress:
                print(f"  {t_h[-1] * 60:6.1f} flight-min  rss {rss[-1]:7.1f} MB  latency {lat_ms[-1]:6.1f} ms  "
                      f"wall {time.perf_counter() - wall0:6.1f} s", flush=True)
            if max_wall_s is not None and time.perf_counter() - wall0 > max_wall_s:
                break
    wall = time.perf_counter() - wall0
    t_h, rss, lat_ms = np.array(t_h), np.array(rss), np.array(lat_ms)
    fit = t_h >= warmup * t_h[-1] if len(t_h) else np.zeros(0, bool)
    snap = pipe.stats.snapshot()
    summ = summarize_errors(errors[:done], sigmas[:done], is_fix[:done])
    return {
        "frames": done, "flight_hours": done / rate_hz / 3600.0, "rate_hz": rate_hz, "image": list(size),
        "wall_s": wall, "speedup": done / rate_hz / wall,
        "rss_start_mb": rss0, "rss_end_mb": float(rss[-1]), "rss_max_mb": float(rss.max()),
        "rss_slope_mb_per_h": slope_per_hour(t_h[fit], rss[fit]),
        "rss_slope_all_mb_per_h": slope_per_hour(t_h, rss),
        "latency_mean_ms": float(np.nanmean(lat_ms)), "latency_first_ms": float(lat_ms[0]),
        "latency_last_ms": float(lat_ms[-1]),
        "latency_slope_ms_per_h": slope_per_hour(t_h[fit], lat_ms[fit]),
        "latency_p99_ms_last100": snap["latency_p99_ms"],
        "max_window": max_window, "latency_deque": len(pipe.stats.latencies_s),
        "receipts_deque": len(pipe.stats.receipts_s), "filter_counts": dict(pipe.tracker.filter.counts),
        "stats": {k: snap[k] for k in ("processed", "fixes", "no_fixes", "errors", "rejected", "filter_rejected")},
        "honesty": summ.as_dict(),
        "samples": {"t_h": t_h.tolist(), "rss_mb": rss.tolist(), "latency_ms": lat_ms.tolist()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=1.0, help="flight time to replay (default 1)")
    ap.add_argument("--rate", type=float, default=5.0, help="camera rate, Hz (default 5)")
    ap.add_argument("--speed", type=float, default=5.0, help="ground speed, m/s (default 5)")
    ap.add_argument("--size", default="160x120", help="image size WxH (default 160x120)")
    ap.add_argument("--samples", type=int, default=60, help="memory/latency samples over the run")
    ap.add_argument("--max-wall-s", type=float, help="stop early after this many seconds of wall time")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    r = soak(args.hours, args.rate, args.speed, size=(w, h), samples=args.samples, max_wall_s=args.max_wall_s)
    hon = r["honesty"]
    print(f"frames {r['frames']} = {r['flight_hours']:.2f} flight-h at {r['rate_hz']:g} Hz ({r['image'][0]}x"
          f"{r['image'][1]}) in {r['wall_s']:.0f} s wall ({r['speedup']:.1f}x real time)")
    print(f"RSS: start {r['rss_start_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB, max {r['rss_max_mb']:.0f} MB; "
          f"slope {r['rss_slope_mb_per_h']:+.2f} MB/flight-h after warm-up ({r['rss_slope_all_mb_per_h']:+.2f} "
          f"including it)")
    print(f"latency: mean {r['latency_mean_ms']:.1f} ms (first sample {r['latency_first_ms']:.1f}, last "
          f"{r['latency_last_ms']:.1f}); slope {r['latency_slope_ms_per_h']:+.2f} ms/flight-h; p99 of the last 100 "
          f"{r['latency_p99_ms_last100']:.1f} ms")
    print(f"bounded state: window max {r['max_window']}, latency deque {r['latency_deque']}, receipts deque "
          f"{r['receipts_deque']}; filter {r['filter_counts']}; stats {r['stats']}")
    print(f"honesty: fixes {hon['fixes']}/{hon['queries']} (rate {hon['fix_rate']:.3f}), error median "
          f"{hon['median_error_m']:.2f} m, p95 {hon['p95_error_m']:.2f} m, max {hon['max_error_m']:.2f} m; "
          f"within 2 sigma {hon['within_2sigma_fraction']:.3f}; fixes > 50 m with status fix: "
          f"{hon['wrong_confident_fixes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
