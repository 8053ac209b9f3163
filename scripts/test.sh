#!/usr/bin/env bash
# The test command: installs the dependencies, configures build/ (or $BUILD_DIR) afresh with
# Ninja, builds, runs the CPU tests and the GPU tests (which skip themselves where there is
# no GPU), builds the host code again with ASan and UBSan in build-sanitize/ (or
# $SANITIZE_BUILD_DIR) and runs the CPU tests there, installs the Python package (python/) into a
# virtual environment (its own build in build-wheel/, beside build/) and runs its tests, runs the
# benchmark report's tests, and checks that the C++ sources are clang-formatted.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$repo/build}

"$repo/scripts/install_deps.sh"

# The library's sources compile twice with the same flags (in build/ and in the Python package's
# own build below): ccache serves the second from the first. Both builds name the compiler alike
# (ccache keys on the name) and sit at the same depth under the repository (its paths are made
# relative to the build directory).
export CC=${CC:-cc} CXX=${CXX:-c++}
export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=$repo

cmake --fresh -S "$repo" -B "$build_dir" -G Ninja
cmake --build "$build_dir"

cd "$build_dir"
ctest -L cpu --output-on-failure -j2
ctest -L gpu --output-on-failure

# The CPU tests again under ASan and UBSan, where any finding fails its test (randomized inputs
# included). Only what they run is built. Left out: the tests that compile every kernel template
# or a whole default space with NVRTC (minutes each); NVRTC is not instrumented, so there they
# would only repeat the run above.
sanitize_dir=${SANITIZE_BUILD_DIR:-$repo/build-sanitize}
cmake --fresh -S "$repo" -B "$sanitize_dir" -G Ninja -DSIGATTN_SANITIZE=ON
cmake --build "$sanitize_dir" --target sigattn_cli libsigattn.so sigattn_cpu_tests
(cd "$sanitize_dir" &&
  ctest -L cpu --output-on-failure -j2 \
    -E '^(KernelCompile\.(RepresentativeVariantsCompileForSm80AndSm90a|Sm90VariantsCompileWithoutSpillsOrSerializedWgmma|BlackwellDefaultsCompileWithoutSpillsAtEveryHeadDim)|cli_compile_default_space_.*)$')

# The Python package as a user gets it: `pip install ./python` (which builds its own copy of the
# library) into a virtual environment that sees Debian's python3-torch, then its tests, run from
# outside the source tree so that the installed package is the one imported.
python_env=$build_dir/python-venv
wheel_build_dir=$build_dir-wheel
rm -rf "$wheel_build_dir"
/usr/bin/python3 -m venv --clear --system-site-packages "$python_env"
"$python_env/bin/python" -m pip install --quiet --config-settings=build-dir="$wheel_build_dir" \
  "$repo/python"
"$python_env/bin/python" -m unittest discover -s "$repo/python/tests" -v

# The benchmark's report module (CSV reading and its errors) and its --lengths batch (no GPU, no
# torch needed).
(cd "$repo/bench" && /usr/bin/python3 -m unittest test_report test_bench_lengths -v)

# The C++ sources: what git tracks or would track (build directories are ignored), or, outside a
# git checkout, every source file not under a build directory; the generator's golden outputs
# are kept exactly as generated.
cd "$repo"
list_sources() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- '*.cpp' '*.hpp' '*.h' '*.cuh' '*.cu' \
      ':!tests/data/golden'
  else
    find . \( -path './build*' -o -path ./.git -o -path ./tests/data/golden \) -prune -o -type f \
      \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.cu' \) -print0
  fi
}
if ! list_sources | xargs -0 -r clang-format --dry-run -Werror; then
  echo "test.sh: the files above are not clang-formatted (fix with clang-format -i FILE)" >&2
  exit 1
fi
echo "test.sh: all checks passed"
