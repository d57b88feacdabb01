#!/usr/bin/env bash
# Train the shipped student (models/student.safetensors) from openly licensed data only: synthetic towns made by
# mobilegeo_ros/geo/synthetic.py (this repository's code, Apache-2.0). Usage:
#   bash tools/train_shipped_student.sh [RUN_DIR] [extra `mobilegeo train` args, e.g. --set max_steps:=200]
# ~40 min on 2 CPU cores at the default 1000 steps (stages 1-2 frozen); minutes on a GPU (--set device:=cuda).
# Then: cp RUN_DIR/student.safetensors models/ && .venv/bin/mobilegeo export --model models/student.safetensors \
#         --format onnx --out models/student.onnx     (and update models/README.md with RUN_DIR/eval.json)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run=${1:-/tmp/mobilegeo_shipped_student}
shift || true
py="$root/.venv/bin/python"
data="$run.data"
mkdir -p "$data"
PYTHONPATH="$root" "$py" - "$data" <<'PY'
import sys
from pathlib import Path
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff
d = Path(sys.argv[1])
for name, season in (("town.tif", 0.0), ("town_other_date.tif", 1.0)):
    if not (d / name).is_file():
        write_synthetic_geotiff(d / name, 4000, 4000, 0.5, seed=2026, season=season)
print(f"maps in {d}")
PY
PYTHONPATH="$root" "$py" -m mobilegeo_ros.cli train --config "$root/config/train/shipped_student.yaml" --out "$run" \
  --set "data_root:=$data/town.tif" --set "drone_map:=$data/town_other_date.tif" "$@"
