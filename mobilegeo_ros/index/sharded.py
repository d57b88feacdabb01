"""Index embedding sharded over processes (GPUs, nodes) with ``torch.distributed``, launched by ``torchrun``.

Every rank opens the orthophoto, cuts the same deterministic tile grid, and embeds its contiguous block of tiles,
read window by window through the same windows as :func:`~mobilegeo_ros.index.build.build_index`
(:func:`~mobilegeo_ros.index.build.embed_windows`: memory of a window, not of the raster); rank 0 gathers the blocks in rank order and
builds and saves the index exactly as :func:`~mobilegeo_ros.index.build.build_index` does. Block boundaries fall on
multiples of the single-process chunk size, so every forward pass sees the same images as in a single-process build:
the merged index has the same rows, in the same order, with the same vectors.

Communication uses the ``gloo`` process group (CPU objects: tile columns and float32 vectors), whatever device
embeds; with ``model.device`` = cuda each rank uses ``cuda:LOCAL_RANK``. Rank 0 holds all vectors at the end (it must,
to build the faiss index). Run::

    torchrun --nproc_per_node 4 -m mobilegeo_ros.index.sharded MAP.tif --out INDEX_DIR [--config YAML]
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m mobilegeo_ros.index.sharded MAP.tif --out INDEX_DIR --device cuda

(all nodes need the map at the same path; only rank 0 writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobilegeo_ros.config import Config, ConfigError, ModelConfig, load_config
from mobilegeo_ros.geo.raster import GeoError
from mobilegeo_ros.geo.tiles import tile_grid
from mobilegeo_ros.geo.windowed import tile_windows
from mobilegeo_ros.index.build import DEFAULT_BLOCK_PX, embed_windows, gallery_rotations, map_info, open_map
from mobilegeo_ros.index.tile_index import COLUMNS, IndexFileError, TileIndex

log = logging.getLogger(__name__)


def shard_bounds(n_tiles: int, world: int, rank: int, align: int) -> tuple[int, int]:
    """``[lo, hi)`` tile range of ``rank`` out of ``world``: contiguous blocks whose starts are multiples of
    ``align`` (the tiles per forward pass), as equal as that allows. Ranks past the end get an empty range."""
    if world < 1 or not 0 <= rank < world or align < 1:
        raise ValueError(f"shard_bounds: bad world={world}, rank={rank}, align={align}")
    n_chunks = -(-n_tiles // align)
    per_rank, extra = divmod(n_chunks, world)
    c0 = rank * per_rank + min(rank, extra)
    c1 = c0 + per_rank + (1 if rank < extra else 0)
    return min(c0 * align, n_tiles), min(c1 * align, n_tiles)


def _rank_model_config(model_cfg: ModelConfig, local_rank: int) -> ModelConfig:
    if model_cfg.device.startswith("cuda"):
        return dataclasses.replace(model_cfg, device=f"cuda:{local_rank}")
    return model_cfg


def build_index_sharded(map_path: Path, out_dir: Path, cfg: Config, progress: bool = False) -> Path | None:
    """Sharded :func:`~mobilegeo_ros.index.build.build_index`; call on every rank of an initialised (or torchrun)
    process group. Returns ``out_dir`` on rank 0 and None elsewhere. Errors of rank 0's checks (bad output dir, bad
    map) are raised on every rank, so no rank waits forever."""
    import torch.distributed as dist

    from mobilegeo_ros.model import load_model

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend="gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        map_path = Path(map_path)
        status = [None]
        if rank == 0:
            try:
                TileIndex.check_output_dir(out_dir)
                if not map_path.is_file():
                    raise GeoError(f"map {str(map_path)!r} does not exist")
            except (IndexFileError, GeoError) as e:
                status = [(type(e).__name__, str(e))]
        dist.broadcast_object_list(status, src=0)
        if status[0] is not None:
            kind, msg = status[0]
            raise {"IndexFileError": IndexFileError, "GeoError": GeoError}[kind](msg)

        model = load_model(_rank_model_config(cfg.model, local_rank))
        rotations = gallery_rotations(cfg.index)
        per_chunk = max(1, model.batch_size // len(rotations))  # tiles per forward pass
        with open_map(map_path, cfg) as (grid, read):
            # the windows build_index reads: the same tile images as a single-process build
            specs = tile_grid(grid, cfg.map.tile_sizes_m, cfg.map.overlap)
            windows = tile_windows(grid, specs, cfg.map.tile_px, DEFAULT_BLOCK_PX)
            lo, hi = shard_bounds(len(specs), world, rank, per_chunk)
            log.info("rank %d/%d embeds tiles [%d, %d) of %d", rank, world, lo, hi, len(specs))
            chunks = []
            with tqdm(total=hi - lo, unit="tile", desc=f"rank {rank} embedding tiles",
                      disable=not (progress and rank == 0)) as bar:
                for cols, vecs in embed_windows(windows, specs, read, rotations, model, cfg.map.tile_px,
                                                range(lo, hi)):
                    chunks.append((cols, vecs))
                    bar.update(len(vecs) // len(rotations))
            info = map_info(grid, map_path)
            crs_wkt = grid.crs.to_wkt()
        part = (
            {name: np.concatenate([c[name] for c, _ in chunks]) if chunks else np.empty(0, dtype)
             for name, dtype in COLUMNS.items()},
            np.concatenate([v for _, v in chunks]) if chunks else np.empty((0, model.dim), np.float32),
            model.fingerprint(),
        )
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(part, gathered, dst=0)
        if rank != 0:
            dist.barrier()
            return None
        fingerprints = {fp for _, _, fp in gathered}
        if len(fingerprints) != 1:
            raise RuntimeError(f"ranks loaded different models (fingerprints {sorted(fingerprints)}); check that "
                               "every node has the same weights and config")
        columns = {name: np.concatenate([cols[name] for cols, _, _ in gathered]) for name in COLUMNS}
        vectors = np.concatenate([v for _, v, _ in gathered])
        info["build_config"] = dataclasses.asdict(cfg)
        index = TileIndex.build(vectors, columns, model.identity(), crs_wkt, info, cfg.index)
        index.save(out_dir)
        dist.barrier()
        return Path(out_dir)
    finally:
        if own_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="torchrun ... -m mobilegeo_ros.index.sharded",
                                 description="Build a tile index with the embedding sharded over torchrun ranks "
                                             "(same result as `mobilegeo build-index`).")
    ap.add_argument("map", metavar="MAP.tif")
    ap.add_argument("--out", required=True, metavar="INDEX_DIR")
    ap.add_argument("--config", metavar="YAML")
    ap.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "tensorrt"], help="overrides model.backend")
    ap.add_argument("--device", help="cpu or cuda (each rank then uses cuda:LOCAL_RANK); overrides model.device")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from mobilegeo_ros.model.base import ModelError

    try:
        cfg = load_config(args.config)
        if args.backend:
            cfg.model.backend = args.backend
        if args.device:
            cfg.model.device = args.device
        cfg.validate()
        out = build_index_sharded(Path(args.map), Path(args.out), cfg, progress=not args.quiet)
    except (ConfigError, GeoError, IndexFileError, ModelError) as e:
        print(f"mobilegeo.sharded: error: {e}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"index written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
