// The backward call behind sigattn::backward and the C ABI: validation of the inputs (as the
// forward validates them) and of the four gradient tensors, the choice of the work split, and the
// launches: dK/dV then dQ (deterministic), or dK/dV with atomic dQ into an fp32 workspace then
// its conversion to grad_q (one pass).
#pragma once

#include <sigattn/sigattn.hpp>

#include "cache/tuning_store.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"

namespace sigattn {

struct BackwardSpecs {
  gen::KernelSpec dkdv;
  gen::KernelSpec dq;
};

// Validates everything that can be checked without touching device memory.
BackwardSpecs backward_specs(const BackwardArgs& args);

struct BackwardTiles {
  gen::TileConfig dkdv;
  gen::TileConfig dq;  // not launched when dkdv.atomic_dq
};

// The heuristic defaults: when `deterministic` is false, the one-pass split (atomic dQ) for the
// dkdv kernel where policy::one_pass_by_default prefers it.
BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic);

// The tiles backward() launches: each kernel's tile through the tuning lookup chain (user
// database, shipped data, nearest bucket), else the defaults above. A tuned one-pass dkdv tile
// serves only calls that allow it; a deterministic call then keeps the default two-kernel split.
BackwardTiles chosen_backward_tiles(const BackwardArgs& args, const BackwardSpecs& specs,
                                    const policy::Target& target, bool deterministic);
// The rule of chosen_backward_tiles: `defaults` with each looked-up tile that may serve the call.
BackwardTiles combine_backward_tiles(BackwardTiles defaults, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic);

// Runs the backward pass with explicit tile configs (tests and the tuner). A dkdv tile with
// atomic_dq selects the one-pass split: the dq tile is then not used, and the stream must not
// be capturing a CUDA graph. args.deterministic is not consulted: the tiles decide.
void backward_with_tiles(const BackwardArgs& args, CUstream stream, const gen::TileConfig& dkdv,
                         const gen::TileConfig& dq);

}  // namespace sigattn
