// The KV-cache call behind sigattn::forward_with_kvcache and the C ABI, with the tile given
// instead of chosen (tests, and the tuner once decode shapes are tuned).
#pragma once

#include <sigattn/sigattn.hpp>

#include "generator/kernel_spec.hpp"

namespace sigattn {

// forward_with_kvcache with `tile` (its split count included: 0 takes the heuristic's) instead of
// the tuning lookup chain's. Throws Error(invalid_argument) for a tile the policy rejects.
void forward_with_kvcache_tile(const KvCacheArgs& args, CUstream stream,
                               const gen::TileConfig& tile);

}  // namespace sigattn
