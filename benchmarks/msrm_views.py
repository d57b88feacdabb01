"""MSRM in the University-1652 multi-query protocol: k drone views of one place → one fused query → the tiles.

Each location of an orthophoto gets an orbit of 54 drone views (:class:`mobilegeo_ros.train.datasets.SyntheticOrtho`,
University-1652 has 54 per building: yaw around the orbit, altitudes cycling over ``render.altitude_m``, tilt,
photometric changes); the gallery is the north-up satellite tile of every location. For k in ``--k``, the query of a
location is built from its first k views of the orbit (consecutive yaws, as a drone circling the place sees them) by:

* ``single``: every view alone (k queries per location; the standard single-query D→S number);
* ``mean``: all k views embedded, plain mean (the multi-query baseline of papers.md §3);
* ``MI-emb m``: all k views embedded, :func:`mobilegeo_ros.msrm.select_views` keeps m on the embeddings (what
  the node does with its window), information-weighted :func:`msrm_variants.fuse` (test/msrm_variants.py);
* ``MI-thumb m``: m views selected *before* the encoder by MI of 16×16 thumbnails
  (:func:`mobilegeo_ros.msrm.thumbnail_descriptors`), only those m embedded, information-weighted fusion;
* ``first m``: the m first views (no selection), mean: the control for MI-thumb at equal encoder calls.

m = ``--keep`` (default 3) capped at k. Reported: R@1 and AP (official University-1652 computation,
:func:`mobilegeo_ros.eval.retrieval_metrics.retrieval_metrics`; one query per location), encoder calls per location and
the share of them saved against ``mean``.

    .venv/bin/python benchmarks/msrm_views.py                      # synthetic map (licence-clean), ~3 min
    .venv/bin/python benchmarks/msrm_views.py --dgsamples          # WV2 tiles, WV3 views (real, cross-date)
    .venv/bin/python benchmarks/msrm_views.py --weights models/student.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))  # test helpers: msrm_variants

from mobilegeo_ros.config import Config  # noqa: E402
from mobilegeo_ros.eval.retrieval_metrics import retrieval_metrics  # noqa: E402
from mobilegeo_ros.geo.raster import read_orthophoto  # noqa: E402
from mobilegeo_ros.model import load_model  # noqa: E402
from mobilegeo_ros.msrm import select_views, thumbnail_descriptors  # noqa: E402
from mobilegeo_ros.train.datasets import OrthoDataConfig, SyntheticOrtho  # noqa: E402
from msrm_variants import fuse  # noqa: E402


def build_dataset(args: argparse.Namespace, cfg: Config) -> SyntheticOrtho:
    data_cfg = OrthoDataConfig(tile_size_m=args.tile_m, spacing_m=args.spacing_m, views=54, splits=(0.0, 0.0, 1.0),
                               out_px=cfg.model.input_px)
    if args.dgsamples:
        from mobilegeo_ros.geo import dgsamples

        gallery = dgsamples.load_scene("wv2", cfg.map)
        drone = dgsamples.load_scene("wv3", cfg.map)
    else:
        from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff

        tmp = Path(tempfile.mkdtemp(prefix="msrm_views_"))
        gallery = read_orthophoto(write_synthetic_geotiff(tmp / "map.tif", 1600, 1600, 0.5, seed=args.seed), cfg.map)
        drone = None
    return SyntheticOrtho(gallery, "test", data_cfg, cfg.render, seed=args.seed, drone_ortho=drone)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3, 9, 18, 27, 54], help="views per location")
    ap.add_argument("--keep", type=int, default=3, help="views MSRM keeps (m)")
    ap.add_argument("--locations", type=int, default=40, help="locations evaluated (evenly spread)")
    ap.add_argument("--tile-m", type=float, default=120.0)
    ap.add_argument("--spacing-m", type=float, default=60.0)
    ap.add_argument("--dgsamples", action="store_true", help="real imagery: WV2 gallery, WV3 drone views")
    ap.add_argument("--weights", default=None, help="model.weights (default: the configured default model)")
    ap.add_argument("--backend", default="onnxruntime", help="model.backend (default onnxruntime: fastest on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    cfg = Config()
    model_cfg = dataclasses.replace(cfg.model, backend=args.backend,
                                    **({"weights": args.weights} if args.weights is not None else {}))
    cfg = dataclasses.replace(cfg, model=model_cfg)
    model = load_model(cfg.model)
    data = build_dataset(args, cfg)
    n_loc = data.num_classes
    locs = np.unique(np.linspace(0, n_loc - 1, min(args.locations, n_loc)).round().astype(int))
    kmax = max(args.k)
    gallery = model.embed([data.satellite(int(i)) for i in range(n_loc)])
    labels = np.arange(n_loc)
    views = {int(i): [data.drone(int(i), v, epoch=0) for v in range(kmax)] for i in locs}
    emb = {i: model.embed(v) for i, v in views.items()}
    thumbs = {i: thumbnail_descriptors(v) for i, v in views.items()}
    print(f"MSRM multi-query: {'dgsamples WV2 tiles / WV3 views' if args.dgsamples else 'synthetic map'}, "
          f"{n_loc} gallery tiles ({args.tile_m:g} m), {len(locs)} locations x up to {kmax} orbit views; model "
          f"{args.weights or 'default'} (sha256 {model.identity()['weights_sha256'][:12]}) [{args.backend}]; prepared in {time.perf_counter() - t0:.0f} s")
    print(f"| k | method | R@1 | AP | encoder calls / location | saved vs mean |")
    print("|---|---|---|---|---|---|")
    for k in args.k:
        m = min(args.keep, k)
        rows: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        single_q = np.concatenate([emb[i][:k] for i in locs])
        rows.append(("single", single_q, np.repeat(locs, k), 1.0))
        if k > 1:
            rows.append(("mean", np.stack([fuse(emb[i][:k], weights=np.ones(k)) for i in locs]), locs, float(k)))
            rows.append((f"MI-emb {m}", np.stack([fuse(emb[i][:k], select_views(emb[i][:k], m, 1.0))
                                                   for i in locs]), locs, float(k)))
            picks = {i: select_views(thumbs[i][:k], m, 1.0) for i in locs}
            rows.append((f"MI-thumb {m}", np.stack([fuse(emb[i][:k], picks[i]) for i in locs]), locs, float(m)))
            rows.append((f"first {m}", np.stack([fuse(emb[i][:m], weights=np.ones(m)) for i in locs]), locs,
                         float(m)))
        for name, q, ql, calls in rows:
            r = retrieval_metrics(q, ql, gallery, labels)
            saved = 1.0 - calls / k
            print(f"| {k} | {name} | {r['recall@1']:.1f} | {r['AP']:.1f} | {calls:g} | {saved:.0%} |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
