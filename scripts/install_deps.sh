#!/usr/bin/env bash
# Installs the Debian 12 packages sigattn needs to build and test, then checks for the CUDA
# toolkit (NVRTC and its headers), which is a precondition this script does not install.
# Works as root (CI) and, elsewhere, through sudo when it exists.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache
  libfmt-dev nlohmann-json3-dev libsqlite3-dev libgtest-dev libcli11-dev libxxhash-dev
  clang-format
  # The Python package's tests: a virtual environment over Debian's Python, and its torch.
  python3-venv python3-torch
)

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "install_deps.sh: not root and sudo is not installed; install these packages as root:" >&2
  echo "  ${packages[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}"

# The CUDA toolkit root: the same places CMake's FindCUDAToolkit looks first.
cuda_root=""
for candidate in "${CUDAToolkit_ROOT:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  if [[ -n $candidate && -f $candidate/include/nvrtc.h ]]; then
    cuda_root=$candidate
    break
  fi
done

nvrtc_library=""
if [[ -n $cuda_root ]]; then
  nvrtc_library=$(find -L "$cuda_root/lib64" "$cuda_root/lib" "$cuda_root/targets" -name 'libnvrtc.so*' \
    -print -quit 2>/dev/null || true)
fi
if [[ -z $nvrtc_library ]]; then
  nvrtc_library=$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so/ {print $NF; exit}')
fi

if [[ -z $cuda_root || -z $nvrtc_library ]]; then
  cat >&2 <<'MSG'
install_deps.sh: the CUDA toolkit (NVRTC library and headers) was not found.
  Looked for include/nvrtc.h under $CUDAToolkit_ROOT, $CUDA_HOME, $CUDA_PATH and /usr/local/cuda,
  and for libnvrtc.so* there and on the loader path.
  Install it from NVIDIA's apt repository for Debian 12
  (https://developer.nvidia.com/cuda-downloads, "deb (network)"), then:
    apt-get install cuda-nvrtc-dev-13-0 cuda-cudart-dev-13-0 cuda-driver-dev-13-0
  or point CUDAToolkit_ROOT at an existing toolkit (e.g. export CUDAToolkit_ROOT=/opt/cuda-13.0).
MSG
  exit 1
fi
echo "install_deps.sh: CUDA toolkit at $cuda_root, NVRTC at $nvrtc_library"
