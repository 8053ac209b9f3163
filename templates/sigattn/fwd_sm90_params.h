// Launch parameters of the sm90 forward kernel: the forward parameters plus one TMA tensor map
// per input (Q, K, V), each encoded on the host by cuTensorMapEncodeTiled over (head_dim, tokens,
// heads, batch) with 128-byte swizzle, and the dynamic schedule's tile counter. Shared by the host
// runtime and the generated programs.
#pragma once

#include "sigattn/fwd_params.h"

namespace sigattn {

// The opaque 128-byte CUtensorMap, declared without cuda.h so that NVRTC programs can hold it.
struct alignas(64) TmaDescriptor {
  unsigned long long words[16];
};

// The dynamic schedule's counters in global memory, zero before a launch and again after it:
// `next` hands out work tiles, `done` counts the CTAs that found none left, and the last of them
// sets both back to zero. Launches that may run at the same time never share one.
struct TileCounter {
  int next;
  int done;
};

struct FwdSm90Params {
  FwdParams base;
  TmaDescriptor q;
  TmaDescriptor k;
  TmaDescriptor v;
  TileCounter* tile_counter;  // dynamic schedule only, else null
};

}  // namespace sigattn
