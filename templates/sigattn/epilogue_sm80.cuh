// Writes a warp's fp32 accumulator rows (kMT m16 tiles x kDT n8 tiles) to global memory as
// 16-bit values: staged through the warp's own shared-memory rows, then stored as 16-byte
// chunks. Rows at or past rows_valid are written as zeros up to rows_stored.
#pragma once

#include "sigattn/ptx_sm80.cuh"

namespace sigattn {

template <bool kBf16, int kMT, int kDT, int kStride>
__device__ __forceinline__ void store_warp_rows(const float (&acc)[kMT][kDT][4], float factor,
                                                unsigned short* stage, unsigned short* dst,
                                                long long dst_stride, int chunks, int rows_valid,
                                                int rows_stored, int lane) {
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int row = mt * 16 + lane / 4 + h * 8;
        int col = dt * 8 + 2 * (lane % 4);
        *reinterpret_cast<unsigned*>(stage + row * kStride + col) =
            pack2<kBf16>(acc[mt][dt][2 * h] * factor, acc[mt][dt][2 * h + 1] * factor);
      }
    }
  }
  __syncwarp();
  constexpr int kRows = kMT * 16;
  for (int idx = lane; idx < kRows * kDT; idx += 32) {
    int row = idx / kDT;
    int chunk = idx % kDT;
    if (row >= rows_stored || chunk >= chunks) continue;
    uint4 value = row < rows_valid
                      ? *reinterpret_cast<const uint4*>(stage + row * kStride + chunk * 8)
                      : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(dst + row * dst_stride + chunk * 8) = value;
  }
}

}  // namespace sigattn
