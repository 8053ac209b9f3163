// Per-sequence geometry of one CTA: where sequence b starts in each tensor, its valid query and
// key lengths in each layout, the sigmoid's bias, the range of keys the masks leave to a block of
// query rows, and the query tiles that see a block of keys.
#pragma once

#include "sigattn/fwd_params.h"

namespace sigattn {

enum class Layout { kDense, kPadded, kVarlen };

struct SeqInfo {
  long long q_start, k_start;  // element offsets of the sequence's first row in q/o and k/v
  long long o_start;
  long long q_token0, k_token0;  // varlen: first packed token of the sequence; else 0
  int len_q, len_k;

  // Element offset of the sequence's first row in a tensor with these strides (the host passes
  // batch strides of 0 in the varlen layout).
  __device__ __forceinline__ long long q_offset(long long batch_stride, long long seq_stride,
                                                int b) const {
    return q_token0 * seq_stride + b * batch_stride;
  }
  __device__ __forceinline__ long long k_offset(long long batch_stride, long long seq_stride,
                                                int b) const {
    return k_token0 * seq_stride + b * batch_stride;
  }
};

__device__ __forceinline__ int clamp_len(int len, int max_len) {
  return len < 0 ? 0 : (len > max_len ? max_len : len);
}

// Lengths from device arrays are clamped to [0, max], so no launch reads outside its tensors
// even when the host check was skipped (trust_lengths, CUDA graph capture).
template <Layout kLayout>
__device__ __forceinline__ SeqInfo sequence_info(const FwdParams& p, int b) {
  SeqInfo s;
  if constexpr (kLayout == Layout::kVarlen) {
    int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    s.len_q = clamp_len(p.cu_seqlens_q[b + 1] - q0, p.max_seqlen_q);
    s.len_k = clamp_len(p.cu_seqlens_k[b + 1] - k0, p.max_seqlen_k);
    s.q_token0 = q0;
    s.k_token0 = k0;
    s.q_start = q0 * p.q_seq_stride;
    s.o_start = q0 * p.o_seq_stride;
    s.k_start = k0 * p.k_seq_stride;
  } else {
    s.len_q = p.max_seqlen_q;
    s.len_k = p.max_seqlen_k;
    if constexpr (kLayout == Layout::kPadded) {
      if (p.seq_lens_q) s.len_q = clamp_len(p.seq_lens_q[b], p.max_seqlen_q);
      if (p.seq_lens_k) s.len_k = clamp_len(p.seq_lens_k[b], p.max_seqlen_k);
    }
    s.q_token0 = s.k_token0 = 0;
    s.q_start = b * p.q_batch_stride;
    s.o_start = b * p.o_batch_stride;
    s.k_start = b * p.k_batch_stride;
  }
  return s;
}

// The bias added to every score: the caller's, else -log(len_k).
__device__ __forceinline__ float sequence_bias(const FwdParams& p, const SeqInfo& s) {
  return p.has_bias ? p.bias : -logf(static_cast<float>(s.len_k));
}

// Which keys query rows may see: key padding, causal (bottom-right aligned) and the window, both
// measured from the diagonal j = i + (len_k - len_q).
template <bool kCausal, bool kWindow>
struct KeyMask {
  int len_k;
  int diag;   // len_k - len_q
  int left;   // window keys left of the diagonal, < 0: unbounded
  int right;  // keys right of the diagonal, < 0: unbounded

  __device__ __forceinline__ KeyMask(const FwdParams& p, const SeqInfo& s)
      : len_k(s.len_k), diag(s.len_k - s.len_q), left(p.window_left), right(p.window_right) {
    if (!kWindow) left = right = -1;
    if (kCausal) right = 0;  // causal caps the window's right side at the diagonal
  }

  // First key any row in [row_lo, row_hi] may see.
  __device__ __forceinline__ int key_begin(int row_lo) const {
    if (left < 0) return 0;
    int k = row_lo + diag - left;
    return k < 0 ? 0 : k;
  }

  // One past the last key any row in [row_lo, row_hi] may see.
  __device__ __forceinline__ int key_end(int row_hi) const {
    if (right < 0) return len_k;
    int k = row_hi + diag + right + 1;
    return k < len_k ? k : len_k;
  }

  // First query row that may see a key at or after key_lo.
  __device__ __forceinline__ int query_begin(int key_lo) const {
    if (right < 0) return 0;
    int i = key_lo - diag - right;
    return i < 0 ? 0 : i;
  }

  // One past the last query row (below len_q) that may see a key at or before key_hi.
  __device__ __forceinline__ int query_end(int key_hi, int len_q) const {
    if (left < 0) return len_q;
    int i = key_hi - diag + left + 1;
    return i < len_q ? i : len_q;
  }

  // True when every (row, key) of the tile is visible, so the per-element test can be skipped.
  __device__ __forceinline__ bool tile_unmasked(int row_lo, int row_hi, int key_lo,
                                                int key_hi) const {
    if (key_hi >= len_k) return false;
    if (right >= 0 && key_hi > row_lo + diag + right) return false;
    if (left >= 0 && key_lo < row_hi + diag - left) return false;
    return true;
  }

  __device__ __forceinline__ bool visible(int row, int key) const {
    if (key >= len_k) return false;
    if (right >= 0 && key > row + diag + right) return false;
    if (left >= 0 && key < row + diag - left) return false;
    return true;
  }
};

// The query tiles a dK/dV CTA visits for its keys [n0, n0 + block_n): for each query head of the
// GQA group, the block_m-row tiles from m_begin on that hold a row seeing one of the keys.
struct QuerySteps {
  int m_begin;   // first query tile
  int m_blocks;  // query tiles per head
  int steps;     // m_blocks * group

  __device__ __forceinline__ int head(int head_kv, int group, int step) const {
    return head_kv * group + step / m_blocks;
  }
  __device__ __forceinline__ int row0(int step, int block_m) const {
    return (m_begin + step % m_blocks) * block_m;
  }
};

template <int kBlockM, int kBlockN, class Mask>
__device__ __forceinline__ QuerySteps query_steps(const Mask& mask, const SeqInfo& seq, int n0,
                                                  int group) {
  const int key_hi = min(n0 + kBlockN, seq.len_k) - 1;
  int q_lo = 0, q_hi = 0;  // query rows [q_lo, q_hi) that see some key of the block
  if (key_hi >= n0 && seq.len_q > 0) {
    q_lo = mask.query_begin(n0);
    q_hi = mask.query_end(key_hi, seq.len_q);
  }
  QuerySteps out;
  out.m_begin = q_lo / kBlockM;
  out.m_blocks = q_hi > q_lo ? (q_hi + kBlockM - 1) / kBlockM - out.m_begin : 0;
  out.steps = out.m_blocks * group;
  return out;
}

}  // namespace sigattn
