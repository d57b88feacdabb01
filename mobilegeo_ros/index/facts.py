"""The facts an index records about itself, read from its ``index.json`` by one reader, and the check that a runtime
config does not contradict them.

What an index was built from is a fact of the index, not a setting: the map (path, size, sha256, CRS), the tile
pyramid (``map.tile_sizes_m``, ``map.tile_px``, ``map.overlap``), the gallery rotations and heading mode
(``index.heading``, ``index.rotations``), the faiss kind and the embedding model's identity. :meth:`IndexFacts.read`
is the one place that parses them; :func:`check_runtime_config` refuses, at start, a runtime config whose keys the
localizer reads (``index.heading``, ``index.rotations``) and that disagree with the index, naming the key.
Search-time knobs (``index.ivf_nprobe``, ``index.hnsw_ef_search``) are runtime settings: the runtime config's values
apply (:func:`use_runtime_config`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilegeo_ros.config import Config, IndexConfig, from_dict
from mobilegeo_ros.model.base import fingerprint

if TYPE_CHECKING:
    from mobilegeo_ros.index.tile_index import TileIndex

FORMAT = "mobilegeo_ros.tile_index"
FORMAT_VERSION = 1
META_FILE = "index.json"


class IndexFileError(ValueError):
    """An index directory or one of its files is missing, truncated, corrupt or inconsistent (message names it)."""


class IndexMismatchError(ValueError):
    """The index does not fit what is running: built with another model, or with gallery settings the runtime config
    contradicts (the message says what differs)."""


@dataclass(frozen=True)
class IndexFacts:
    """What ``index.json`` records. ``config``: the :class:`IndexConfig` the index was built with (its ``kind``
    is the requested one; :attr:`kind` the faiss index actually built). ``map_info``: path, name, sha256, size,
    gsd and bounds of the map. ``build_config``: the whole config of the build (nested dicts), None for an index
    that does not record it."""

    index_dir: Path
    identity: dict[str, Any]
    kind: str
    config: IndexConfig
    crs_wkt: str
    map_info: dict[str, Any]
    counts: dict[str, Any]
    created: str | None

    @classmethod
    def read(cls, index_dir: str | Path) -> IndexFacts:
        """Parse and check ``index_dir/index.json``: :class:`IndexFileError` naming the file when it is missing,
        not JSON, not a tile index of this format version, lacks an entry, or its model fingerprint does not match
        the stored identity."""
        d = Path(index_dir)
        meta_path = d / META_FILE
        if not meta_path.is_file():
            raise IndexFileError(f"index file {str(meta_path)!r} is missing; rebuild the index")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise IndexFileError(f"index file {str(meta_path)!r} is not valid JSON (truncated or corrupt): {e}") \
                from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFileError(f"index file {str(meta_path)!r} is not a mobilegeo_ros tile index")
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(f"index file {str(meta_path)!r}: format version {meta.get('format_version')!r} is "
                                 f"not supported (this software reads {FORMAT_VERSION}); rebuild the index")
        try:
            facts = cls.from_metadata(meta, d)
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"index file {str(meta_path)!r} lacks or has a malformed entry: {e}") from None
        if fingerprint(facts.identity) != meta.get("fingerprint"):
            raise IndexFileError(f"index file {str(meta_path)!r}: the model fingerprint does not match the stored "
                                 "identity (file edited or corrupt); rebuild the index")
        return facts

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], index_dir: Path) -> IndexFacts:
        """The facts in an ``index.json`` dict (:meth:`TileIndex.metadata`); KeyError/TypeError when malformed."""
        return cls(index_dir=Path(index_dir), identity=dict(meta["identity"]), kind=str(meta["kind"]),
                   config=IndexConfig(**meta["config"]), crs_wkt=str(meta["crs_wkt"]), map_info=dict(meta["map"]),
                   counts=dict(meta["counts"]), created=meta.get("created"))

    @property
    def heading(self) -> str:
        return self.config.heading

    @property
    def rotations(self) -> int:
        """Gallery copies per tile (1 for a north-up index)."""
        return self.config.rotations if self.config.heading == "gallery_rotations" else 1

    @property
    def tile_sizes_m(self) -> list[float] | None:
        stored = (self.map_info.get("build_config") or {}).get("map") or {}
        return stored.get("tile_sizes_m")

    @property
    def build_config_dict(self) -> dict[str, Any]:
        """The build-time sections (:data:`BUILD_SECTIONS`: what the index IS) of the config it was built with, as
        nested dicts; :class:`IndexFileError` when not recorded. Runtime sections stored with older indexes are
        ignored: runtime settings come from the runtime config (defaults, YAML, parameters), so renaming a runtime
        key never makes an index unreadable."""
        stored = self.map_info.get("build_config")
        if not isinstance(stored, dict):
            raise IndexFileError(f"index {str(self.index_dir)!r}: {META_FILE} does not record the config it was "
                                 "built with; pass one (--config)")
        return {k: v for k, v in stored.items() if k in BUILD_SECTIONS}

    def build_config(self) -> Config:
        """The validated :class:`Config` the index was built with (the default settings to serve it with)."""
        return from_dict(self.build_config_dict)


#: Config sections that describe an index (how it was cut and embedded); the rest are runtime settings.
BUILD_SECTIONS = ("map", "model", "index")


def check_runtime_config(facts: IndexFacts, cfg: Config) -> None:
    """Refuse a runtime config that contradicts the index on a key the localizer reads: raises
    :class:`IndexMismatchError` with one line naming the key, the index's value and the config's.

    ``index.heading``: an index of rotated gallery copies needs ``gallery_rotations``; a north-up index serves
    ``query_rotations`` and ``none`` alike. ``index.rotations``: with gallery copies, the copies the index holds.
    Build-time keys the runtime does not read (``map.*``, ``index.kind``, ``index.ivf_nlist``, ``index.hnsw_m``) are
    not compared: the index's own values are used.
    """
    where = f"the index at {str(facts.index_dir)!r}"
    index_gallery = facts.heading == "gallery_rotations"
    config_gallery = cfg.index.heading == "gallery_rotations"
    if index_gallery != config_gallery:
        raise IndexMismatchError(f"index.heading: {where} was built with {facts.heading}, the config says "
                                 f"{cfg.index.heading}; set index.heading to {facts.heading} (or leave it out of "
                                 "the config) or rebuild the index")
    if index_gallery and facts.config.rotations != cfg.index.rotations:
        raise IndexMismatchError(f"index.rotations: {where} was built with {facts.config.rotations}, the config "
                                 f"says {cfg.index.rotations}; set index.rotations to {facts.config.rotations} (or "
                                 "leave it out of the config) or rebuild the index with "
                                 f"{cfg.index.rotations}")


def use_runtime_config(index: TileIndex, cfg: Config) -> None:
    """Check ``cfg`` against the facts of the loaded ``index`` (:func:`check_runtime_config`) and apply its
    search-time knobs (``index.ivf_nprobe``, ``index.hnsw_ef_search``) to the index: they are runtime settings,
    not facts, so the values stored at build time do not override them."""
    check_runtime_config(index.facts, cfg)
    index.set_search_params(cfg.index.ivf_nprobe, cfg.index.hnsw_ef_search)


__all__ = ["FORMAT", "FORMAT_VERSION", "META_FILE", "IndexFacts", "IndexFileError", "IndexMismatchError",
           "check_runtime_config", "use_runtime_config"]
