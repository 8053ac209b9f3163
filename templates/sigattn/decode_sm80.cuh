// The decode kernel (sm_80 and newer): attention of a few query rows against a KV cache,
// contiguous or paged. One CTA per (row block, split, kv head, batch) reads its share of the
// cache's K/V tiles once for every query head of the GQA group and every query row: the M of
// mma.sync m16n8k16 is those (query, head) pairs, query-major. Decode is bound by HBM, not by
// math: at M = 4 (GQA 32:8, one query) CUDA-core dot products would cost 4 FMAs and a conversion
// per loaded element, a large share of the FP32 rate that keeping up with HBM needs, and more
// with every query row; the tensor cores waste 12 of 16 rows and still have an order of magnitude
// to spare, and the same code serves speculative decoding and chunked prefill (larger M). In each
// step every warp computes S and P for block_n / warps of the keys and stores P in shared memory;
// then every warp computes its share of O's columns from all of P, so O is spread over the warps
// (no final sum across them, and few registers at large head dims). With splits > 1 every CTA
// writes its fp32 partial output and decode_reduce adds them (sigmoid attention needs no
// normalizer: the splits just add).
#pragma once

#include "sigattn/decode_params.h"
#include "sigattn/decode_storage.h"
#include "sigattn/kv_cache.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sigmoid.cuh"
#include "sigattn/tile_load_sm80.cuh"
#include "sigattn/warp_gemm_sm80.cuh"

namespace sigattn {

// Derived sizes for one Cfg (see the generator's traits struct for the parameters).
template <class Cfg>
struct DecodeSm80Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kDPad = sm80_padded_dim(kD);  // Q.K^T runs in k-steps of 16
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBM / 16;
  static constexpr int kWarpKeys = kBN / kWarps;
  static constexpr int kNTiles = kWarpKeys / 8;
  static constexpr int kKSteps = kDPad / 16;
  static constexpr int kDTiles = kD / 8;
  static constexpr int kOTiles = (kDTiles + kWarps - 1) / kWarps;  // n8 tiles of O per warp
  static constexpr int kKeySteps = kBN / 16;                       // k16 steps of P V
  static constexpr int kChunks = kD / 8;                           // 16-byte chunks per row
  static constexpr int kStride = fwd_sm80_row_stride(kD);
  static constexpr int kPStride = decode_p_row_stride(kBN);
  static constexpr DecodeSm80Storage kSmem = decode_sm80_storage(kD, kBM, kBN, kStages);
  static constexpr int kKVElems = kSmem.k.slot_bytes / element_bytes();  // one K or V stage
  static constexpr int kSmemBytes = kSmem.bytes;

  static_assert(kD % 8 == 0 && kD >= 8 && kD <= 256,
                "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kWarps == 1 || kWarps == 2 || kWarps == 4 || kWarps == 8,
                "warps must be 1, 2, 4 or 8");
  static_assert(kBM % 16 == 0 && kBM >= 16, "block_m must be a positive multiple of 16");
  static_assert(kBN == 16 * kWarps, "block_n must be 16 keys per warp");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32)
    decode_sm80_kernel(const __grid_constant__ DecodeParams params) {
  using S = DecodeSm80Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.q.offset);
  unsigned short* sK = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.k.offset);
  unsigned short* sV = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.v.offset);
  unsigned short* sP = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.p.offset);

  const int split = blockIdx.x % params.splits;
  const int m0 = blockIdx.x / params.splits * S::kBM;
  const int head_kv = blockIdx.y;
  const int batch = blockIdx.z;
  const int group = params.heads_q / params.heads_kv;
  const int rows = group * params.seqlen_q;  // (query, group head) pairs, query-major
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const int len = cache_length_before(params, batch) + params.seqlen_new;
  const int first_pos = len - params.seqlen_q;  // the position of query 0
  const CacheMask<Cfg::kCausal, Cfg::kWindow> mask(params, len);
  const CacheRows<Cfg::kPaged> cache(params, batch);
  const int pos_lo = first_pos + m0 / group;
  const int pos_hi = first_pos + (min(m0 + S::kBM, rows) - 1) / group;

  // This split's share of the key tiles any row of the block sees.
  const int key_lo = mask.key_begin(pos_lo);
  const int key_hi = mask.key_end(pos_hi);
  const int first_tile = key_lo / S::kBN;
  const long long tiles = key_hi > key_lo ? (key_hi + S::kBN - 1) / S::kBN - first_tile : 0;
  const int tile_begin = first_tile + static_cast<int>(tiles * split / params.splits);
  const int tile_end = first_tile + static_cast<int>(tiles * (split + 1) / params.splits);

  // Head dims that are an odd multiple of 8 leave one zero chunk per row for the last k-step.
  zero_pad_columns<S::kD, S::kDPad, S::kStride>(sQ, S::kBM + 2 * S::kStages * S::kBN, tid,
                                                S::kThreads);

  // O's columns of this warp: n8 tiles warp, warp + kWarps, ...
  float acc_o[S::kMTiles][S::kOTiles][4];
  zero(acc_o);
  const int warp_key0 = warp * S::kWarpKeys;

  if (tile_end > tile_begin) {
    const unsigned short* q = static_cast<const unsigned short*>(params.q) +
                              batch * params.q_batch_stride +
                              head_kv * group * params.q_head_stride;
    for (int idx = tid; idx < S::kBM * S::kChunks; idx += S::kThreads) {
      const int r = idx / S::kChunks;
      const int chunk = idx % S::kChunks;
      const int row = m0 + r;
      const bool valid = row < rows;
      const unsigned short* g = valid ? q + (row / group) * params.q_seq_stride +
                                            (row % group) * params.q_head_stride + chunk * 8
                                      : q;
      cp_async_16(smem_addr(sQ + r * S::kStride + chunk * 8), g, valid ? 16 : 0);
    }
    cp_async_commit();

    const unsigned short* k =
        static_cast<const unsigned short*>(params.k) + head_kv * params.k_head_stride;
    const unsigned short* v =
        static_cast<const unsigned short*>(params.v) + head_kv * params.v_head_stride;
    // Rows at or past the length are zeros: masked keys must not bring NaNs of unwritten cache
    // memory into P V. Two chunks per thread at a time: unrolled further, ptxas keeps every
    // chunk's (paged: looked-up) addresses live at once and spilled at d=256.
    auto load_kv = [&](int tile, int slot) {
      const int n0 = tile * S::kBN;
      constexpr int kTotal = S::kBN * S::kChunks;
#pragma unroll 2
      for (int it = 0; it < (kTotal + S::kThreads - 1) / S::kThreads; ++it) {
        const int idx = it * S::kThreads + tid;
        if (kTotal % S::kThreads != 0 && idx >= kTotal) break;
        const int r = idx / S::kChunks;
        const int chunk = idx % S::kChunks;
        const bool valid = n0 + r < len;
        const CacheRow at = cache.locate(valid ? n0 + r : 0);
        const int dst = (slot * S::kBN + r) * S::kStride + chunk * 8;
        cp_async_16(smem_addr(sK + dst),
                    k + at.offset(params.k_batch_stride, params.k_seq_stride) + chunk * 8,
                    valid ? 16 : 0);
        cp_async_16(smem_addr(sV + dst),
                    v + at.offset(params.v_batch_stride, params.v_seq_stride) + chunk * 8,
                    valid ? 16 : 0);
      }
    };
#pragma unroll
    for (int s = 0; s < S::kStages - 1; ++s) {
      if (tile_begin + s < tile_end) load_kv(tile_begin + s, s);
      cp_async_commit();
    }

    const float bias = params.has_bias ? params.bias : -logf(static_cast<float>(len));
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(params.scale);
    const float shift_bias = sigmoid.shift(bias);
    const float* score_mod =
        Cfg::kScoreMod ? params.score_mod + batch * params.score_mod_batch_stride : nullptr;
    // The positions of this thread's rows: m16 tile mt, fragment half h.
    int row_pos[S::kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = min(m0 + mt * 16 + lane / 4 + h * 8, rows - 1);
        row_pos[mt][h] = first_pos + row / group;
      }
    }

    for (int tile = tile_begin; tile < tile_end; ++tile) {
      const int it = tile - tile_begin;
      cp_async_wait<S::kStages - 2>();
      __syncthreads();
      if (tile + S::kStages - 1 < tile_end) {
        load_kv(tile + S::kStages - 1, (it + S::kStages - 1) % S::kStages);
      }
      cp_async_commit();

      const unsigned short* sKt = sK + (it % S::kStages) * S::kKVElems + warp_key0 * S::kStride;
      const unsigned short* sVt = sV + (it % S::kStages) * S::kKVElems;
      const int n0 = tile * S::kBN + warp_key0;

      // S = Q K^T over this warp's keys
      float acc_s[S::kMTiles][S::kNTiles][4];
      zero(acc_s);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(acc_s, sQ, sKt, lane);

      // P = sigma(scale * S + bias + score_mod), zero where masked.
      const bool full_tile = mask.all_visible(pos_lo, pos_hi, n0, n0 + S::kWarpKeys - 1);
#pragma unroll
      for (int nt = 0; nt < S::kNTiles; ++nt) {
        const int col = n0 + nt * 8 + 2 * (lane % 4);
        float shift[2];
        sigmoid.template column_shifts<Cfg::kScoreMod>(shift, shift_bias, bias, score_mod, col,
                                                       len);
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float p = sigmoid(acc_s[mt][nt][e], shift[e % 2]);
            if (!full_tile && !mask.visible(row_pos[mt][e / 2], col + e % 2)) p = 0.0f;
            acc_s[mt][nt][e] = p;
          }
        }
      }

      // P of this warp's keys to shared memory, for every warp's share of P V.
#pragma unroll
      for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = mt * 16 + lane / 4 + h * 8;
            const int col = warp_key0 + nt * 8 + 2 * (lane % 4);
            *reinterpret_cast<unsigned*>(sP + row * S::kPStride + col) =
                pack2<kBf16>(acc_s[mt][nt][2 * h], acc_s[mt][nt][2 * h + 1]);
          }
        }
      }
      __syncthreads();

      // O[:, this warp's columns] += P V over every key of the step.
#pragma unroll
      for (int kk = 0; kk < S::kKeySteps; ++kk) {
        unsigned a[S::kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt) {
          ldmatrix_x4(a[mt], smem_addr(sP + (mt * 16 + lane % 16) * S::kPStride + kk * 16 +
                                       (lane / 16) * 8));
        }
        const int v_row = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
#pragma unroll
        for (int i = 0; i < S::kOTiles; ++i) {
          const int t = warp + i * S::kWarps;
          if (S::kDTiles % S::kWarps == 0 || t < S::kDTiles) {
            unsigned b[2];
            ldmatrix_x2_trans(b, smem_addr(sVt + v_row * S::kStride + t * 8));
#pragma unroll
            for (int mt = 0; mt < S::kMTiles; ++mt)
              mma_16816<kBf16>(acc_o[mt][i], a[mt], b[0], b[1]);
          }
        }
      }
    }
    cp_async_wait<0>();
  }

  // This warp's columns of the rows that hold a (query, head) pair: to the output, or to this
  // split's fp32 partial.
#pragma unroll
  for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + mt * 16 + lane / 4 + h * 8;
      if (row >= rows) continue;
      const int query = row / group;
      const int head = head_kv * group + row % group;
      unsigned short* o = static_cast<unsigned short*>(params.o) + batch * params.o_batch_stride +
                          query * params.o_seq_stride + head * params.o_head_stride;
      float* partial =
          params.partial +
          (((static_cast<long long>(split) * params.batch + batch) * params.seqlen_q + query) *
               params.heads_q +
           head) *
              S::kD;
#pragma unroll
      for (int i = 0; i < S::kOTiles; ++i) {
        const int t = warp + i * S::kWarps;
        if (S::kDTiles % S::kWarps != 0 && t >= S::kDTiles) continue;
        const int col = t * 8 + 2 * (lane % 4);
        if (params.partial == nullptr) {
          *reinterpret_cast<unsigned*>(o + col) =
              pack2<kBf16>(acc_o[mt][i][2 * h], acc_o[mt][i][2 * h + 1]);
        } else {
          *reinterpret_cast<float2*>(partial + col) =
              make_float2(acc_o[mt][i][2 * h], acc_o[mt][i][2 * h + 1]);
        }
      }
    }
  }
}

}  // namespace sigattn
