"""The tile index: faiss vectors + tile metadata + the identity of the model that embedded them."""

from mobilegeo_ros.index.tile_index import (
    COLUMNS,
    IndexFileError,
    IndexMismatchError,
    TileIndex,
    group_by_tile,
    identity_differences,
)

__all__ = ["COLUMNS", "IndexFileError", "IndexMismatchError", "TileIndex", "group_by_tile", "identity_differences"]
