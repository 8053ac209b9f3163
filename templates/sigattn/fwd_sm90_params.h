// Launch parameters of the sm90 forward kernel: the forward parameters plus one TMA tensor map
// per input (Q, K, V), each encoded on the host by cuTensorMapEncodeTiled over (head_dim, tokens,
// heads, batch) with 128-byte swizzle. Shared by the host runtime and the generated programs.
#pragma once

#include "sigattn/fwd_params.h"

namespace sigattn {

// The opaque 128-byte CUtensorMap, declared without cuda.h so that NVRTC programs can hold it.
struct alignas(64) TmaDescriptor {
  unsigned long long words[16];
};

struct FwdSm90Params {
  FwdParams base;
  TmaDescriptor q;
  TmaDescriptor k;
  TmaDescriptor v;
};

}  // namespace sigattn
