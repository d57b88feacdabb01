"""Small helpers with no project dependencies, used across the package (:mod:`.files`: atomic writes, file hashes,
the cache folder)."""
