#!/usr/bin/env bash
# The library's own host time per KV-cache call on a machine without a GPU: builds the stand-in
# driver (bench/host_probe/stand_in_driver.cpp, a libcuda.so.1 whose entry points do nothing) and
# the probe (bench/host_probe/decode_host_time.cpp) against the library in $BUILD_DIR (default
# build), then times decode steps and prints the driver calls they made. The driver's own time
# and Python's are not in it: on a GPU, bench/decode.py measures the whole call. Arguments go to
# the probe: [batch] [context] [calls per run].
set -euo pipefail

build_dir="$(realpath "${BUILD_DIR:-build}")"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
cuda_include="${CUDA_HOME:-/usr/local/cuda}/include"

if [[ ! -e "${build_dir}/libsigattn.so" ]]; then
  echo "host_probe.sh: ${build_dir}/libsigattn.so is missing; build it first" >&2
  exit 2
fi
c++ -std=c++17 -O2 -Wall -Wextra -Werror -shared -fPIC -isystem "${cuda_include}" \
  "${root}/bench/host_probe/stand_in_driver.cpp" -o "${work}/libcuda.so.1"
c++ -std=c++20 -O2 -Wall -Wextra -Werror -I"${root}/include" -I"${build_dir}/generated/include" \
  -isystem "${cuda_include}" "${root}/bench/host_probe/decode_host_time.cpp" \
  -L"${build_dir}" -lsigattn -Wl,-rpath,"${build_dir}" -o "${work}/decode_host_time"
mkdir -m 700 "${work}/db"
LD_LIBRARY_PATH="${work}" SIGATTN_DB="${work}/db/sigattn.db" STAND_IN_DRIVER_COUNTS=1 \
  "${work}/decode_host_time" "$@"
