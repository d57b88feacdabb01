#!/usr/bin/env python3
"""Benchmark embedding throughput (images/s) at batch 1 and batch 32 for the torch and onnxruntime backends.

Images are 224×224 RGB crops of a synthetic map (preprocessing included in the timing, as in production).

    .venv/bin/python benchmarks/bench_embed.py --threads 2 --json /tmp/bench_embed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import ModelConfig  # noqa: E402
from mobilegeo_ros.geo.synthetic import synthetic_rgb  # noqa: E402
from mobilegeo_ros.model import ModelError, load_model  # noqa: E402


def images_per_s(model, images: list[np.ndarray], batch: int, min_s: float) -> float:
    model.embed(images[:batch])  # warm-up (allocations, lazy init)
    done, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(images) - batch + 1, batch):
            model.embed(images[s:s + batch])
            done += batch
        if time.perf_counter() - t0 >= min_s:
            return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="torch,onnxruntime", help="backends to time (default %(default)s)")
    ap.add_argument("--batches", default="1,32", help="batch sizes (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default %(default)s)")
    ap.add_argument("--input-px", type=int, default=224, help="network input size (default %(default)s)")
    ap.add_argument("--min-seconds", type=float, default=5.0, help="time per measurement (default %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    scene = (synthetic_rgb(1024, 1024, 0.5, seed=0) * 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    images = [scene[r:r + 224, c:c + 224] for r, c in rng.integers(0, 800, (64, 2))]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    print(f"embedding throughput, {args.input_px}×{args.input_px} input, {args.threads} CPU threads")
    print(f"{'backend':<12s} {'batch':>5s} {'images/s':>9s} {'ms/image':>9s}")
    with tempfile.TemporaryDirectory() as cache:
        os.environ.setdefault("MOBILEGEO_CACHE_DIR", cache)  # ONNX export goes to a throwaway cache
        for backend in [b for b in args.backends.split(",") if b]:
            try:
                model = load_model(ModelConfig(backend=backend, num_threads=args.threads, input_px=args.input_px,
                                               batch_size=max(batches)))
            except ModelError as e:
                print(f"{backend:<12s} unavailable: {e}")
                continue
            for b in batches:
                ips = images_per_s(model, images, b, args.min_seconds)
                rows.append({"backend": backend, "batch": b, "images_per_s": ips, "threads": args.threads,
                             "input_px": args.input_px})
                print(f"{backend:<12s} {b:>5d} {ips:>9.1f} {1e3 / ips:>9.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
