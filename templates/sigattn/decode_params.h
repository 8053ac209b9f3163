// Launch parameters of the KV-cache kernels: the append of new keys and values into the cache, the
// decode attention and the sum of its split-KV partial outputs. Included by the host runtime and,
// embedded, by the generated NVRTC programs, so both sides share one layout. Plain C types only.
#pragma once

namespace sigattn {

struct DecodeParams {
  const void* q;  // [batch, seqlen_q, heads_q, head_dim]
  void* o;        // like q
  // The cache, [batch, capacity, heads_kv, head_dim] (contiguous) or [blocks, block_size,
  // heads_kv, head_dim] (paged: the batch stride steps over blocks).
  void* k;
  void* v;
  // New keys and values, [batch, seqlen_new, heads_kv, head_dim], written into the cache at
  // positions cache_seqlens[b] .. + seqlen_new before the attention; null when seqlen_new is 0.
  const void* k_new;
  const void* v_new;
  // Strides in elements: [batch (or block), seq, head]; the head dimension is contiguous.
  long long q_batch_stride, q_seq_stride, q_head_stride;
  long long o_batch_stride, o_seq_stride, o_head_stride;
  long long k_batch_stride, k_seq_stride, k_head_stride;
  long long v_batch_stride, v_seq_stride, v_head_stride;
  long long k_new_batch_stride, k_new_seq_stride, k_new_head_stride;
  long long v_new_batch_stride, v_new_seq_stride, v_new_head_stride;
  // Cache lengths before the append, [batch]; clamped to [0, capacity - seqlen_new].
  const int* cache_seqlens;
  // Paged cache: block_table[b * block_table_batch_stride + i] is the block holding positions
  // [i * block_size, (i + 1) * block_size) of sequence b; entries clamped to [0, num_blocks).
  const int* block_table;
  long long block_table_batch_stride;
  int block_size;
  int num_blocks;
  // Positions per sequence: max_len (contiguous) or blocks per sequence * block_size (paged).
  int capacity;
  int seqlen_new;
  // Optional fp32 [batch, capacity] additive bias by cache position.
  const float* score_mod;
  long long score_mod_batch_stride;
  // Split-KV partial outputs, fp32 [splits][batch][seqlen_q][heads_q][head_dim] contiguous;
  // null when splits == 1 (the kernel then writes o itself).
  float* partial;
  int batch;
  int heads_q;
  int heads_kv;
  int seqlen_q;
  int splits;
  int row_blocks;  // ceil(seqlen_q * heads_q / heads_kv / block_m)
  float scale;
  float bias;       // used when has_bias != 0
  int has_bias;     // 0: bias = -log(cache length after the append) per sequence
  int window_left;  // keys left of a query's position, -1: unbounded
  int window_right;
};

}  // namespace sigattn
