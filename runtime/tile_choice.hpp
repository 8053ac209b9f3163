// Which tile a call runs: the only runtime file that asks the tile policy (generator/tile_policy)
// and the tuning lookup chain (user database, shipped data, nearest bucket, heuristic default).
// Forward and backward tile choice, the check of a tile the caller forces, the request for
// online tuning of a forward call the heuristic served, and the info-level line that shows a new
// variant's choice.
#pragma once

#include <sigattn/sigattn.hpp>

#include "cache/tuning_store.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/kernel_params.hpp"
#include "runtime/module_cache.hpp"

namespace sigattn {

// The policy's target for the current device.
policy::Target current_target();
// The tuning rows' key of the current device.
cache::DeviceKey current_device(const policy::Target& target);

// The policy's target of a described device (explain_*); an unknown architecture is a bad
// argument naming device.arch.
policy::Target described_target(const DeviceDescription& device);
// What explain_* answers for a choice of a tile for `spec`.
Dispatch dispatch_of(const gen::KernelSpec& spec, const cache::TileChoice& choice);

// Where a launched tile came from: a level of the lookup chain (cache::to_string(ServedBy)) or
// "forced" (the caller's), and why.
struct TileOrigin {
  std::string served_by;
  std::string reason;
};
TileOrigin origin_of(const cache::TileChoice& choice);
// The origin of a tile passed by the caller (forward_with_tile, backward_with_tiles).
TileOrigin forced_origin();

// At info level, once per variant in this process: the variant a call launches, where its tile
// came from and where the binary came from (runtime/log).
void log_launch(const gen::Variant& variant, const TileOrigin& origin, const LoadedKernel& kernel);

// Throws Error(invalid_argument) when `tile` cannot run `spec` on `target`: a violated constraint,
// or a kernel that streams operands of `call` through TMA maps that cannot describe them.
void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target, const CallOperands& call);
// The constraints alone, for kernels that stream nothing through TMA maps (decode).
void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target);

// The tile of a forward call on `device` through the lookup chain. A call whose strides no TMA
// map can describe runs the portable family's default instead of an sm90 tile.
cache::TileChoice choose_forward_tile(const ForwardArgs& args, const gen::KernelSpec& spec,
                                      const policy::Target& target, const cache::DeviceKey& device);
// The same for a call about to run: a tile from the heuristic default also passes the call to
// online tuning (runtime/online_tuning_hook.hpp).
cache::TileChoice forward_tile_for_launch(const ForwardArgs& args, const gen::KernelSpec& spec,
                                          const policy::Target& target);

// The row blocks of a decode call with `tile`: its (query, GQA group head) rows, heads_q /
// heads_kv per query, in blocks of block_m.
int decode_row_blocks(const KvCacheArgs& args, const gen::TileConfig& tile);

// The split count policy::decode_splits gives a decode call with `tile` on `sm_count` SMs.
int decode_split_count(const KvCacheArgs& args, const gen::TileConfig& tile, int sm_count);

// The tile of a decode call on `device` through the lookup chain (keyed by
// policy::decode_lookup_units and the cache capacity), with the split count chosen per call
// (policy::decode_splits over the device's SMs) where the tile leaves it open.
cache::TileChoice choose_decode_tile(const KvCacheArgs& args, const gen::KernelSpec& spec,
                                     const policy::Target& target, const cache::DeviceKey& device);

struct BackwardSpecs {
  gen::KernelSpec dkdv;
  gen::KernelSpec dq;
};

struct BackwardTiles {
  gen::TileConfig dkdv;
  gen::TileConfig dq;  // not launched when dkdv.atomic_dq
  TileOrigin dkdv_origin = {};
  TileOrigin dq_origin = {};
};

// The heuristic defaults, with the policy's reasons: when `deterministic` is false, the one-pass
// split (atomic dQ) for the dkdv kernel where policy::one_pass_by_default prefers it.
BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic);

// The tiles backward() launches: each kernel's tile through the tuning lookup chain, else the
// defaults above. A tuned one-pass dkdv tile serves only calls that allow it; a deterministic call
// then keeps the default two-kernel split. A kernel whose operands no TMA map can describe runs
// the portable family's default.
BackwardTiles chosen_backward_tiles(const BackwardArgs& args, const BackwardSpecs& specs,
                                    const policy::Target& target, bool deterministic);
// The rule of chosen_backward_tiles: `defaults` with each looked-up tile that may serve the call,
// and each tile's origin.
BackwardTiles combine_backward_tiles(BackwardTiles defaults, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic);

}  // namespace sigattn
