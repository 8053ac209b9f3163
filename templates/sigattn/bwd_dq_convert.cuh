// Backward dQ conversion of the one-pass split: after the dK/dV kernel has added every dQ share
// into the fp32 workspace, grad_q = scale * workspace, rounded to the dtype and written with
// grad_q's strides. Query rows past len_q (up to the stored rows) are written as zeros. One CTA
// converts Cfg::kRowsPerCta rows of one (batch, head), 8 values per thread and step.
#pragma once

#include "sigattn/bwd_params.h"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sequence.cuh"

namespace sigattn {

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    bwd_dq_convert_kernel(const __grid_constant__ BwdParams params) {
  constexpr int kChunks = Cfg::kHeadDim / 8;  // 16-byte stores per row
  static_assert(Cfg::kHeadDim % 8 == 0, "head_dim must be a multiple of 8");
  const FwdParams& p = params.fwd;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const SeqInfo seq = sequence_info<Cfg::kLayout>(p, batch);
  const int rows_stored = Cfg::kLayout == Layout::kVarlen ? seq.len_q : p.max_seqlen_q;
  const int row0 = blockIdx.x * Cfg::kRowsPerCta;

  const float* accum =
      params.dq_accum +
      seq.q_offset(params.dq_accum_batch_stride, params.dq_accum_seq_stride, batch) +
      head * params.dq_accum_head_stride;
  unsigned short* dq = static_cast<unsigned short*>(params.dq) +
                       seq.q_offset(params.dq_batch_stride, params.dq_seq_stride, batch) +
                       head * params.dq_head_stride;
  for (int idx = threadIdx.x; idx < Cfg::kRowsPerCta * kChunks; idx += Cfg::kThreads) {
    const int row = row0 + idx / kChunks;
    const int col = idx % kChunks * 8;
    if (row >= rows_stored) break;  // rows grow with idx
    uint4 out = make_uint4(0, 0, 0, 0);
    if (row < seq.len_q) {
      const float* src = accum + row * params.dq_accum_seq_stride + col;
      const float4 lo = *reinterpret_cast<const float4*>(src);
      const float4 hi = *reinterpret_cast<const float4*>(src + 4);
      out.x = pack2<Cfg::kBf16>(lo.x * p.scale, lo.y * p.scale);
      out.y = pack2<Cfg::kBf16>(lo.z * p.scale, lo.w * p.scale);
      out.z = pack2<Cfg::kBf16>(hi.x * p.scale, hi.y * p.scale);
      out.w = pack2<Cfg::kBf16>(hi.z * p.scale, hi.w * p.scale);
    }
    *reinterpret_cast<uint4*>(dq + row * params.dq_seq_stride + col) = out;
  }
}

}  // namespace sigattn
