#!/usr/bin/env bash
# Replay a synthetic flight over real imagery into localize_node and print its error table.
#
# The flight is rendered from the dgsamples WorldView-3 scene (2014-10-06, pansharpened) into a rosbag2; the tile
# index is built from the WorldView-2 scene of another date (2014-06-20, pansharpened), so the node matches a camera
# against an orthophoto taken months apart, as in the field. Everything is written under OUT (default
# /tmp/mobilegeo_dgsamples_replay): the dgsamples imagery is licence-restricted and nothing derived from it may be
# written inside the repository.
#
#   benchmarks/replay_dgsamples.sh [OUT] [FRAMES] [RATE_HZ]
#
# Re-running reuses the index and the bag in OUT and writes a new report directory.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-/tmp/mobilegeo_dgsamples_replay}"
FRAMES="${2:-150}"
RATE="${3:-5}"
PY="${PYTHON:-$REPO/.venv/bin/python}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
case "$OUT/" in
  "$REPO"/*) echo "replay_dgsamples.sh: refusing to write derived dgsamples data inside the repository ($OUT)" >&2
             exit 2 ;;
esac

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mobilegeo() { "$PY" -m mobilegeo_ros.cli "$@"; }

read -r WV2_MUL WV2_PAN WV3_MUL WV3_PAN < <("$PY" -c '
from mobilegeo_ros.geo.dgsamples import scene
a, b = scene("wv2"), scene("wv3")
print(a.mul, a.pan, b.mul, b.pan)')

printf 'map:\n  pansharpen_with: "%s"\n' "$WV2_PAN" > "$OUT/index_wv2.yaml"
printf 'map:\n  pansharpen_with: "%s"\n' "$WV3_PAN" > "$OUT/bag_wv3.yaml"

if [ ! -f "$OUT/index_wv2/index.json" ]; then
  echo "== building the WV2 tile index (2014-06-20)"
  mobilegeo build-index "$WV2_MUL" --out "$OUT/index_wv2" --config "$OUT/index_wv2.yaml" --quiet
fi
BAG="$OUT/bag_wv3_${FRAMES}f_${RATE}hz"
if [ ! -f "$BAG/metadata.yaml" ]; then
  echo "== rendering the WV3 flight (2014-10-06) into $BAG"
  mobilegeo make-bag "$WV3_MUL" --out "$BAG" --frames "$FRAMES" --rate-hz "$RATE" --seed 0 --compressed \
    --speed-m-s 10 --config "$OUT/bag_wv3.yaml" --quiet
fi
REPORT="$OUT/report_$(date +%Y%m%d_%H%M%S)"
echo "== replaying into localize_node"
mobilegeo replay "$BAG" --index "$OUT/index_wv2" --report "$REPORT"
