"""A faiss index of tile embeddings with its tile metadata and the identity of the model that made it.

One row per vector: every (tile, rotation) pair of the gallery is a row. Vectors are L2-normalised float32, so the
inner product faiss returns is the cosine similarity in [-1, 1].

On disk (one directory, written atomically)::

    index.faiss   faiss.write_index of the vectors
    tiles.npz     the columns of :data:`COLUMNS` (np.savez; loaded with allow_pickle=False)
    index.json    format_version, model identity + fingerprint, map CRS WKT, map info, IndexConfig, counts, created
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mobilegeo_ros.config import ConfigError, IndexConfig
from mobilegeo_ros.index.facts import (  # the errors and file names are re-exported here for callers
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    IndexFacts,
    IndexFileError,
    IndexMismatchError,
)
from mobilegeo_ros.model.base import fingerprint

log = logging.getLogger(__name__)

INDEX_FILE, TILES_FILE = "index.faiss", "tiles.npz"
FILES = (INDEX_FILE, TILES_FILE, META_FILE)

# Column name -> dtype. Units: size_m metres (tile side on the ground), rotation_deg degrees clockwise from north
# (the compass heading of the tile's top edge), center_e/center_n metres in the map CRS, lat/lon WGS84 degrees.
COLUMNS: dict[str, np.dtype] = {
    "tile_id": np.dtype(np.int64),
    "level": np.dtype(np.int32),
    "size_m": np.dtype(np.float32),
    "rotation_deg": np.dtype(np.float32),
    "center_e": np.dtype(np.float64),
    "center_n": np.dtype(np.float64),
    "lat": np.dtype(np.float64),
    "lon": np.dtype(np.float64),
    "source": np.dtype(np.int32),
}
#: Columns an index may lack (written before they existed, or built by a caller that does not know them), and the
#: value they then hold. ``source``: index into ``map_info["sources"]`` of the file a tile was cut from (a map of
#: several files); 0 for a one-file map.
OPTIONAL_COLUMNS: dict[str, int] = {"source": 0}

# faiss needs at least this many training points per IVF list for stable k-means (it warns below 39).
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 64
#: Codewords of each product-quantizer sub-space (8-bit codes): ``ivf_pq`` trains each on at least 39 × this.
PQ_CODEWORDS = 256
#: faiss kinds with inverted lists (``index.ivf_nprobe`` applies).
IVF_KINDS = ("ivf", "ivf_pq")
#: Rows decoded at a time by :meth:`TileIndex.search_rows` (bounds its memory: 4096 × D × 4 bytes).
_RECONSTRUCT_ROWS = 4096
REBUILD_HINT = ("rebuild the index with this model: `mobilegeo build-index` (or point model.weights / "
                "model.input_px / model.gem_p at what the index was built with)")


def identity_differences(index_identity: Mapping, model_identity: Mapping) -> list[str]:
    """Human-readable differences between two model identities (empty when they match)."""
    labels = {"model": "model name", "weights_sha256": "weights hash", "dim": "dimension",
              "preprocessing": "preprocessing", "gem_p": "GeM p"}
    out = []
    for key in sorted(set(index_identity) | set(model_identity), key=lambda k: (k not in labels, k)):
        a, b = index_identity.get(key), model_identity.get(key)
        if a == b:
            continue
        label = labels.get(key, key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append(f"{label} {sub}: index {a.get(sub)!r} vs model {b.get(sub)!r}")
        elif key == "weights_sha256":
            out.append(f"{label}: index {str(a)[:12]}… vs model {str(b)[:12]}… (different weights)")
        else:
            out.append(f"{label}: index {a!r} vs model {b!r}")
    return out


def group_by_tile(scores: np.ndarray, rows: np.ndarray, tile_ids: np.ndarray,
                  k: int) -> list[list[tuple[int, float]]]:
    """Merge the rotated copies of each tile in search results.

    ``scores``/``rows``: Q×K from :meth:`TileIndex.search` (rows -1 = no result); ``tile_ids``: the index's
    ``tile_id`` column. For each query returns up to ``k`` ``(row, score)`` pairs for distinct tiles, ordered by
    descending score, where ``row`` is the best-scoring copy of that tile (its ``rotation_deg`` estimates the
    heading) and ``score`` its cosine similarity (the maximum over the tile's copies).
    """
    scores = np.asarray(scores)
    rows = np.asarray(rows)
    if scores.shape != rows.shape or scores.ndim != 2:
        raise ValueError(f"group_by_tile: scores {scores.shape} and rows {rows.shape} must be the same Q×K shape")
    out: list[list[tuple[int, float]]] = []
    for qs, qr in zip(scores, rows, strict=True):
        best: dict[int, tuple[int, float]] = {}
        for s, r in zip(qs.tolist(), qr.tolist(), strict=True):
            if r < 0:
                continue
            tid = int(tile_ids[r])
            if tid not in best or s > best[tid][1]:
                best[tid] = (int(r), float(s))
        out.append(sorted(best.values(), key=lambda rs: (-rs[1], rs[0]))[:k])
    return out


def resolve_kind(cfg: IndexConfig, n: int, d: int) -> str:
    """The faiss kind an index of ``n`` vectors of dimension ``d`` gets: ``cfg.kind``, or for ``auto`` an exact
    ``flat`` index while its vectors fit in ``cfg.auto_flat_max_mib`` MiB, else ``ivf_pq``."""
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n * d * 4 <= cfg.auto_flat_max_mib * 2**20 else "ivf_pq"


def new_faiss_index(cfg: IndexConfig, n: int, d: int) -> tuple[str, faiss.Index, np.ndarray | None]:
    """``(kind actually built, empty faiss index, sorted rows to train it on or None)`` for ``n`` vectors of dimension
    ``d`` (:func:`resolve_kind`). IVF kinds with too few vectors to train their lists (or, for ``ivf_pq``, the 256
    codewords of each sub-quantizer) fall back to an exact flat index, with a warning. Training uses a seeded sample
    of at most :data:`TRAIN_POINTS_PER_LIST` vectors per list: centroids are as good for retrieval and training a
    million-vector map takes seconds instead of many minutes."""
    kind = resolve_kind(cfg, n, d)
    if kind == "flat":
        return kind, faiss.IndexFlatIP(d), None
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        # Construction breadth: faiss's default 40 is low for large M; 2*M keeps recall high at modest cost.
        index.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
        return kind, index, None
    if kind not in ("ivf", "ivf_pq"):
        raise ConfigError(f"index.kind: {kind!r} is not one of flat, ivf, ivf_pq, hnsw, auto")
    nlist = cfg.ivf_nlist or max(1, int(round(4 * math.sqrt(n))))
    need = MIN_POINTS_PER_LIST * nlist
    if kind == "ivf_pq":
        if d % cfg.pq_bytes:
            raise ConfigError(f"index.pq_bytes: {cfg.pq_bytes} does not divide the embedding dimension {d}")
        need = max(need, MIN_POINTS_PER_LIST * PQ_CODEWORDS)
    if n < need:
        log.warning("index.kind %s: %d vectors are too few to train it (need %d); using an exact flat index "
                    "instead", kind, n, need)
        return "flat", faiss.IndexFlatIP(d), None
    spec = f"IVF{nlist},Flat" if kind == "ivf" else f"IVF{nlist},PQ{cfg.pq_bytes}x8"
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivf_pq":
        # index_factory turns on polysemous training (codes ordered for Hamming pre-filtering, which this search
        # does not use): it costs ~8x the whole PQ training.
        faiss.downcast_index(index).do_polysemous_training = False
    cap = max(TRAIN_POINTS_PER_LIST * nlist, 0 if kind == "ivf" else TRAIN_POINTS_PER_LIST * PQ_CODEWORDS)
    rows = np.arange(n) if n <= cap else np.sort(np.random.default_rng(0).choice(n, cap, replace=False))
    return kind, index, rows


def _gather_rows(chunks: Iterator[tuple[Mapping[str, np.ndarray], np.ndarray]], rows: np.ndarray, d: int
                 ) -> np.ndarray:
    """The sorted global ``rows`` of the vectors that ``chunks`` yields in order, as one len(rows)×d float32."""
    out = np.empty((len(rows), d), np.float32)
    start, filled = 0, 0
    for _, vecs in chunks:
        stop = start + len(vecs)
        lo, hi = np.searchsorted(rows, [start, stop])
        out[filled:filled + hi - lo] = np.asarray(vecs, np.float32)[rows[lo:hi] - start]
        filled += hi - lo
        start = stop
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _is_index_dir(path: Path) -> bool:
    """True for a directory that holds only the files of a saved index (safe to replace)."""
    try:
        names = {p.name for p in path.iterdir()}
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and names <= set(FILES)


class TileIndex:
    """faiss inner-product index over unit-norm vectors + one metadata row per vector + model identity.

    Build with :meth:`build`, query with :meth:`search` / :meth:`search_tiles`, persist with :meth:`save` /
    :meth:`load`. ``columns`` maps each name of :data:`COLUMNS` to a length-N array (N = number of vectors).
    ``kind`` is the faiss index actually used ("flat", "ivf", "ivf_pq" or "hnsw"; ``auto`` resolves to flat or ivf_pq
    by size, and an IVF request with too few vectors falls back to "flat").
    """

    def __init__(self, index: faiss.Index, columns: Mapping[str, np.ndarray], identity: Mapping[str, Any],
                 crs_wkt: str, map_info: Mapping[str, Any], config: IndexConfig, kind: str,
                 created: str | None = None) -> None:
        self.index = index
        self.columns = {name: np.ascontiguousarray(columns[name] if name in columns else
                                                   np.full(index.ntotal, OPTIONAL_COLUMNS[name]), dtype=dt)
                        for name, dt in COLUMNS.items()}
        self.identity = json.loads(json.dumps(dict(identity)))
        self.fingerprint = fingerprint(self.identity)
        self.crs_wkt = str(crs_wkt)
        self.map_info = json.loads(json.dumps(dict(map_info)))
        self.config = dataclasses.replace(config)
        self.kind = kind
        self.created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.index_dir: Path | None = None  # where it was loaded from (None: built in memory)
        lengths = {name: len(col) for name, col in self.columns.items()}
        if set(lengths.values()) != {index.ntotal}:
            raise ValueError(f"TileIndex: column lengths {lengths} must all equal the number of vectors "
                             f"{index.ntotal}")
        self.set_search_params(config.ivf_nprobe, config.hnsw_ef_search)

    # ---------------------------------------------------------------------------------------------------------------
    # Building

    @classmethod
    def build(cls, vectors: np.ndarray, columns: Mapping[str, np.ndarray], identity: Mapping[str, Any],
              crs_wkt: str, map_info: Mapping[str, Any], config: IndexConfig | None = None) -> TileIndex:
        """Index N×D float32 ``vectors`` (rows L2-normalised) with the ``config.kind`` faiss index.

        ``columns``: every name of :data:`COLUMNS` -> length-N array. ``identity``: the embedding model's
        identity (its ``dim`` must equal D). Raises ValueError for empty, non-finite or wrongly shaped input.
        """
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"TileIndex.build: expected a non-empty N×D array of vectors, got shape {x.shape}")
        return cls.build_from_chunks(lambda: iter([(columns, x)]), identity, crs_wkt, map_info, config)

    @classmethod
    def build_from_chunks(cls, chunks: Callable[[], Iterator[tuple[Mapping[str, np.ndarray], np.ndarray]]],
                          identity: Mapping[str, Any], crs_wkt: str, map_info: Mapping[str, Any],
                          config: IndexConfig | None = None) -> TileIndex:
        """:meth:`build` from vectors that need not fit in memory twice: ``chunks()`` yields ``(columns, vectors)``
        pairs (columns as in :meth:`build`, vectors M×D float32) and is called once more for the IVF kinds (a seeded
        training sample first, then the vectors are added chunk by chunk). The index's rows are the chunks' rows in
        order. Only the faiss index and the columns are held at the end."""
        cfg = config if config is not None else IndexConfig()
        parts: list[dict[str, np.ndarray]] = []
        n, d = 0, None
        for cols, vecs in chunks():
            missing = [c for c in COLUMNS if c not in cols and c not in OPTIONAL_COLUMNS]
            if missing:
                raise ValueError(f"TileIndex.build: missing columns {missing}")
            cols = {c: cols[c] if c in cols else np.full(len(vecs), OPTIONAL_COLUMNS[c]) for c in COLUMNS}
            v = np.asarray(vecs)
            if v.ndim != 2 or (d is not None and v.shape[1] != d):
                raise ValueError(f"TileIndex.build: expected N×D vectors, got a chunk of shape {v.shape}")
            if not np.isfinite(v).all():
                raise ValueError("TileIndex.build: vectors contain NaN or infinity")
            lengths = {len(cols[c]) for c in COLUMNS}
            if lengths != {len(v)}:
                raise ValueError(f"TileIndex.build: column lengths {sorted(lengths)} differ from the chunk's {len(v)} "
                                 "vectors")
            d = int(v.shape[1])
            n += len(v)
            parts.append({c: np.asarray(cols[c], dtype=COLUMNS[c]) for c in COLUMNS})
        if n == 0 or d is None:
            raise ValueError("TileIndex.build: expected a non-empty N×D array of vectors, got none")
        if "dim" in identity and int(identity["dim"]) != d:
            raise ValueError(f"TileIndex.build: vectors have dimension {d}, the model identity says {identity['dim']}")
        columns = {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}
        del parts
        kind, index, train_rows = new_faiss_index(cfg, n, d)
        if train_rows is not None:
            index.train(_gather_rows(chunks(), train_rows, d))
        for _, vecs in chunks():
            index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        return cls(index, columns, identity, crs_wkt, map_info, cfg, kind)

    # ---------------------------------------------------------------------------------------------------------------
    # Querying

    @property
    def ntotal(self) -> int:
        """Number of vectors (rows)."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self.index.d)

    @property
    def rotations_per_tile(self) -> int:
        """Largest number of rows (rotated copies) of any one tile."""
        return int(np.unique(self.columns["tile_id"], return_counts=True)[1].max()) if self.ntotal else 0

    @property
    def facts(self) -> IndexFacts:
        """What this index records about itself (:class:`~mobilegeo_ros.index.facts.IndexFacts`)."""
        return IndexFacts.from_metadata(self.metadata(), self.index_dir or Path("<in memory>"))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set IVF ``nprobe`` and/or HNSW ``efSearch`` (ignored for other kinds)."""
        base = faiss.extract_index_ivf(self.index) if self.kind in IVF_KINDS else None
        if base is not None and nprobe is not None:
            base.nprobe = int(min(nprobe, base.nlist))
        if self.kind == "hnsw" and ef_search is not None:
            self.index.hnsw.efSearch = int(ef_search)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product (= cosine for unit vectors) for each of Q×D float32 ``queries``.

        Returns ``(scores, rows)``: Q×k float32 (descending per query) and Q×k int64 row numbers into
        :attr:`columns`; when fewer than k results exist the tail is padded with row -1 and score -inf.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"TileIndex.search: queries must be Q×{self.dim}, got shape {np.shape(queries)}")
        if k < 1:
            raise ValueError(f"TileIndex.search: k must be >= 1, got {k}")
        if q.shape[0] == 0:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        kk = min(k, self.ntotal)
        scores, rows = self.index.search(q, kk)
        scores = np.asarray(scores, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        if kk < k:
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
        scores[rows < 0] = -np.inf
        return scores, rows

    def search_rows(self, query: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive search of one D-vector ``query`` among the given index ``rows`` only (a search gate): the
        stored vectors of those rows (decoded codes for ``ivf_pq``, the same scores its own search computes) times
        the query. Returns ``(scores, rows)`` of the best ``min(k, len(rows))``, descending. Cost and memory grow
        with ``len(rows)``, not with the index."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"TileIndex.search_rows: query must have {self.dim} values, got {q.shape[0]}")
        rows = np.asarray(rows, np.int64)
        if rows.size == 0 or k < 1:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        if rows.min() < 0 or rows.max() >= self.ntotal:
            raise ValueError(f"TileIndex.search_rows: rows outside [0, {self.ntotal})")
        scores = np.empty(len(rows), np.float32)
        for s in range(0, len(rows), _RECONSTRUCT_ROWS):
            part = rows[s:s + _RECONSTRUCT_ROWS]
            scores[s:s + len(part)] = self._reconstruct(part) @ q
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], rows[top]

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """len(rows)×D float32 stored vectors (decoded for compressed kinds)."""
        if self.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(self.index)
            if not getattr(self, "_direct_map", False):
                ivf.make_direct_map()  # row -> (list, offset): 8 bytes per vector, made once
                self._direct_map = True
        return self.index.reconstruct_batch(np.ascontiguousarray(rows, np.int64))

    def group_by_tile(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """:func:`group_by_tile` with this index's ``tile_id`` column."""
        return group_by_tile(scores, rows, self.columns["tile_id"], k)

    def search_tiles(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` distinct tiles per query: searches k × rotations rows, then :meth:`group_by_tile`."""
        scores, rows = self.search(queries, k * max(1, self.rotations_per_tile))
        return self.group_by_tile(scores, rows, k)

    # ---------------------------------------------------------------------------------------------------------------
    # Persistence

    def metadata(self) -> dict[str, Any]:
        """The ``index.json`` content."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "crs_wkt": self.crs_wkt,
            "map": self.map_info,
            "config": dataclasses.asdict(self.config),
            "kind": self.kind,
            "counts": {"vectors": self.ntotal, "tiles": int(np.unique(self.columns["tile_id"]).size),
                       "rotations_per_tile": self.rotations_per_tile, "dim": self.dim},
            "created": self.created,
        }

    @staticmethod
    def check_output_dir(out_dir: str | Path) -> Path:
        """Absolute ``out_dir`` if :meth:`save` may write there (absent, empty, or a saved index and nothing
        else); otherwise :class:`IndexFileError`. Lets a long build fail before its work rather than after."""
        out = Path(out_dir).absolute()
        if out.exists() or out.is_symlink():
            if not out.is_dir() or out.is_symlink():
                raise IndexFileError(f"index output {str(out)!r} exists and is not a directory; refusing to "
                                     "overwrite it")
            if any(out.iterdir()) and not _is_index_dir(out):
                raise IndexFileError(f"index output {str(out)!r} is a non-empty directory that is not a saved "
                                     "index; refusing to overwrite it (choose another path or empty it)")
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write the index to ``out_dir`` atomically and return it.

        Files go into a temporary sibling directory (fsynced), which then replaces ``out_dir`` by rename. An
        existing ``out_dir`` is replaced only if it is empty or holds a saved index and nothing else; anything
        else raises :class:`IndexFileError`, never deleting user files.
        """
        out = self.check_output_dir(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        tmp = out.parent / f".{out.name}.tmp-{tag}"
        old = out.parent / f".{out.name}.old-{tag}"
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            with open(tmp / TILES_FILE, "wb") as f:
                np.savez(f, **self.columns)
            (tmp / META_FILE).write_text(json.dumps(self.metadata(), indent=2))
            for name in FILES:
                _fsync_file(tmp / name)
            _fsync_dir(tmp)
            if out.exists():
                # A non-empty directory cannot be replaced by rename(2): move it aside, swap, then delete it.
                os.replace(out, old)
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(old, out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
            _fsync_dir(out.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def load(cls, index_dir: str | Path, expected_identity: Mapping[str, Any] | None = None) -> TileIndex:
        """Load a saved index.

        Raises :class:`IndexFileError` naming the file when the directory or a file is missing, truncated, corrupt
        or inconsistent, and :class:`IndexMismatchError` when ``expected_identity`` (the running model's
        :meth:`~mobilegeo_ros.model.base.EmbeddingModel.identity`) differs from the one the index was built with.
        """
        d = Path(index_dir)
        if not d.is_dir():
            raise IndexFileError(f"index directory {str(d)!r} does not exist (build one with "
                                 "`mobilegeo build-index`)")
        for name in FILES:
            if not (d / name).is_file():
                raise IndexFileError(f"index file {str(d / name)!r} is missing; rebuild the index")
        facts = IndexFacts.read(d)
        identity, counts = facts.identity, facts.counts
        if expected_identity is not None:
            diffs = identity_differences(identity, expected_identity)
            if diffs:
                raise IndexMismatchError(f"index {str(d)!r} was built with a different embedding model: "
                                         f"{'; '.join(diffs)}. Its vectors are not comparable with this model's; "
                                         f"{REBUILD_HINT}")

        tiles_path = d / TILES_FILE
        try:
            with np.load(tiles_path, allow_pickle=False) as npz:
                columns = {name: npz[name] for name in COLUMNS if name in npz.files or name not in OPTIONAL_COLUMNS}
        except KeyError as e:
            raise IndexFileError(f"index file {str(tiles_path)!r} lacks column {e}; rebuild the index") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise IndexFileError(f"index file {str(tiles_path)!r} is truncated or corrupt: {e}") from None

        index_path = d / INDEX_FILE
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise IndexFileError(f"index file {str(index_path)!r} is truncated or corrupt: {first}") from None
        if index.ntotal != counts.get("vectors") or index.d != counts.get("dim"):
            raise IndexFileError(f"index file {str(index_path)!r} holds {index.ntotal} vectors of dimension "
                                 f"{index.d}, {META_FILE} says {counts.get('vectors')} of {counts.get('dim')}")
        if "dim" in identity and index.d != identity["dim"]:
            raise IndexFileError(f"index file {str(index_path)!r}: dimension {index.d} differs from the model's "
                                 f"{identity['dim']}")
        bad = {name: len(col) for name, col in columns.items() if len(col) != index.ntotal}
        columns.update({name: np.full(index.ntotal, value) for name, value in OPTIONAL_COLUMNS.items()
                        if name not in columns})
        if bad:
            raise IndexFileError(f"index file {str(tiles_path)!r}: columns {bad} do not have {index.ntotal} rows")
        loaded = cls(index, columns, identity, facts.crs_wkt, facts.map_info, facts.config, facts.kind,
                     created=facts.created)
        loaded.index_dir = d
        return loaded

    def __repr__(self) -> str:
        return (f"TileIndex(kind={self.kind!r}, vectors={self.ntotal}, dim={self.dim}, "
                f"model={self.identity.get('model')!r}, fingerprint={self.fingerprint[:12]})")


__all__ = ["COLUMNS", "FILES", "OPTIONAL_COLUMNS", "FORMAT", "FORMAT_VERSION", "META_FILE", "IndexFileError", "IndexMismatchError",
           "TileIndex", "group_by_tile", "identity_differences"]
