// The forward call behind sigattn::forward and the C ABI: the validation of its arguments, the
// KernelSpec a call needs, the tile chosen for it and the launch.
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"

namespace sigattn {

// Validates everything that can be checked without touching device memory and returns the spec
// the call needs. Throws Error(invalid_argument / unsupported) naming the argument.
gen::KernelSpec forward_spec(const ForwardArgs& args);

// Runs the forward pass with an explicit tile config (tests and the tuner); forward() takes the
// tile from the tuning lookup chain (runtime/tile_choice.hpp).
void forward_with_tile(const ForwardArgs& args, CUstream stream, const gen::TileConfig& tile);

}  // namespace sigattn
