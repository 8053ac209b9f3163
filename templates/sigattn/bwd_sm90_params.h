// Launch parameters of the sm90 backward kernels: the backward parameters plus TMA tensor maps,
// encoded on the host over (head_dim, tokens, heads, batch) with 128-byte swizzle: Q and dO in
// boxes of block_m rows for both kernels, and K and V in boxes of block_n rows for dQ; the
// dynamic schedule of either kernel takes a tile counter. Shared by the host runtime and the
// generated programs.
#pragma once

#include "sigattn/bwd_params.h"
#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

struct BwdSm90Params {
  BwdParams base;
  TmaDescriptor q;
  TmaDescriptor dout;
  TileCounter* tile_counter;  // the persistent dK/dV kernel (dynamic schedule) only, else null
};

struct BwdDqSm90Params {
  BwdParams base;
  TmaDescriptor q;
  TmaDescriptor dout;
  TmaDescriptor k;
  TmaDescriptor v;
  TileCounter* tile_counter;  // dynamic schedule only, else null
};

}  // namespace sigattn
