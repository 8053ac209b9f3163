// Sigmoid slopes passed between two consumer warpgroups whose score fragments hold the same
// elements (sm_90a): one computes P = sigma(S) and stores P (1 - P), the other multiplies its dP
// by them (dS = dP P (1 - P)). The dK/dV kernel's gradient split and the dQ kernel's column split
// exchange them this way.
#pragma once

#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sigmoid.cuh"

namespace sigattn {

// The slopes P (1 - P) of a 64 x kN fragment, as fp16 pairs (P (1 - P) lies in [0, 1/4], where
// fp16 is at least as precise as the 16-bit dS they become), into a shared buffer: each thread's
// 16-byte vectors 2 KiB apart, so that the 32 threads of a warp store and load 512 consecutive
// bytes. The same thread of the other warpgroup, whose fragment holds the same elements, reads
// them back.
template <int kN>
__device__ __forceinline__ void store_slopes(unsigned buffer, const float (&probs)[kN / 2],
                                             int thread) {
#pragma unroll
  for (int v = 0; v < kN / 16; ++v) {
    unsigned pairs[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      pairs[j] = pack2<false>(sigmoid_slope(probs[8 * v + 2 * j]),
                              sigmoid_slope(probs[8 * v + 2 * j + 1]));
    }
    asm volatile(
        "st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(buffer + (v * 128 + thread) * 16),
        "r"(pairs[0]), "r"(pairs[1]), "r"(pairs[2]), "r"(pairs[3])
        : "memory");
  }
}

// acc *= the slopes store_slopes left for this thread: dS = dP P (1 - P).
template <int kN>
__device__ __forceinline__ void multiply_by_slopes(float (&acc)[kN / 2], unsigned buffer,
                                                   int thread) {
#pragma unroll
  for (int v = 0; v < kN / 16; ++v) {
    unsigned pairs[4];
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(pairs[0]), "=r"(pairs[1]), "=r"(pairs[2]), "=r"(pairs[3])
                 : "r"(buffer + (v * 128 + thread) * 16)
                 : "memory");
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float lo, hi;
      asm("{\n.reg .f16 l, h;\nmov.b32 {l, h}, %2;\ncvt.f32.f16 %0, l;\ncvt.f32.f16 %1, h;\n}\n"
          : "=f"(lo), "=f"(hi)
          : "r"(pairs[j]));
      acc[8 * v + 2 * j] *= lo;
      acc[8 * v + 2 * j + 1] *= hi;
    }
  }
}

}  // namespace sigattn
