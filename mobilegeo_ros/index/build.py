"""Step function: GeoTIFF orthophoto -> saved :class:`~mobilegeo_ros.index.tile_index.TileIndex`, streamed window by
window through resumable shards (see :func:`build_index`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mobilegeo_ros.config import Config
from mobilegeo_ros.geo.raster import GeoError, MapGeometry, Orthophoto, read_orthophoto
from mobilegeo_ros.geo.tiles import TileSpec, cut_tile, gallery_rotations, tile_grid
from mobilegeo_ros.geo.windowed import TileWindow, WindowedMap, opens_windowed, tile_windows
from mobilegeo_ros.index.facts import BUILD_SECTIONS
from mobilegeo_ros.index.tile_index import COLUMNS, TileIndex
from mobilegeo_ros.model.base import EmbeddingModel
from mobilegeo_ros.util.files import atomic_path, atomic_write_text, file_sha256

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
            yield _columns(chunk, rots), vectors
            bar.update(len(chunk))
    finally:
        bar.close()


def map_info(ortho: MapGeometry, map_path: Path) -> dict:
    """JSON-able description of the map an index was cut from (stored in ``index.json``); ``ortho`` is the map
    (an :class:`Orthophoto` or the grid of a :class:`WindowedMap`)."""
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


#: Tiles per shard file of a build (whole windows; a shard ends at the first window boundary past this).
SHARD_TILES = 256
#: Default longest run of tile centres per window, pixels (memory: about this × a tile's diagonal × 3 bytes).
DEFAULT_BLOCK_PX = 2048
PARTIAL_SUFFIX = ".partial"
_PLAN_FILE = "plan.json"
_MODEL_RUNTIME_KNOBS = ("backend", "device", "num_threads", "batch_size")


def partial_dir(out_dir: str | Path) -> Path:
    """Where the shards of an unfinished build of ``out_dir`` are kept: the hidden sibling ``.NAME.partial``."""
    out = Path(out_dir).absolute()
    return out.parent / f".{out.name}{PARTIAL_SUFFIX}"


@contextmanager
def open_map(map_path: Path, cfg: Config) -> Iterator[tuple[MapGeometry, Callable[[TileWindow], Orthophoto]]]:
    """``(grid, read)``: the map's grid and a function reading one :class:`TileWindow` of it. Windowed reads when
    the map settings allow (:func:`opens_windowed`), else the whole map read once (pansharpening)."""
    if opens_windowed(cfg.map):
        with WindowedMap(map_path, cfg.map) as wm:
            yield wm, lambda w: wm.read_window(w.col0, w.row0, w.width, w.height)
    else:
        ortho = read_orthophoto(map_path, cfg.map)
        yield ortho, lambda w: ortho


def _shards(windows: Sequence[TileWindow], shard_tiles: int) -> list[list[TileWindow]]:
    """Consecutive windows grouped into shards of about ``shard_tiles`` tiles."""
    shards: list[list[TileWindow]] = [[]]
    count = 0
    for w in windows:
        if count >= shard_tiles:
            shards.append([])
            count = 0
        shards[-1].append(w)
        count += len(w.tiles)
    return [sh for sh in shards if sh]


def _prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """``items`` computed one ahead in a worker thread (reading and cutting tiles overlap the embedding: OpenCV,
    GDAL and the model release the GIL, so both cores work)."""
    end = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, items, end)
        while True:
            item = future.result()
            if item is end:
                return
            future = pool.submit(next, items, end)
            yield item


def _shard_batches(shard: Sequence[TileWindow], specs: Sequence[TileSpec], read: Callable[[TileWindow], Orthophoto],
                   rotations: list[float], tile_px: int, per_batch: int, keep: range | None = None
                   ) -> Iterator[tuple[list[TileSpec], list]]:
    """``(tiles, images)`` batches of a shard: up to ``per_batch`` tiles, each at every rotation (tile-major); only
    the tiles whose index into ``specs`` is in ``keep`` when given."""
    tiles: list[TileSpec] = []
    images: list[np.ndarray] = []
    for window in shard:
        wanted = [i for i in window.tiles if keep is None or i in keep]
        if not wanted:
            continue
        ortho = read(window)
        for i in wanted:
            tiles.append(specs[i])
            images.extend(cut_tile(ortho, specs[i], tile_px, r) for r in rotations)
            if len(tiles) == per_batch:
                yield tiles, images
                tiles, images = [], []
    if tiles:
        yield tiles, images


def embed_windows(windows: Sequence[TileWindow], specs: Sequence[TileSpec],
                  read: Callable[[TileWindow], Orthophoto], rotations_deg: Sequence[float], model: EmbeddingModel,
                  tile_px: int, keep: range | None = None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """:func:`embed_tiles` window by window (:func:`~mobilegeo_ros.geo.windowed.tile_windows` of ``specs``, read
    with ``read``), the tiles whose index is in ``keep`` only (all when None): the same tiles, in the same order,
    as :func:`build_index` cuts, so a sharded build that embeds its range of tiles with the same windows gets the
    same vectors."""
    rots = [float(r) for r in rotations_deg]
    per_batch = max(1, model.batch_size // len(rots))
    for tiles, images in _prefetched(_shard_batches(windows, specs, read, rots, tile_px, per_batch, keep)):
        yield _columns(tiles, rots), model.embed(images)


def _columns(tiles: Sequence[TileSpec], rotations: Sequence[float], source: int = 0) -> dict[str, np.ndarray]:
    """The :data:`COLUMNS` of ``tiles`` (cut from map file number ``source``) at every rotation, tile-major."""
    k = len(rotations)
    columns = {
        "tile_id": np.repeat([s.tile_id for s in tiles], k),
        "level": np.repeat([s.level for s in tiles], k),
        "size_m": np.repeat([s.size_m for s in tiles], k),
        "rotation_deg": np.tile(np.asarray(rotations, float), len(tiles)),
        "center_e": np.repeat([s.center_e for s in tiles], k),
        "center_n": np.repeat([s.center_n for s in tiles], k),
        "lat": np.repeat([s.lat for s in tiles], k),
        "lon": np.repeat([s.lon for s in tiles], k),
        "source": np.full(len(tiles) * k, source),
    }
    return {name: np.asarray(col, dtype=COLUMNS[name]) for name, col in columns.items()}


def _load_shard(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in COLUMNS}, npz["vectors"]


def _start_or_resume(work: Path, plan: dict, log_resume: bool) -> set[int]:
    """Prepare the shard folder of a build with ``plan``; returns the shard numbers already done. A folder of
    another plan (other map, config, model or tiling) is emptied first: its shards are not this build's."""
    plan_file = work / _PLAN_FILE
    if work.is_dir():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            log.warning("discarding the shards in %s: they belong to another build (map, config, model or tiling "
                        "changed)", work)
            shutil.rmtree(work)
    if not work.is_dir():
        work.mkdir(parents=True)
        atomic_write_text(plan_file, json.dumps(plan, indent=1))
        return set()
    done = {int(p.stem.split("-")[1]) for p in work.glob("shard-*.npz")}
    if done and log_resume:
        log.info("resuming the build in %s: %d of %d shards done", work, len(done), plan["shards"])
    return done


MAP_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def map_files(maps: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files of a map: one path, several, or a folder (its files ending in :data:`MAP_SUFFIXES`, sorted by
    name). GeoError when a folder holds none or a path is given twice."""
    items = [maps] if isinstance(maps, (str, Path)) else list(maps)
    if not items:
        raise GeoError("no map file given")
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MAP_SUFFIXES)
            if not found:
                raise GeoError(f"map folder {str(p)!r} holds no raster ({', '.join(MAP_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    resolved = [p.resolve() for p in out]
    if len(set(resolved)) != len(resolved):
        raise GeoError(f"a map file is given twice: {[str(p) for p in out]}")
    return out


@dataclass
class _Source:
    """One file of the map: its grid (in the index CRS), window reader, tiles (renumbered) and windows."""

    path: Path
    grid: MapGeometry
    read: Callable[[TileWindow], Orthophoto]
    specs: list[TileSpec]
    windows: list[TileWindow]


def _outside_earlier(specs: list[TileSpec], earlier: list[_Source]) -> list[TileSpec]:
    """The tiles whose centre lies outside every earlier file's footprint (overlaps are indexed once: the first
    file given wins)."""
    keep = []
    for spec in specs:
        inside = False
        for src in earlier:
            left, bottom, right, top = src.grid.bounds
            if left <= spec.center_e <= right and bottom <= spec.center_n <= top:
                inside = True
                break
        if not inside:
            keep.append(spec)
    return keep


def build_index(map_path: str | Path | Sequence[str | Path], out_dir: str | Path, cfg: Config,
                model: EmbeddingModel | None = None, progress: bool = True, block_px: int = DEFAULT_BLOCK_PX,
                shard_tiles: int = SHARD_TILES, max_shards: int | None = None) -> Path | None:
    """Cut the orthophoto at ``map_path`` into tiles, embed them and save a :class:`TileIndex` at ``out_dir``.

    Tiles: ``tile_grid(map, cfg.map.tile_sizes_m, cfg.map.overlap)``, each cut at ``cfg.map.tile_px`` pixels at
    every rotation of :func:`gallery_rotations` (``cfg.index``). ``model`` defaults to ``load_model(cfg.model)``.

    Several files, one map: ``map_path`` may be a list of files or a folder (:func:`map_files`; a GDAL VRT is one
    file). The index's CRS is the first file's (its metric grid); every other file is read on a grid of that CRS at
    its own resolution, cut into its own tile grid, and its tiles whose centre lies inside an earlier file are left
    out (overlaps indexed once, the first file wins). The ``source`` column says which file a tile comes from;
    ``index.json`` lists the files under ``map.sources`` (its top-level map entries describe the first file).

    Big maps: the map is read window by window (:mod:`mobilegeo_ros.geo.windowed`; memory of one window of about
    ``block_px`` pixels, not of the raster; the tiles equal those of a whole-raster read), tiles are cut in a worker
    thread while the model embeds, and every shard of about ``shard_tiles`` tiles is written as it finishes to
    ``.OUT.partial/`` beside ``out_dir``. An interrupted build started again with the same map, config and model
    resumes from its shards (``max_shards``: stop after embedding that many new shards and return None, as an
    interruption would). The index is assembled from the shards at the end (faiss vectors added shard by shard),
    saved atomically (see :meth:`TileIndex.save`, fingerprinted as always) and the shards are removed; returns
    ``out_dir``. Raises GeoError for a bad map, ModelError for a bad model, IndexFileError when ``out_dir`` exists
    and is not an index.
    """
    paths_in = map_files(map_path)
    out = TileIndex.check_output_dir(out_dir)
    if len(paths_in) > 1 and not opens_windowed(cfg.map):
        raise GeoError("map.pansharpen_with: a map of several files cannot be pansharpened; pansharpen each file "
                       "first (or index one file)")
    if model is None:
        from mobilegeo_ros.model import load_model
        model = load_model(cfg.model)
    rotations = gallery_rotations(cfg.index)
    with ExitStack() as stack:
        sources: list[_Source] = []
        for number, path in enumerate(paths_in):
            if number == 0:
                grid, read = stack.enter_context(open_map(path, cfg))
            else:
                other = stack.enter_context(WindowedMap(path, cfg.map, target_crs=sources[0].grid.crs))
                grid, read = other, (lambda w, m=other: m.read_window(w.col0, w.row0, w.width, w.height))
            try:
                specs = tile_grid(grid, cfg.map.tile_sizes_m, cfg.map.overlap)
            except GeoError:
                if number == 0:
                    raise
                specs = []  # a small extra file: no tile of its own
            specs = _outside_earlier(specs, sources)
            first_id = sum(len(src.specs) for src in sources)
            specs = [dataclasses.replace(sp, tile_id=first_id + i) for i, sp in enumerate(specs)]
            sources.append(_Source(path, grid, read, specs, tile_windows(grid, specs, cfg.map.tile_px, block_px)))
        # shards never span two files: (source number, windows)
        shards = [(k, sh) for k, src in enumerate(sources) for sh in _shards(src.windows, shard_tiles)]
        n_tiles = sum(len(src.specs) for src in sources)
        infos = [map_info(src.grid, src.path) for src in sources]
        info = dict(infos[0])
        if len(sources) > 1:
            info["sources"] = infos
        # The whole config it was built with, so `mobilegeo localize --index DIR` can run with the same settings.
        info["build_config"] = dataclasses.asdict(cfg)
        build = {k: dict(info["build_config"][k]) for k in BUILD_SECTIONS}
        for knob in _MODEL_RUNTIME_KNOBS:  # how fast, not what: a resumed build may use another backend
            build["model"].pop(knob, None)
        plan = {"map_sha256": [i["sha256"] for i in infos], "build": build,
                "model": model.fingerprint(), "tiles": n_tiles, "block_px": int(block_px),
                "shard_tiles": int(shard_tiles), "shards": len(shards),
                "tiles_per_shard": [sum(len(w.tiles) for w in sh) for _, sh in shards]}
        work = partial_dir(out)
        done = _start_or_resume(work, plan, progress)
        log.info("building a %s index of %d tiles × %d rotations from %s (%d shards, %d done)", cfg.index.kind,
                 n_tiles, len(rotations), ", ".join(str(p) for p in paths_in), len(shards), len(done))
        per_batch = max(1, model.batch_size // len(rotations))
        bar = tqdm(total=n_tiles, initial=sum(plan["tiles_per_shard"][i] for i in done), unit="tile",
                   desc="embedding tiles", disable=not progress, smoothing=0.1)
        embedded = 0
        try:
            for number, (k, shard) in enumerate(shards):
                if number in done:
                    continue
                if max_shards is not None and embedded >= max_shards:
                    return None
                src = sources[k]
                cols, vecs = [], []
                for tiles, images in _prefetched(_shard_batches(shard, src.specs, src.read, rotations,
                                                                cfg.map.tile_px, per_batch)):
                    vecs.append(model.embed(images))
                    cols.append(_columns(tiles, rotations, source=k))
                    bar.update(len(tiles))
                with atomic_path(work / f"shard-{number:06d}.npz") as tmp, open(tmp, "wb") as f:
                    np.savez(f, vectors=np.concatenate(vecs), **{c: np.concatenate([p[c] for p in cols])
                                                                  for c in COLUMNS})
                embedded += 1
        finally:
            bar.close()
        crs_wkt = sources[0].grid.crs.to_wkt()
    shard_paths = [work / f"shard-{i:06d}.npz" for i in range(len(shards))]
    index = TileIndex.build_from_chunks(lambda: (_load_shard(p) for p in shard_paths), model.identity(), crs_wkt,
                                        info, cfg.index)
    index.save(out)
    shutil.rmtree(work, ignore_errors=True)
    if cfg.refine.enabled and cfg.refine.map_features_at_build and len(sources) == 1:
        from mobilegeo_ros.estimator.refine import map_identity, precompute_map_features
        with ExitStack() as stack:
            if opens_windowed(cfg.map):  # window by window: the map is never in memory whole
                source: MapGeometry = stack.enter_context(WindowedMap(paths_in[0], cfg.map))
            else:
                source = read_orthophoto(paths_in[0], cfg.map)
            precompute_map_features(source, cfg.refine, Path(out_dir) / "map_features",
                                    map_identity(info["sha256"], cfg.map))
    return Path(out_dir)


__all__ = ["DEFAULT_BLOCK_PX", "MAP_SUFFIXES", "SHARD_TILES", "build_index", "embed_tiles", "embed_windows",
           "gallery_rotations", "map_files", "map_info", "open_map", "partial_dir"]
