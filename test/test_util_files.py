"""mobilegeo_ros.util.files: atomic writes leave either the old content or the new one (never a partial file or a
temporary left behind), the file hash, and where caches go."""

import hashlib

import pytest

from mobilegeo_ros.util.files import atomic_directory, atomic_path, atomic_write_bytes, cache_dir, file_sha256


def test_atomic_write_replaces_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"two" and sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]
    assert file_sha256(target) == hashlib.sha256(b"two").hexdigest()


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(ValueError):
        with atomic_directory(out) as tmp:
            (tmp / "x.txt").write_text("partial")
            raise ValueError("failed half way")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()  # an empty folder is replaced
    with atomic_directory(out) as tmp:
        (tmp / "x.txt").write_text("done")
    assert (out / "x.txt").read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["report"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILEGEO_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir("onnx") == tmp_path / "c" / "onnx"
    monkeypatch.delenv("MOBILEGEO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("tensorrt") == tmp_path / "x" / "mobilegeo_ros" / "tensorrt"
