#!/usr/bin/env python3
"""Benchmark the tile index: faiss query latency, build time, size and recall@1 for flat / ivf / ivf_pq / hnsw, plus tiles/s of a
full index build (cut + embed) from a synthetic GeoTIFF.

Vectors are synthetic clustered unit vectors (like tile embeddings: many near-duplicates of neighbouring tiles).
To keep memory bounded, sizes whose float32 vectors would exceed --max-gb use --big-dim instead of --dim (printed
in the table). Queries are noisy copies of database vectors; recall@1 is measured against the exact (flat) answer.

    .venv/bin/python benchmarks/bench_index.py --sizes 1e3,1e4,1e5,1e6 --json /tmp/bench_index.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import IndexConfig, from_dict  # noqa: E402
from mobilegeo_ros.index.tile_index import TileIndex  # noqa: E402

IDENTITY = {"model": "synthetic", "weights_sha256": "0" * 64, "preprocessing": {}, "gem_p": 3.0}


def clustered(n: int, dim: int, rng: np.random.Generator, n_clusters: int = 1000) -> np.ndarray:
    """n unit vectors around n_clusters random centres, generated in chunks (float32 throughout)."""
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        v = centres[rng.integers(0, n_clusters, m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def columns(n: int) -> dict[str, np.ndarray]:
    z = np.zeros(n)
    return {"tile_id": np.arange(n), "level": z, "size_m": z, "rotation_deg": z, "center_e": z, "center_n": z,
            "lat": z, "lon": z}


def faiss_bytes(index: TileIndex) -> int:
    """Serialized size of the faiss index (what index.faiss takes on disk and, loaded, in memory)."""
    import faiss
    return int(faiss.serialize_index(index.index).size)


def latency_ms(index: TileIndex, queries: np.ndarray, batch: int, k: int) -> float:
    n = len(queries) - len(queries) % batch
    t = time.perf_counter()
    for s in range(0, n, batch):
        index.search(queries[s:s + batch], k)
    return (time.perf_counter() - t) * 1e3 / n


def bench_size(n: int, dim: int, kinds: list[str], args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    x = clustered(n, dim, rng)
    q_src = x[rng.integers(0, n, args.queries)]
    q = q_src + 0.3 * rng.standard_normal(q_src.shape, dtype=np.float32) / np.sqrt(dim)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    ident = {**IDENTITY, "dim": dim}
    rows, exact = [], None
    for kind in kinds:
        cfg = IndexConfig(kind=kind, ivf_nlist=args.ivf_nlist, ivf_nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                          hnsw_ef_search=args.ef_search, pq_bytes=args.pq_bytes)
        t = time.perf_counter()
        index = TileIndex.build(x, columns(n), ident, "", {}, cfg)
        build_s = time.perf_counter() - t
        _, top = index.search(q, 1)
        if exact is None:
            exact = top[:, 0] if index.kind == "flat" else TileIndex.build(x, columns(n), ident, "", {},
                                                                           IndexConfig()).search(q, 1)[1][:, 0]
        row = {"n": n, "dim": dim, "kind": kind, "actual_kind": index.kind, "build_s": build_s,
               "ms_per_query_b1": latency_ms(index, q, 1, args.k),
               "ms_per_query_b32": latency_ms(index, q, 32, args.k),
               "recall_at_1": float(np.mean(top[:, 0] == exact))}
        if index.kind in ("ivf", "ivf_pq"):
            import faiss
            row["nlist"] = int(faiss.extract_index_ivf(index.index).nlist)
        # recall@10 of the exact top-1 (a tile the registration still sees among the top 10)
        row["exact_in_top10"] = float(np.mean(exact[:, None] == index.search(q, 10)[1]) * 10)
        row["index_mib"] = faiss_bytes(index) / 2**20
        rows.append(row)
        print(f"{n:>9,d} {dim:>5d} {kind + ('→' + index.kind if index.kind != kind else ''):<10s} "
              f"{build_s:>9.2f} {row['ms_per_query_b1']:>10.3f} {row['ms_per_query_b32']:>10.3f} "
              f"{row['recall_at_1']:>9.3f} {row['exact_in_top10']:>9.3f} {row['index_mib']:>9.1f}", flush=True)
        del index
    return rows


def bench_build(args: argparse.Namespace) -> dict:
    from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
    from mobilegeo_ros.index.build import build_index
    from mobilegeo_ros.model import load_model

    cfg = from_dict({"map": {"tile_sizes_m": [120.0], "overlap": 0.5, "tile_px": 224},
                     "model": {"num_threads": args.threads}, "index": {"rotations": args.rotations}})
    with tempfile.TemporaryDirectory() as tmp:
        map_path = write_synthetic_geotiff(Path(tmp) / "map.tif", 1024, 1024, 0.5)
        model = load_model(cfg.model)
        t = time.perf_counter()
        out = build_index(map_path, Path(tmp) / "idx", cfg, model, progress=False)
        dt = time.perf_counter() - t
        index = TileIndex.load(out)
    tiles = int(np.unique(index.columns["tile_id"]).size)
    res = {"map_px": 1024, "gsd_m": 0.5, "tile_px": 224, "rotations": args.rotations, "tiles": tiles,
           "vectors": index.ntotal, "seconds": dt, "tiles_per_s": tiles / dt, "vectors_per_s": index.ntotal / dt,
           "threads": args.threads}
    print(f"\nindex build (read + cut + embed + save), synthetic 1024×1024 px GeoTIFF, 120 m tiles at 224 px, "
          f"{args.rotations} rotations, torch CPU {args.threads} threads:\n  {tiles} tiles / {index.ntotal} vectors in "
          f"{dt:.1f} s = {res['tiles_per_s']:.2f} tiles/s ({res['vectors_per_s']:.1f} tile images/s)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="comma-separated vector counts (default %(default)s)")
    ap.add_argument("--dim", type=int, default=1280, help="vector dimension (default %(default)s, the model's)")
    ap.add_argument("--big-dim", type=int, default=256,
                    help="dimension used for sizes whose float32 vectors exceed --max-gb (default %(default)s)")
    ap.add_argument("--max-gb", type=float, default=2.0, help="memory cap for one vector set, GB (default %(default)s)")
    ap.add_argument("--kinds", default="flat,ivf,hnsw", help="index kinds (default %(default)s)")
    ap.add_argument("--queries", type=int, default=256, help="queries per measurement (default %(default)s)")
    ap.add_argument("-k", type=int, default=10, help="results per query (default %(default)s)")
    ap.add_argument("--ivf-nlist", type=int, default=0, help="IVF lists; 0 = 4*sqrt(N) (default %(default)s)")
    ap.add_argument("--nprobe", type=int, default=IndexConfig.ivf_nprobe, help="IVF nprobe (default %(default)s)")
    ap.add_argument("--pq-bytes", type=int, default=IndexConfig.pq_bytes, help="ivf_pq bytes per vector "
                    "(default %(default)s)")
    ap.add_argument("--hnsw-m", type=int, default=IndexConfig.hnsw_m, help="HNSW M (default %(default)s)")
    ap.add_argument("--ef-search", type=int, default=IndexConfig.hnsw_ef_search,
                    help="HNSW efSearch (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (faiss and torch; default %(default)s)")
    ap.add_argument("--rotations", type=int, default=8, help="gallery rotations for the build benchmark")
    ap.add_argument("--skip-build", action="store_true", help="skip the tiles/s build benchmark")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import faiss
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"faiss {faiss.__version__}, {args.threads} threads, k={args.k}, {args.queries} queries, "
          f"nprobe={args.nprobe}, HNSW M={args.hnsw_m} efSearch={args.ef_search}; vectors float32, sizes above "
          f"{args.max_gb:g} GB use dim {args.big_dim}")
    print(f"{'vectors':>9s} {'dim':>5s} {'kind':<10s} {'build_s':>9s} {'ms/q b1':>10s} {'ms/q b32':>10s} "
          f"{'recall@1':>9s} {'in top10':>9s} {'MiB':>9s}")
    results: dict = {"index": []}
    for n in sizes:
        dim = args.dim if n * args.dim * 4 <= args.max_gb * 1e9 else args.big_dim
        results["index"] += bench_size(n, dim, kinds, args)
    if not args.skip_build:
        results["build"] = bench_build(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
