// The dQ share of a dK/dV CTA in the one-pass backward (sm_80 and newer): each step's dS^T tile
// (keys x queries, 16-bit) is staged in shared memory, the warps split dQ_step = dS K_block over
// query tiles and head-dim columns, and add their fp32 products into the dQ workspace with
// red.global.add (two floats per instruction on sm_90). Only dQ is shared between CTAs.
#pragma once

#include "sigattn/ptx_sm80.cuh"
#include "sigattn/shared_storage.h"

namespace sigattn {

// The largest power of two that divides both `warps` (a power of two) and `tiles`.
__host__ __device__ constexpr int shared_power_of_two(int warps, int tiles) {
  int r = warps;
  while (tiles % r != 0) r /= 2;
  return r;
}

// One step's dQ tile, kBM query rows x kSliceWidth head-dim columns, over kWarps warps: the
// query m16 tiles split evenly over kRowWarps warp rows, and the n16 column pairs are dealt
// round-robin to the kColWarps warps of a row (a warp may get one pair fewer).
template <int kBM, int kBN, int kSliceWidth, int kWarps>
struct AtomicDqShape {
  static constexpr int kQTiles = kBM / 16;
  static constexpr int kRowWarps = shared_power_of_two(kWarps, kQTiles);
  static constexpr int kColWarps = kWarps / kRowWarps;
  static constexpr int kWarpQTiles = kQTiles / kRowWarps;
  static constexpr int kPairs = kSliceWidth / 16;
  static constexpr int kWarpPairs = (kPairs + kColWarps - 1) / kColWarps;
  static constexpr int kKeySteps = kBN / 16;
  // dS^T in shared memory: kBN key rows of kBM queries (see shared_storage.h).
  static constexpr int kDsStride = sm80_ds_row_stride(kBM);

  static_assert(kBM % 16 == 0 && kBN % 16 == 0, "dQ tiles are whole m16 and k16 tiles");
  static_assert(kSliceWidth % 16 == 0, "the head-dim slice is whole n16 column pairs");
};

// Two floats added to consecutive fp32 words (8-byte aligned); the result is not returned.
__device__ __forceinline__ void red_add_f32x2(float* address, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(address), "f"(a), "f"(b) : "memory");
#else
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address), "f"(a) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(address + 1), "f"(b) : "memory");
#endif
}

// Writes a warp's dS^T A fragments (kMT m16 tiles of keys from the warp's first row, kK16 k16
// steps of queries), as pack_a built them, to its rows of the shared dS^T tile.
template <int kMT, int kK16, int kDsStride>
__device__ __forceinline__ void store_ds_transposed(unsigned short* warp_rows,
                                                    const unsigned (&frag)[kMT][kK16][4],
                                                    int lane) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int kk = 0; kk < kK16; ++kk) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int key = mt * 16 + lane / 4 + (j % 2) * 8;
        const int query = (2 * kk + j / 2) * 8 + 2 * (lane % 4);
        *reinterpret_cast<unsigned*>(warp_rows + key * kDsStride + query) = frag[mt][kk][j];
      }
    }
  }
}

// dQ[q][c] += sum over the block's keys k of dS[q][k] * K[k][col0 + c] for this warp's part of
// the tile, then the sums are added to `dq` (the workspace row of query 0 of the step, columns
// from col0, rows dq_row_stride apart). Rows at or past rows_valid and columns at or past
// cols_valid (relative to col0) are not added. The whole CTA calls this after a barrier that
// follows every warp's store_ds_transposed.
template <bool kBf16, class Shape, int kKStride>
__device__ __forceinline__ void add_dq_contribution(const unsigned short* ds_transposed,
                                                    const unsigned short* k_rows, int col0,
                                                    float* dq, long long dq_row_stride,
                                                    int rows_valid, int cols_valid, int warp,
                                                    int lane) {
  const int warp_row = warp / Shape::kColWarps;
  const int warp_col = warp % Shape::kColWarps;
  float acc[Shape::kWarpQTiles][Shape::kWarpPairs][2][4];
#pragma unroll
  for (int i = 0; i < Shape::kWarpQTiles; ++i)
#pragma unroll
    for (int j = 0; j < Shape::kWarpPairs; ++j)
#pragma unroll
      for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][s][e] = 0.0f;

#pragma unroll 1
  for (int kk = 0; kk < Shape::kKeySteps; ++kk) {
    // A = dS (queries x keys), read transposed from dS^T: the four 8x8 blocks (q0-7, k0-7),
    // (q8-15, k0-7), (q0-7, k8-15), (q8-15, k8-15) come from key rows kk*16 + 0..15.
    unsigned a[Shape::kWarpQTiles][4];
#pragma unroll
    for (int i = 0; i < Shape::kWarpQTiles; ++i) {
      const int q0 = (warp_row * Shape::kWarpQTiles + i) * 16;
      const int key = kk * 16 + (lane / 16) * 8 + lane % 8;
      ldmatrix_x4_trans(
          a[i], smem_addr(ds_transposed + key * Shape::kDsStride + q0 + ((lane / 8) % 2) * 8));
    }
#pragma unroll
    for (int j = 0; j < Shape::kWarpPairs; ++j) {
      const int pair = warp_col + j * Shape::kColWarps;
      if (pair < Shape::kPairs) {  // the same for every lane of the warp
        unsigned b[4];
        const int key = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
        ldmatrix_x4_trans(b,
                          smem_addr(k_rows + key * kKStride + col0 + pair * 16 + (lane / 16) * 8));
#pragma unroll
        for (int i = 0; i < Shape::kWarpQTiles; ++i) {
          mma_16816<kBf16>(acc[i][j][0], a[i], b[0], b[1]);
          mma_16816<kBf16>(acc[i][j][1], a[i], b[2], b[3]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < Shape::kWarpQTiles; ++i) {
#pragma unroll
    for (int j = 0; j < Shape::kWarpPairs; ++j) {
      const int pair = warp_col + j * Shape::kColWarps;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int col = pair * 16 + s * 8 + 2 * (lane % 4);
        if (pair >= Shape::kPairs || col >= cols_valid) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = (warp_row * Shape::kWarpQTiles + i) * 16 + lane / 4 + h * 8;
          if (row < rows_valid) {
            red_add_f32x2(dq + row * dq_row_stride + col0 + col, acc[i][j][s][2 * h],
                          acc[i][j][s][2 * h + 1]);
          }
        }
      }
    }
  }
}

}  // namespace sigattn
