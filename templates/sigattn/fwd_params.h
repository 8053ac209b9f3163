// Launch parameters of the forward kernels. Included by the host runtime and, embedded, by the
// generated NVRTC programs, so both sides share one layout. Plain C types only.
#pragma once

namespace sigattn {

struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  // Strides in elements: [batch, seq, head]; the head dimension is contiguous.
  long long q_batch_stride, q_seq_stride, q_head_stride;
  long long k_batch_stride, k_seq_stride, k_head_stride;
  long long v_batch_stride, v_seq_stride, v_head_stride;
  long long o_batch_stride, o_seq_stride, o_head_stride;
  // Padded layout: valid lengths per sequence (null: every sequence is max_seqlen long).
  const int* seq_lens_q;
  const int* seq_lens_k;
  // Varlen layout: prefix sums of the packed lengths, batch + 1 entries.
  const int* cu_seqlens_q;
  const int* cu_seqlens_k;
  // Optional fp32 [batch, max_seqlen_k] per-key additive bias.
  const float* score_mod;
  long long score_mod_batch_stride;
  int batch;
  int heads_q;
  int heads_kv;
  int max_seqlen_q;
  int max_seqlen_k;
  float scale;
  float bias;       // used when has_bias != 0
  int has_bias;     // 0: bias = -log(len_k) per sequence
  int window_left;  // keys left of the diagonal, -1: unbounded
  int window_right;
};

}  // namespace sigattn
