"""Step function: GeoTIFF orthophoto -> saved :class:`~mobilegeo_ros.index.tile_index.TileIndex`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mobilegeo_ros.config import Config, IndexConfig
from mobilegeo_ros.geo.raster import Orthophoto, read_orthophoto
from mobilegeo_ros.geo.tiles import TileSpec, cut_tile, gallery_rotations, tile_grid
from mobilegeo_ros.index.tile_index import COLUMNS, TileIndex
from mobilegeo_ros.model.base import EmbeddingModel
from mobilegeo_ros.util.files import file_sha256

log = logging.getLogger(__name__)


def embed_tiles(ortho: Orthophoto, specs: Sequence[TileSpec], rotations_deg: Sequence[float],
                model: EmbeddingModel, tile_px: int, batch_tiles: int | None = None,
                progress: bool = False) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Cut and embed tiles chunk by chunk.

    Yields ``(columns, vectors)`` per chunk of up to ``batch_tiles`` tiles (default: enough tiles to fill one
    ``model.batch_size`` forward pass): ``columns`` maps each name of :data:`~.tile_index.COLUMNS` to an array and
    ``vectors`` is the M×D float32 embedding, M = tiles in the chunk × len(rotations_deg), ordered tile-major
    (tile 0 at every rotation, then tile 1 ...). A sharded build can call this on its slice of ``specs`` and
    concatenate the chunks.
    """
    rots = [float(r) for r in rotations_deg]
    if not rots:
        raise ValueError("embed_tiles: need at least one rotation")
    per_chunk = batch_tiles or max(1, model.batch_size // len(rots))
    bar = tqdm(total=len(specs), unit="tile", desc="embedding tiles", disable=not progress)
    try:
        for start in range(0, len(specs), per_chunk):
            chunk = specs[start:start + per_chunk]
            images = [cut_tile(ortho, spec, tile_px, r) for spec in chunk for r in rots]
            vectors = model.embed(images)
            columns = {
                "tile_id": np.repeat([s.tile_id for s in chunk], len(rots)),
                "level": np.repeat([s.level for s in chunk], len(rots)),
                "size_m": np.repeat([s.size_m for s in chunk], len(rots)),
                "rotation_deg": np.tile(rots, len(chunk)),
                "center_e": np.repeat([s.center_e for s in chunk], len(rots)),
                "center_n": np.repeat([s.center_n for s in chunk], len(rots)),
                "lat": np.repeat([s.lat for s in chunk], len(rots)),
                "lon": np.repeat([s.lon for s in chunk], len(rots)),
            }
            yield {name: np.asarray(col, dtype=COLUMNS[name]) for name, col in columns.items()}, vectors
            bar.update(len(chunk))
    finally:
        bar.close()


def map_info(ortho: Orthophoto, map_path: Path) -> dict:
    """JSON-able description of the map an index was cut from (stored in ``index.json``)."""
    left, bottom, right, top = ortho.bounds
    return {
        "path": str(map_path.resolve()),
        "name": map_path.name,
        "sha256": file_sha256(map_path),
        "width_px": ortho.width,
        "height_px": ortho.height,
        "gsd_m": float(ortho.gsd_m),
        "bounds": [left, bottom, right, top],
    }


def build_index(map_path: str | Path, out_dir: str | Path, cfg: Config, model: EmbeddingModel | None = None,
                progress: bool = True) -> Path:
    """Cut the orthophoto at ``map_path`` into tiles, embed them and save a :class:`TileIndex` at ``out_dir``.

    Tiles: ``tile_grid(ortho, cfg.map.tile_sizes_m, cfg.map.overlap)``, each cut at ``cfg.map.tile_px`` pixels at
    every rotation of :func:`gallery_rotations` (``cfg.index``). ``model`` defaults to ``load_model(cfg.model)``.
    The index is written atomically (see :meth:`TileIndex.save`); returns ``out_dir``. Raises GeoError for a bad
    map, ModelError for a bad model, IndexFileError when ``out_dir`` exists and is not an index.
    """
    map_path = Path(map_path)
    out = TileIndex.check_output_dir(out_dir)
    ortho = read_orthophoto(map_path, cfg.map)
    specs = tile_grid(ortho, cfg.map.tile_sizes_m, cfg.map.overlap)
    if model is None:
        from mobilegeo_ros.model import load_model
        model = load_model(cfg.model)
    rotations = gallery_rotations(cfg.index)
    log.info("building a %s index of %d tiles × %d rotations from %s", cfg.index.kind, len(specs), len(rotations),
             map_path)
    chunks = list(embed_tiles(ortho, specs, rotations, model, cfg.map.tile_px, progress=progress))
    columns = {name: np.concatenate([c[name] for c, _ in chunks]) for name in COLUMNS}
    vectors = np.concatenate([v for _, v in chunks])
    info = map_info(ortho, map_path)
    # The whole config it was built with, so `mobilegeo localize --index DIR` can run with the same settings.
    info["build_config"] = dataclasses.asdict(cfg)
    index = TileIndex.build(vectors, columns, model.identity(), ortho.crs.to_wkt(), info, cfg.index)
    index.save(out)
    if cfg.refine.enabled and cfg.refine.map_features_at_build:
        from mobilegeo_ros.estimator.refine import map_identity, precompute_map_features
        precompute_map_features(ortho, cfg.refine, Path(out_dir) / "map_features",
                                map_identity(info["sha256"], cfg.map))
    return Path(out_dir)


__all__ = ["build_index", "embed_tiles", "gallery_rotations", "map_info"]
