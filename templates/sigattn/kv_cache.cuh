// A sequence's KV cache as the append and decode kernels see it: its length after the append
// (from the device, clamped so that no launch reads or writes outside the cache), where each of
// its positions lives (a row of its own slice of a contiguous cache, or a slot of the block the
// block table names), and which positions a query row may see.
#pragma once

#include "sigattn/decode_params.h"

namespace sigattn {

__device__ __forceinline__ int clamp_to(int value, int low, int high) {
  return value < low ? low : (value > high ? high : value);
}

// Positions of sequence b before the append: cache_seqlens[b], clamped to [0, capacity -
// seqlen_new] (the host checks this outside graph capture and trust_lengths).
__device__ __forceinline__ int cache_length_before(const DecodeParams& p, int b) {
  return clamp_to(p.cache_seqlens[b], 0, p.capacity - p.seqlen_new);
}

// Where one cache position lives: a (batch or block) index and a row within it.
struct CacheRow {
  long long outer;
  int row;

  // The element offset of the row in a cache tensor with these strides.
  __device__ __forceinline__ long long offset(long long outer_stride, long long row_stride) const {
    return outer * outer_stride + row * row_stride;
  }
};

template <bool kPaged>
struct CacheRows {
  const DecodeParams& p;
  int batch;

  __device__ __forceinline__ CacheRows(const DecodeParams& params, int b) : p(params), batch(b) {}

  // Position `pos` (< capacity) of the sequence. Block table entries outside [0, num_blocks) are
  // clamped into it.
  __device__ __forceinline__ CacheRow locate(int pos) const {
    if constexpr (kPaged) {
      const int slot = pos / p.block_size;
      const int block = p.block_table[batch * p.block_table_batch_stride + slot];
      return {clamp_to(block, 0, p.num_blocks - 1), pos - slot * p.block_size};
    } else {
      return {batch, pos};
    }
  }
};

// Which cache positions (keys) a query at position `pos` sees: those below the length, at most
// `right` after it (0 when causal) and at most `left` before it; a negative bound is none. The
// queries of a call are the last seqlen_q positions: query i sits at len - seqlen_q + i.
template <bool kCausal, bool kWindow>
struct CacheMask {
  int len;
  int left;
  int right;

  __device__ __forceinline__ CacheMask(const DecodeParams& p, int length)
      : len(length), left(kWindow ? p.window_left : -1), right(kWindow ? p.window_right : -1) {
    if (kCausal) right = 0;  // causal caps the window's right side at the query's position
  }

  // First key any query in [pos_lo, pos_hi] may see.
  __device__ __forceinline__ int key_begin(int pos_lo) const {
    return left < 0 ? 0 : (pos_lo - left > 0 ? pos_lo - left : 0);
  }

  // One past the last key any query in [pos_lo, pos_hi] may see.
  __device__ __forceinline__ int key_end(int pos_hi) const {
    return right < 0 ? len : clamp_to(pos_hi + right + 1, 0, len);
  }

  // True when every query in [pos_lo, pos_hi] sees every key in [key_lo, key_hi].
  __device__ __forceinline__ bool all_visible(int pos_lo, int pos_hi, int key_lo,
                                              int key_hi) const {
    if (key_hi >= len) return false;
    if (right >= 0 && key_hi > pos_lo + right) return false;
    if (left >= 0 && key_lo < pos_hi - left) return false;
    return true;
  }

  __device__ __forceinline__ bool visible(int pos, int key) const {
    if (key >= len) return false;
    if (right >= 0 && key > pos + right) return false;
    if (left >= 0 && key < pos - left) return false;
    return true;
  }
};

}  // namespace sigattn
