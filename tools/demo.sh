#!/usr/bin/env bash
# The README's demo command: set up .venv (tools/setup.sh) and run `mobilegeo demo` on the dgsamples imagery.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/setup.sh"
exec "$root/.venv/bin/mobilegeo" demo "$@"
