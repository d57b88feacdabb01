"""Files: atomic writes (a reader never sees a half-written file), file hashes and the cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write into; when the block ends without an error the file is
    fsynced and renamed onto ``path`` (atomic on POSIX), otherwise it is removed. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out_dir`` to fill; when the block ends without an error it is renamed onto
    ``out_dir`` (which must be absent or empty), otherwise it is removed. Creates the parent folder."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty (callers check first); os.replace cannot replace a directory on every platform
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode())


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir(kind: str) -> Path:
    """Folder for cached artefacts of one ``kind`` (``onnx``, ``tensorrt``, ...): ``$MOBILEGEO_CACHE_DIR/KIND``, else
    ``$XDG_CACHE_HOME/mobilegeo_ros/KIND``, else ``~/.cache/mobilegeo_ros/KIND``. Not created here."""
    env = os.environ.get("MOBILEGEO_CACHE_DIR")
    if env:
        return Path(env) / kind
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobilegeo_ros" / kind


__all__ = ["atomic_directory", "atomic_path", "atomic_write_bytes", "atomic_write_text", "cache_dir", "file_sha256"]
