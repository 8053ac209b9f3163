// The append of a call's new keys and values into the KV cache, before the decode kernel reads it:
// token t of sequence b goes to cache position cache_seqlens[b] + t (clamped like every cache
// length), through the block table in a paged cache. One CTA row of the grid per sequence, one
// thread per 16-byte chunk of K and of V.
#pragma once

#include "sigattn/decode_params.h"
#include "sigattn/kv_cache.cuh"

namespace sigattn {

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    kv_append_kernel(const __grid_constant__ DecodeParams params) {
  constexpr int kChunks = Cfg::kHeadDim / 8;
  static_assert(Cfg::kHeadDim % 8 == 0, "head_dim must be a multiple of 8");
  const int batch = blockIdx.y;
  const int idx = blockIdx.x * Cfg::kThreads + threadIdx.x;
  if (idx >= params.seqlen_new * params.heads_kv * kChunks) return;
  const int chunk = idx % kChunks;
  const int head = idx / kChunks % params.heads_kv;
  const int token = idx / kChunks / params.heads_kv;
  const CacheRow at =
      CacheRows<Cfg::kPaged>(params, batch).locate(cache_length_before(params, batch) + token);

  const unsigned short* k_new = static_cast<const unsigned short*>(params.k_new) +
                                batch * params.k_new_batch_stride +
                                token * params.k_new_seq_stride + head * params.k_new_head_stride;
  const unsigned short* v_new = static_cast<const unsigned short*>(params.v_new) +
                                batch * params.v_new_batch_stride +
                                token * params.v_new_seq_stride + head * params.v_new_head_stride;
  unsigned short* k = static_cast<unsigned short*>(params.k) +
                      at.offset(params.k_batch_stride, params.k_seq_stride) +
                      head * params.k_head_stride;
  unsigned short* v = static_cast<unsigned short*>(params.v) +
                      at.offset(params.v_batch_stride, params.v_seq_stride) +
                      head * params.v_head_stride;
  *reinterpret_cast<uint4*>(k + chunk * 8) = *reinterpret_cast<const uint4*>(k_new + chunk * 8);
  *reinterpret_cast<uint4*>(v + chunk * 8) = *reinterpret_cast<const uint4*>(v_new + chunk * 8);
}

}  // namespace sigattn
