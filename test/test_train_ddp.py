"""DDP: two CPU processes (gloo) started by torchrun train together and write one run directory."""

import json
import socket
import subprocess
import sys

import yaml

from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes(tmp_path):
    tif = write_synthetic_geotiff(tmp_path / "map.tif", 1024, 512, 1.0, seed=4)
    cfg = {"model": {"input_px": 64}, "render": {"altitude_m": [40.0, 50.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0},
           "train": {"data_root": str(tif), "tile_size_m": 60, "spacing_m": 40, "views": 2, "batch_size": 8,
                     "max_steps": 2, "eval_views": 0, "log_every": 1, "bottleneck": 32, "device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mobilegeo_ros.cli", "train", "--config",
           str(tmp_path / "c.yaml"), "--out", str(run), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all(m["world_size"] == 2 for m in lines)
    assert (run / "student.safetensors").is_file()
