// The sum of a split decode call's partial outputs: out = the fp32 partials of every split added
// in split order (so a call's result does not depend on timing), rounded once to the dtype and
// written with the output's strides. One thread per 8 output elements, over a grid-stride loop.
#pragma once

#include "sigattn/decode_params.h"
#include "sigattn/ptx_sm80.cuh"

namespace sigattn {

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    decode_reduce_kernel(const __grid_constant__ DecodeParams params) {
  constexpr int kChunks = Cfg::kHeadDim / 8;  // 16-byte stores per row
  static_assert(Cfg::kHeadDim % 8 == 0, "head_dim must be a multiple of 8");
  const long long chunks =
      static_cast<long long>(params.batch) * params.seqlen_q * params.heads_q * kChunks;
  const long long split_elements = chunks * 8;
  for (long long idx = blockIdx.x * static_cast<long long>(Cfg::kThreads) + threadIdx.x;
       idx < chunks; idx += static_cast<long long>(gridDim.x) * Cfg::kThreads) {
    const int chunk = static_cast<int>(idx % kChunks);
    long long rest = idx / kChunks;
    const int head = static_cast<int>(rest % params.heads_q);
    rest /= params.heads_q;
    const int query = static_cast<int>(rest % params.seqlen_q);
    const int batch = static_cast<int>(rest / params.seqlen_q);
    float4 lo = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 hi = lo;
    const float* partial = params.partial + idx * 8;
    for (int s = 0; s < params.splits; ++s, partial += split_elements) {
      const float4 a = *reinterpret_cast<const float4*>(partial);
      const float4 b = *reinterpret_cast<const float4*>(partial + 4);
      lo = make_float4(lo.x + a.x, lo.y + a.y, lo.z + a.z, lo.w + a.w);
      hi = make_float4(hi.x + b.x, hi.y + b.y, hi.z + b.z, hi.w + b.w);
    }
    unsigned short* o = static_cast<unsigned short*>(params.o) + batch * params.o_batch_stride +
                        query * params.o_seq_stride + head * params.o_head_stride + chunk * 8;
    *reinterpret_cast<uint4*>(o) =
        make_uint4(pack2<Cfg::kBf16>(lo.x, lo.y), pack2<Cfg::kBf16>(lo.z, lo.w),
                   pack2<Cfg::kBf16>(hi.x, hi.y), pack2<Cfg::kBf16>(hi.z, hi.w));
  }
}

}  // namespace sigattn
