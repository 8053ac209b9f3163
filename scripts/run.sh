#!/usr/bin/env bash
# The main job on a fresh machine: install the dependencies, build, report the machine with
# `sigattn doctor`, compile the default kernel space for sm_90a (last line: "compiled N, from cache C, failed M"),
# and, where a GPU is present, run the GPU tests.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$repo/build}

"$repo/scripts/install_deps.sh"

cmake -S "$repo" -B "$build_dir" -G Ninja
cmake --build "$build_dir"

"$build_dir/sigattn" doctor
compile_status=0
"$build_dir/sigattn" compile --arch sm_90a || compile_status=$?

if [[ -e /dev/nvidia0 ]] || { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  (cd "$build_dir" && ctest -L gpu --output-on-failure)
else
  echo "run.sh: no NVIDIA GPU found (no /dev/nvidia0, nvidia-smi -L fails); GPU tests not run"
fi
exit "$compile_status"
