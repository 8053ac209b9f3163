// Which tile a call runs: the only runtime file that asks the tile policy (generator/tile_policy)
// and the tuning lookup chain (user database, shipped data, nearest bucket, heuristic default).
// Forward and backward tile choice, the check of a tile the caller forces, and the request for
// online tuning of a forward call the heuristic served.
#pragma once

#include <sigattn/sigattn.hpp>

#include "cache/tuning_store.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/kernel_params.hpp"

namespace sigattn {

// The policy's target for the current device.
policy::Target current_target();

// Throws Error(invalid_argument) when `tile` cannot run `spec` on `target`: a violated constraint,
// or a kernel that streams operands of `call` through TMA maps that cannot describe them.
void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target, const CallOperands& call);

// The tile of a forward call through the lookup chain. A call whose strides no TMA map can
// describe runs the portable family's default instead of an sm90 tile.
cache::TileChoice choose_forward_tile(const ForwardArgs& args, const gen::KernelSpec& spec,
                                      const policy::Target& target);
// The same for a call about to run: a tile from the heuristic default also passes the call to
// online tuning (runtime/online_tuning_hook.hpp).
cache::TileChoice forward_tile_for_launch(const ForwardArgs& args, const gen::KernelSpec& spec,
                                          const policy::Target& target);

struct BackwardSpecs {
  gen::KernelSpec dkdv;
  gen::KernelSpec dq;
};

struct BackwardTiles {
  gen::TileConfig dkdv;
  gen::TileConfig dq;  // not launched when dkdv.atomic_dq
};

// The heuristic defaults: when `deterministic` is false, the one-pass split (atomic dQ) for the
// dkdv kernel where policy::one_pass_by_default prefers it.
BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic);

// The tiles backward() launches: each kernel's tile through the tuning lookup chain, else the
// defaults above. A tuned one-pass dkdv tile serves only calls that allow it; a deterministic call
// then keeps the default two-kernel split. A kernel whose operands no TMA map can describe runs
// the portable family's default.
BackwardTiles chosen_backward_tiles(const BackwardArgs& args, const BackwardSpecs& specs,
                                    const policy::Target& target, bool deterministic);
// The rule of chosen_backward_tiles: `defaults` with each looked-up tile that may serve the call.
BackwardTiles combine_backward_tiles(BackwardTiles defaults, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic);

}  // namespace sigattn
