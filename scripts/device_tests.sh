#!/usr/bin/env bash
# The GPU test run on a machine with a GPU, from the repository root once the build folder
# ($BUILD_DIR, default build) is there: the device report (`sigattn doctor`), then every GPU test.
# With $OUT set, the log goes to $OUT/gpu_tests.log and the gtest XML report to
# $OUT/gpu_tests.xml. Extra arguments go to the test binary (e.g. --gtest_filter=...). Exits with
# the tests' status.
set -uo pipefail

build_dir="${BUILD_DIR:-build}"
tests="${build_dir}/tests/sigattn_gpu_tests"
cli="${build_dir}/sigattn"

if [[ ! -x "${tests}" ]]; then
  echo "device_tests.sh: ${tests} is missing; build it first (cmake --build ${build_dir})" >&2
  exit 2
fi

gtest_args=("$@")
log=/dev/null
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "${OUT}"
  log="${OUT}/gpu_tests.log"
  gtest_args+=("--gtest_output=xml:${OUT}/gpu_tests.xml")
fi

{
  echo "== ${cli} doctor"
  if [[ -x "${cli}" ]]; then
    "${cli}" doctor || echo "device_tests.sh: sigattn doctor exited with status $?"
  else
    echo "device_tests.sh: ${cli} is missing; no device report"
  fi
  echo "== ${tests} ${gtest_args[*]}"
} 2>&1 | tee "${log}"

"${tests}" "${gtest_args[@]}" 2>&1 | tee -a "${log}"
status=${PIPESTATUS[0]}
echo "device_tests.sh: GPU tests exited with status ${status}" | tee -a "${log}"
exit "${status}"
