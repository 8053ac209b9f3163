// Launch parameters of the backward kernels: the forward's parameters (inputs, lengths, masks,
// scale, bias; its output fields unused) plus dO, the three gradients and the fp32 dQ workspace
// of the one-pass split. Plain C types only; shared by the host runtime and the generated NVRTC
// programs.
#pragma once

#include "sigattn/fwd_params.h"

namespace sigattn {

struct BwdParams {
  FwdParams fwd;
  const void* dout;
  long long do_batch_stride, do_seq_stride, do_head_stride;
  void* dq;
  long long dq_batch_stride, dq_seq_stride, dq_head_stride;
  void* dk;
  long long dk_batch_stride, dk_seq_stride, dk_head_stride;
  void* dv;
  long long dv_batch_stride, dv_seq_stride, dv_head_stride;
  // One-pass split only: unscaled fp32 dQ sums, [batch, max_seqlen_q, heads_q, head_dim]
  // (varlen: [tokens, heads_q, head_dim], batch stride 0), zeroed before the dK/dV kernel adds
  // into it and read by the conversion kernel. Null in the two-kernel split.
  float* dq_accum;
  long long dq_accum_batch_stride, dq_accum_seq_stride, dq_accum_head_stride;
};

}  // namespace sigattn
