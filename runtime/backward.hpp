// The backward call behind sigattn::backward and the C ABI: validation of the inputs (as the
// forward validates them) and of the four gradient tensors, and the launch of the dK/dV and dQ
// kernels.
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"

namespace sigattn {

struct BackwardSpecs {
  gen::KernelSpec dkdv;
  gen::KernelSpec dq;
};

// Validates everything that can be checked without touching device memory.
BackwardSpecs backward_specs(const BackwardArgs& args);

// Runs the backward pass with explicit tile configs (tests and the tuner); backward() uses the
// heuristic defaults.
void backward_with_tiles(const BackwardArgs& args, CUstream stream, const gen::TileConfig& dkdv,
                         const gen::TileConfig& dq);

}  // namespace sigattn
