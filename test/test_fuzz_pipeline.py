"""A small run of benchmarks/fuzz_pipeline.py: malformed frames never escape LocalizationPipeline.process, every one
is counted (rejected by field, or a backend error), the pipeline still localizes a clean track afterwards, and corrupt
files given to the CLI end in exit 0 or a one-line exit 2. The full figures (>= 10 000 messages) come from
``.venv/bin/python benchmarks/fuzz_pipeline.py``."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_pipeline", ROOT / "benchmarks" / "fuzz_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fuzzed_messages_never_crash_and_are_all_counted(fuzz):
    res = fuzz.fuzz_messages(400, seed=11, clean_track=20)
    assert res["crashes"] == 0, res["crash_examples"]
    out = res["outcomes"]
    assert sum(out.values()) == 400  # every frame is a result, a rejection or a counted backend error
    assert out.get("backend_error", 0) == 0, res["backend_errors"]
    # the decoders name the field: several distinct reasons, each of a known kind
    reasons = res["rejected_by_reason"]
    assert {"raw: data", "raw: encoding", "compressed: data"} <= set(reasons), reasons
    assert res["stats"]["rejected"] == out["rejected"]
    assert out.get("fix", 0) > 0
    clean = res["clean_track"]
    assert clean.get("fix", 0) >= 10 and clean["median_error_m"] < 10.0, clean


def test_corrupt_files_given_to_the_cli_are_one_line_errors(fuzz):
    res = fuzz.fuzz_cli(30, seed=5)
    assert res["crashes"] == 0, res["crash_examples"]
    assert sum(res["outcomes"].values()) == 30
    assert any(k.endswith("exit 2") for k in res["outcomes"])


def test_cli_process_truncated_jpeg_and_tiff(tmp_path, fuzz):
    """The same through a real `mobilegeo` process: no traceback, exit 2, one line naming the file."""
    from mobilegeo_ros.io.images import encode_compressed
    from synthetic_world import synthetic_setup

    setup = synthetic_setup()
    jpg = tmp_path / "cut.jpg"
    jpg.write_bytes(encode_compressed(np.full((40, 40, 3), 90, np.uint8), "jpeg")["data"][:200])
    tif = tmp_path / "cut.tif"
    tif.write_bytes(setup.map_path.read_bytes()[:5000])
    for args, name in ((["localize", "--index", setup.index_dir, jpg], "cut.jpg"),
                       (["build-index", tif, "--out", tmp_path / "idx", "--quiet"], "cut.tif")):
        r = subprocess.run([sys.executable, "-m", "mobilegeo_ros.cli", *map(str, args)], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("[ WARN", "[ERROR"))]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and lines[0].startswith("mobilegeo: error:") and name in lines[0], r.stderr
    assert not (tmp_path / "idx").exists()
