// Launch parameters of the sm90 dK/dV kernel: the backward parameters plus TMA tensor maps of Q
// and dO, encoded on the host over (head_dim, tokens, heads, batch) with 128-byte swizzle and
// boxes of block_m rows. Shared by the host runtime and the generated programs.
#pragma once

#include "sigattn/bwd_params.h"
#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

struct BwdSm90Params {
  BwdParams base;
  TmaDescriptor q;
  TmaDescriptor dout;
};

}  // namespace sigattn
