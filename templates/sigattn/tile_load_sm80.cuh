// Global -> shared tile copies with cp.async: kRows rows of kChunks 16-byte chunks into shared
// rows of kStride elements, rows at or past valid_rows zero-filled; and the zeroing of the pad
// columns [kD, kDPad) that the last k16 step of an odd-multiple-of-8 head dim reads.
#pragma once

#include "sigattn/ptx_sm80.cuh"

namespace sigattn {

// kChecked = false drops the row test where every length is a multiple of the tile.
template <int kRows, int kChunks, int kStride, int kThreads, bool kChecked = true>
__device__ __forceinline__ void load_rows(unsigned short* dst, const unsigned short* src,
                                          long long row_stride, int valid_rows, int tid) {
  constexpr int kTotal = kRows * kChunks;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    int idx = it * kThreads + tid;
    if (kTotal % kThreads == 0 || idx < kTotal) {
      int row = idx / kChunks;
      int chunk = idx % kChunks;
      bool valid = !kChecked || row < valid_rows;
      const unsigned short* g = valid ? src + row * row_stride + chunk * 8 : src;
      cp_async_16(smem_addr(dst + row * kStride + chunk * 8), g, valid ? 16 : 0);
    }
  }
}

// Zeroes columns [kD, kPadTo) of `rows` consecutive shared rows.
template <int kD, int kPadTo, int kStride>
__device__ __forceinline__ void zero_pad_columns(unsigned short* base, int rows, int tid,
                                                 int threads) {
  if constexpr (kPadTo > kD) {
    constexpr int kPadChunks = (kPadTo - kD) / 8;
    for (int idx = tid; idx < rows * kPadChunks; idx += threads) {
      int row = idx / kPadChunks;
      int chunk = idx % kPadChunks;
      *reinterpret_cast<uint4*>(base + row * kStride + kD + chunk * 8) = make_uint4(0, 0, 0, 0);
    }
  }
}

}  // namespace sigattn
