// Warpgroup products (wgmma, sm_90a) on 128-byte-swizzled shared-memory tiles, whose column blocks
// of 64 elements lie kRows * 128 bytes apart (shared_storage.h), the shapes attention needs:
//   wgmma_ss_k_major: acc = A B^T, 64 rows of A and kN rows of B both K-major in shared memory
//                     (S = Q K^T, dP = dO V^T and their transposes);
//   wgmma_rs_n_major: acc += P B, P in registers as A fragments (pack_wgmma_a), B N-contiguous in
//                     shared memory (O = P V, dQ = dS K, dV = P^T dO, dK = dS^T Q).
// Each issues its wgmmas; the caller fences, commits and waits.
#pragma once

#include "sigattn/hopper_sm90.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/wgmma_sm90.cuh"

namespace sigattn {

// kK / 16 k-steps; a and b are the shared addresses of A's and B's first rows, in tiles of kARows
// and kBRows rows. The first step overwrites acc.
template <bool kBf16, int kN, int kK, int kARows, int kBRows>
__device__ __forceinline__ void wgmma_ss_k_major(float (&acc)[kN / 2], unsigned a, unsigned b) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    const unsigned long long desc_a =
        smem_descriptor(a + (kk / 4) * kARows * 128 + (kk % 4) * 32, 16, 1024);
    const unsigned long long desc_b =
        smem_descriptor(b + (kk / 4) * kBRows * 128 + (kk % 4) * 32, 16, 1024);
    Wgmma<kN>::template ss<kBf16>(acc, desc_a, desc_b, kk > 0 ? 1 : 0);
  }
}

// kK / 16 k-steps of the A fragments a[kk]; b is the shared address of B's first row (k) in a
// tile of kK rows.
template <bool kBf16, int kN, int kK>
__device__ __forceinline__ void wgmma_rs_n_major(float (&acc)[kN / 2],
                                                 const unsigned (&a)[kK / 16][4], unsigned b) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    Wgmma<kN>::template rs<kBf16>(acc, a[kk], smem_descriptor(b + kk * 16 * 128, kK * 128, 1024),
                                  1);
  }
}

// The A fragments of a 64 x kN fp32 accumulator, as 16-bit pairs, for a following rs product.
template <bool kBf16, int kN>
__device__ __forceinline__ void pack_wgmma_a(unsigned (&a)[kN / 16][4],
                                             const float (&acc)[kN / 2]) {
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      a[kk][j] = pack2<kBf16>(acc[8 * kk + 2 * j], acc[8 * kk + 2 * j + 1]);
  }
}

}  // namespace sigattn
