// The dynamic shared-memory layout of the decode kernel, in the terms of shared_storage.h (kept in
// its own header so that the other kernels' sources, and the tuning rows keyed by them, stay as
// they are): the block's query rows once, K and V per stage, and P, the sigmoid scores of one
// step that the warps exchange between Q K^T (each warp its keys) and P V (each warp its columns).
#pragma once

#include "sigattn/shared_storage.h"

namespace sigattn {

// Elements per row of P: block_n keys of 16 bits, padded like the other sm80 rows.
SIGATTN_LAYOUT_FN int decode_p_row_stride(int block_n) { return sm80_row_stride(block_n); }

struct DecodeSm80Storage {
  SmemBuffer q, k, v, p;
  int bytes;
};

SIGATTN_LAYOUT_FN DecodeSm80Storage decode_sm80_storage(int head_dim, int block_m, int block_n,
                                                        int stages) {
  const int stride = fwd_sm80_row_stride(head_dim);
  SmemPlacer at;
  DecodeSm80Storage s{};
  s.q = at.place(sm80_tile_bytes(block_m, stride), 1, sm80_alignment());
  s.k = at.place(sm80_tile_bytes(block_n, stride), stages, sm80_alignment());
  s.v = at.place(sm80_tile_bytes(block_n, stride), stages, sm80_alignment());
  s.p = at.place(sm80_tile_bytes(block_m, decode_p_row_stride(block_n)), 1, sm80_alignment());
  s.bytes = at.end;
  return s;
}

}  // namespace sigattn
