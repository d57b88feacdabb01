"""MSRM ablation: which views of a window to fuse, and how, measured on the synthetic map (licence-clean).

For each of ``--places`` places, the drone flies a short straight track (random heading, 1 m per frame, hovering
on about half the frames: the redundant views MSRM is meant to drop) ending at that place, at ``--altitude`` m,
heading within ±``--yaw-jitter``° of north, every frame with random photometric degradation (``cfg.render``). The
last N frames form a window, N in ``--windows``; each frame is embedded once (as in the node) and every method
fuses the same embeddings:

* ``newest``: the newest view alone (single-view baseline);
* ``mean-all``: all N views averaged (no selection);
* ``cos-prune k``: the former ``select_views`` (greedy cosine pruning, ``max_views`` = k, similarity 0.995), mean;
* ``MI k``: :func:`mobilegeo_ros.msrm.select_views` (MI selection), mean of the kept views;
* ``MI k +w``: MI selection, information-weighted :func:`msrm_variants.fuse` (test/msrm_variants.py);
* ``mean-all +w``: all N views, information-weighted;
* ``MI N @s``: MI selection with the lower threshold ``--extra-similarity`` s (more pruning), with and without +w.

k is ``cfg.node.max_views`` (the node) or N (``Localizer._fuse``: threshold only). Reported per N and method:
recall@1 (the top-1 tile of the fused query contains the newest view's ground point), the median distance from the
top-1 tile centre to it (m), and the views fused per window. Selection saves no encoder call in the node (each frame
is embedded once and cached in the window); with ``index.heading: query_rotations`` the kept views are re-embedded
once per rotation, so ``views × rotations`` encoder calls per fix are what it saves there.

    .venv/bin/python benchmarks/ablate_msrm.py            # a few minutes on 2 CPU cores (--places 10: one)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # test helpers: msrm_variants

from mobilegeo_ros.geo.raster import read_orthophoto  # noqa: E402
from mobilegeo_ros.geo.render import photometric  # noqa: E402
from mobilegeo_ros.localizer import Localizer  # noqa: E402
from mobilegeo_ros.msrm import select_views  # noqa: E402
from synthetic_world import render_views, synthetic_setup  # noqa: E402
from msrm_variants import cosine_pruning, fuse  # noqa: E402


def track_fractions(rng: np.random.Generator, end_frac: tuple[float, float], frames: int, step_m: float,
                    hover: float, map_m: tuple[float, float]) -> list[tuple[float, float]]:
    """Fractional map positions of ``frames`` frames (oldest first) of a straight track ending at ``end_frac``."""
    heading = rng.uniform(0.0, 2.0 * math.pi)
    steps = np.where(rng.random(frames - 1) < hover, 0.0, step_m)
    back = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])  # distance before the end, per frame
    fe = end_frac[0] - back * math.sin(heading) / map_m[0]
    fn = end_frac[1] - back * math.cos(heading) / map_m[1]
    return list(zip(fe.tolist(), fn.tolist()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--places", type=int, default=20)
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 3, 9, 18, 27, 54])
    ap.add_argument("--step-m", type=float, default=1.0, help="flight per moving frame, metres")
    ap.add_argument("--hover", type=float, default=0.5, help="share of frames without motion")
    ap.add_argument("--altitude", type=float, default=60.0)
    ap.add_argument("--yaw-jitter", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-similarity", type=float, default=0.98,
                    help="also run MI selection with this max_similarity (a lower, more pruning threshold)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    setup = synthetic_setup()
    cfg = setup.cfg
    loc = Localizer.from_files(setup.index_dir, cfg)
    cols = loc.index.columns
    frames = max(args.windows)
    rng = np.random.default_rng(args.seed)
    left, bottom, right, top = read_orthophoto(setup.map_path, cfg.map).bounds
    map_m = (right - left, top - bottom)

    embs, truths = [], []
    for _ in range(args.places):
        end = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
        yaw = float(rng.uniform(-args.yaw_jitter, args.yaw_jitter))
        views = render_views(setup, track_fractions(rng, end, frames, args.step_m, args.hover, map_m),
                             altitude_m=args.altitude, yaw_deg=yaw)
        images = [photometric(img, rng, cfg.render) for img, _, _ in views]
        embs.append(loc.embed(images))
        truths.append(views[-1][1])
    t_prep = time.perf_counter() - t0
    rotations = cfg.index.rotations
    k_node = cfg.node.max_views

    def methods(n: int):
        yield "newest", lambda e: np.array([len(e) - 1]), "ones"
        if n == 1:
            return
        yield "mean-all", lambda e: np.arange(len(e)), "ones"
        yield "mean-all +w", lambda e: np.arange(len(e)), None
        for k in sorted({min(k_node, n), n}):
            yield f"cos-prune {k}", lambda e, k=k: cosine_pruning(e, k), "ones"
            yield f"MI {k}", lambda e, k=k: select_views(e, k, cfg.node.max_view_similarity), "ones"
            yield f"MI {k} +w", lambda e, k=k: select_views(e, k, cfg.node.max_view_similarity), None
        s = args.extra_similarity
        yield f"MI {n} @{s:g}", lambda e: select_views(e, len(e), s), "ones"
        yield f"MI {n} @{s:g} +w", lambda e: select_views(e, len(e), s), None

    print(f"MSRM ablation: synthetic map {map_m[0]:.0f}×{map_m[1]:.0f} m, {loc.index.ntotal} index vectors, "
          f"{args.places} places, {frames}-frame tracks (step {args.step_m} m, hover {args.hover:.0%}), "
          f"altitude {args.altitude} m, yaw ±{args.yaw_jitter}°, node max_views={k_node}, "
          f"max_view_similarity={cfg.node.max_view_similarity}; render+embed {t_prep:.1f} s")
    cos = np.concatenate([np.sum(e[1:] * e[:-1], axis=1) for e in embs])
    print(f"cosine of consecutive frames: median {np.median(cos):.4f}, 5th pct {np.percentile(cos, 5):.4f}, "
          f"share above {cfg.node.max_view_similarity}: {np.mean(cos > cfg.node.max_view_similarity):.1%}, "
          f"above {args.extra_similarity}: {np.mean(cos > args.extra_similarity):.1%}")
    print(f"{'N':>3}  {'method':<14} {'R@1':>6} {'med err m':>9} {'views':>6} {'enc calls (query_rot)':>22}")
    for n in args.windows:
        for name, select, weights in methods(n):
            hits, errs, kept = 0, [], []
            for emb, (te, tn) in zip(embs, truths):
                e = emb[-n:]
                idx = select(e)
                w = np.ones(len(idx)) if weights == "ones" else None
                q = fuse(e, idx, w)
                row = loc.index.search_tiles(q[None], 1)[0][0][0]
                half = float(cols["size_m"][row]) / 2.0
                de, dn = float(cols["center_e"][row]) - te, float(cols["center_n"][row]) - tn
                hits += abs(de) <= half and abs(dn) <= half
                errs.append(math.hypot(de, dn))
                kept.append(len(idx))
            mk = float(np.mean(kept))
            print(f"{n:>3}  {name:<14} {hits / len(embs):>6.1%} {np.median(errs):>9.1f} {mk:>6.2f} "
                  f"{mk * rotations:>22.1f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
