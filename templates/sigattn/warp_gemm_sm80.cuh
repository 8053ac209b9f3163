// Warp-level tensor-core products on shared-memory tiles (row stride kStride elements, 16-bit
// values), the two shapes attention needs:
//   gemm_ss: acc[m][n] += sum_k A[m][k] * B[n][k], A and B both row-major in shared memory
//            (S = Q K^T, dP = dO V^T and their transposes);
//   gemm_rs: acc[m][d] += sum_k P[m][k] * B[k][d], P in registers as A fragments, B row-major in
//            shared memory read transposed (O = P V, dV = P^T dO, dQ = dS K, dK = dS^T Q).
#pragma once

#include "sigattn/ptx_sm80.cuh"

namespace sigattn {

// kMT m16 tiles of A starting at a_rows, kNT n8 tiles of B starting at b_rows, kKSteps k16 steps.
template <bool kBf16, int kMT, int kNT, int kKSteps, int kStride>
__device__ __forceinline__ void gemm_ss(float (&acc)[kMT][kNT][4], const unsigned short* a_rows,
                                        const unsigned short* b_rows, int lane) {
  static_assert(kNT % 2 == 0, "gemm_ss reads B in pairs of n8 tiles");
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    unsigned a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      int row = mt * 16 + lane % 16;
      ldmatrix_x4(a[mt], smem_addr(a_rows + row * kStride + ks * 16 + (lane / 16) * 8));
    }
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      unsigned b[4];
      int row = np * 16 + (lane / 16) * 8 + lane % 8;
      ldmatrix_x4(b, smem_addr(b_rows + row * kStride + ks * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<kBf16>(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma_16816<kBf16>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Packs fp32 accumulators of an m16 x n(2 * kK16) product into A fragments for k16 steps.
template <bool kBf16, int kMT, int kNT>
__device__ __forceinline__ void pack_a(unsigned (&frag)[kMT][kNT / 2][4],
                                       const float (&acc)[kMT][kNT][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk) {
      frag[mt][kk][0] = pack2<kBf16>(acc[mt][2 * kk][0], acc[mt][2 * kk][1]);
      frag[mt][kk][1] = pack2<kBf16>(acc[mt][2 * kk][2], acc[mt][2 * kk][3]);
      frag[mt][kk][2] = pack2<kBf16>(acc[mt][2 * kk + 1][0], acc[mt][2 * kk + 1][1]);
      frag[mt][kk][3] = pack2<kBf16>(acc[mt][2 * kk + 1][2], acc[mt][2 * kk + 1][3]);
    }
  }
}

// kDT n8 output tiles starting at column b_col0 of B; kK16 k16 steps over B's rows.
template <bool kBf16, int kMT, int kK16, int kDT, int kStride>
__device__ __forceinline__ void gemm_rs(float (&acc)[kMT][kDT][4],
                                        const unsigned (&a)[kMT][kK16][4],
                                        const unsigned short* b_rows, int b_col0, int lane) {
#pragma unroll
  for (int kk = 0; kk < kK16; ++kk) {
    const int row = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
#pragma unroll
    for (int dp = 0; dp < kDT / 2; ++dp) {
      unsigned b[4];
      ldmatrix_x4_trans(b, smem_addr(b_rows + row * kStride + b_col0 + dp * 16 + (lane / 16) * 8));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<kBf16>(acc[mt][2 * dp], a[mt][kk], b[0], b[1]);
        mma_16816<kBf16>(acc[mt][2 * dp + 1], a[mt][kk], b[2], b[3]);
      }
    }
    if constexpr (kDT % 2 != 0) {
      unsigned b[2];
      ldmatrix_x2_trans(b, smem_addr(b_rows + row * kStride + b_col0 + (kDT / 2) * 16));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) mma_16816<kBf16>(acc[mt][kDT - 1], a[mt][kk], b[0], b[1]);
    }
  }
}

template <int kMT, int kNT>
__device__ __forceinline__ void zero(float (&acc)[kMT][kNT][4]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
}

}  // namespace sigattn
