// The backward call behind sigattn::backward and the C ABI: validation of the inputs (as the
// forward validates them) and of the four gradient tensors, the choice of the work split, and the
// launches: dK/dV then dQ (deterministic), or dK/dV with atomic dQ into an fp32 workspace then
// its conversion to grad_q (one pass).
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"
#include "runtime/tile_choice.hpp"

namespace sigattn {

// Validates everything that can be checked without touching device memory.
BackwardSpecs backward_specs(const BackwardArgs& args);

// Runs the backward pass with explicit tile configs (tests and the tuner). A dkdv tile with
// atomic_dq selects the one-pass split: the dq tile is then not used, and the stream must not
// be capturing a CUDA graph. args.deterministic is not consulted: the tiles decide.
void backward_with_tiles(const BackwardArgs& args, CUstream stream, const gen::TileConfig& dkdv,
                         const gen::TileConfig& dq);

}  // namespace sigattn
