#!/usr/bin/env bash
# The README's test command: set up .venv (tools/setup.sh) and run the whole test suite, slow tests included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/setup.sh"
cd "$root"
# ament index lookups (ros2 launch, ros2 run) find the package installed into the venv prefix.
export AMENT_PREFIX_PATH="$root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PATH="$root/.venv/bin:$PATH"
exec "$root/.venv/bin/python" -m pytest "$@"
