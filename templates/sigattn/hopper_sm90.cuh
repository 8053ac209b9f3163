// sm_90a primitives of the Hopper kernels: mbarriers and ring positions, TMA tile loads
// completing on an mbarrier, the proxy and warpgroup fences around wgmma, named barriers and the
// consumers' turns built on them, setmaxnreg, the shared-memory matrix descriptors of
// 128-byte-swizzled tiles (rows of 128 bytes, 8-row atoms of 1024 bytes), and the cp.async fill
// of such a tile.
#pragma once

#include "sigattn/fwd_sm90_params.h"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/shared_storage.h"

namespace sigattn {

// The shared address of a kernel's layout (shared_storage.h): the dynamic shared memory's start,
// rounded up to the 1024-byte swizzle atom within the layout's slack.
__device__ __forceinline__ unsigned sm90_smem_base(const unsigned char* smem_raw) {
  constexpr unsigned kMask = sm90_tile_alignment() - 1;
  return (smem_addr(smem_raw) + kMask) & ~kMask;
}

__device__ __forceinline__ void mbarrier_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes barrier initialisation visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

// A position in a ring of kStages buffers, each guarded by a full and an empty mbarrier: the stage
// and the parity of its current phase, counted without a division per step.
template <int kStages>
struct RingPosition {
  int stage = 0;
  unsigned phase = 0;

  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }

  __device__ __forceinline__ void advance(int steps) {
    const int position = stage + steps;
    stage = position % kStages;
    phase ^= (position / kStages) & 1;
  }
};

// Blocks until the phase of the given parity has completed.
__device__ __forceinline__ void mbarrier_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// One box of a 4-D tensor map into shared memory; its bytes count against the barrier's
// expected transaction count. Coordinates outside the map's extents read as zeros.
__device__ __forceinline__ void tma_load_4d(unsigned dst, const TmaDescriptor* map, unsigned bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
      "[%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void prefetch_tma_descriptor(const TmaDescriptor* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(map))
               : "memory");
}

// Orders this thread's generic-proxy shared-memory writes (stores, cp.async) before later
// async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Counts this thread's arrival at a named barrier without waiting for it.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Two consumer warpgroups taking turns issuing their GEMMs (named barriers 2 and 3), so that one
// warpgroup's elementwise work runs while the other's GEMMs hold the tensor cores. Consumer 1
// hands consumer 0 the first turn (begin); after the last work tile consumer 0 takes back the
// turn consumer 1 passed last (end), which leaves both barriers balanced at exit. Without
// kEnabled (one or three consumers) every call does nothing.
template <bool kEnabled>
struct Turns {
  int consumer;

  __device__ __forceinline__ void wait() const {
    if constexpr (kEnabled) named_barrier_sync(2 + consumer, 256);
  }
  __device__ __forceinline__ void pass() const {
    if constexpr (kEnabled) named_barrier_arrive(3 - consumer, 256);
  }
  __device__ __forceinline__ void begin() const {
    if (consumer == 1) pass();
  }
  __device__ __forceinline__ void end() const {
    if (consumer == 0) wait();
  }
};

template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accesses of wgmma accumulators across the async window.
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Descriptor of a 128-byte-swizzled operand at shared address `addr` (atoms 1024-byte aligned).
// K-major operands step k by moving addr within the 128-byte row; `leading_bytes` is the distance
// between 64-element column blocks of an N-contiguous (transposed) operand, `stride_bytes` the
// distance between 8-row groups.
__device__ __forceinline__ unsigned long long smem_descriptor(unsigned addr, unsigned leading_bytes,
                                                              unsigned stride_bytes) {
  return static_cast<unsigned long long>((addr & 0x3FFFF) >> 4) |
         (static_cast<unsigned long long>((leading_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<unsigned long long>((stride_bytes >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled block, the
// placement TMA's 128-byte swizzle gives it.
__device__ __forceinline__ unsigned swizzled_offset(int row, int chunk) {
  return static_cast<unsigned>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Rows [0, kRows) of a tile into 128-byte-swizzled shared memory with cp.async (no registers hold
// the data, so every copy of a thread is in flight at once), rows at and past `valid_rows` as
// zeros, so memory past a sequence's end is never read. Used for the tiles that cross the end of
// a padded or packed sequence, where TMA's bounds are the whole tensor's. Issues this thread's
// copies and returns: cp_async_commit and cp_async_wait complete them, after which the caller
// fences them for wgmma and synchronizes the warpgroup.
template <int kD, int kRows>
__device__ __forceinline__ void copy_tile_swizzled(unsigned dst, const unsigned short* src,
                                                   long long row_stride, int valid_rows,
                                                   int thread) {
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
#pragma unroll 1
  for (int i = thread; i < kRows * kChunks; i += 128) {
    const int row = i / kChunks;
    const int chunk = i % kChunks;
    const bool valid = row < valid_rows;
    cp_async_16(dst + (chunk / 8) * kRows * 128 + swizzled_offset(row, chunk % 8),
                valid ? src + row * row_stride + chunk * 8 : src, valid ? 16 : 0);
  }
}

// copy_tile_swizzled, returning when this thread's copies (and any it issued before) have landed.
template <int kD, int kRows>
__device__ __forceinline__ void load_tile_swizzled(unsigned dst, const unsigned short* src,
                                                   long long row_stride, int valid_rows,
                                                   int thread) {
  copy_tile_swizzled<kD, kRows>(dst, src, row_stride, valid_rows, thread);
  cp_async_commit();
  cp_async_wait<0>();
}

}  // namespace sigattn
