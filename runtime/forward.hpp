// The forward call behind sigattn::forward and the C ABI: argument validation, the KernelSpec a
// call needs, the tile config chosen for it, and the launch.
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"

namespace sigattn {

// Validates everything that can be checked without touching device memory and returns the spec
// the call needs. Throws Error(invalid_argument / unsupported) naming the argument.
gen::KernelSpec forward_spec(const ForwardArgs& args);

// Runs the forward pass with an explicit tile config (tests and the tuner); forward() uses
// the heuristic default for the current device.
void forward_with_tile(const ForwardArgs& args, CUstream stream, const gen::TileConfig& tile);

}  // namespace sigattn
