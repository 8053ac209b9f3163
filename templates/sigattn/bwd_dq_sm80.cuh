// Backward dQ kernel (sm_80 and newer): one CTA per block_m query rows of one (batch, head)
// walks the visible key tiles, recomputes S = Q K^T and P = sigma(S), forms dP = dO V^T and
// dS = dP * P (1 - P), and accumulates dQ = scale * dS K in registers. No atomics: every dQ row
// has one writer, so the result is deterministic. Head dims above 128 split the dQ columns over
// CTAs (S and dP are recomputed per slice) to keep the accumulators in registers.
#pragma once

#include "sigattn/bwd_params.h"
#include "sigattn/epilogue_sm80.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/shared_storage.h"
#include "sigattn/sigmoid.cuh"
#include "sigattn/tile_load_sm80.cuh"
#include "sigattn/warp_gemm_sm80.cuh"

namespace sigattn {

template <class Cfg>
struct BwdDqShape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kDPad = sm80_padded_dim(kD);
  static constexpr int kSlices = sm80_slices(kD);
  static constexpr int kSliceWidth = sm80_slice_width(kD);
  static constexpr int kRowPad = sm80_sliced_dim(kD);  // >= kDPad
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = kBM / kWarps;
  static constexpr int kMTiles = kWarpRows / 16;
  static constexpr int kNTiles = kBN / 8;
  static constexpr int kKSteps = kDPad / 16;
  static constexpr int kDTiles = kSliceWidth / 8;
  static constexpr int kChunks = kD / 8;
  static constexpr int kStride = bwd_sm80_row_stride(kD);
  static constexpr RowBlockSm80Storage kSmem = bwd_dq_sm80_storage(kD, kBM, kBN, kStages);
  static constexpr int kKVElems = kSmem.k.slot_bytes / element_bytes();  // one K or V stage
  static constexpr int kSmemBytes = kSmem.bytes;

  static_assert(kD % 8 == 0 && kD >= 8 && kD <= 256,
                "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kBM % (16 * kWarps) == 0, "block_m must be a multiple of 16 * warps");
  static_assert(kBN % 16 == 0 && kBN >= 16, "block_n must be a positive multiple of 16");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    bwd_dq_sm80_kernel(const __grid_constant__ BwdParams params) {
  using S = BwdDqShape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  const FwdParams& p = params.fwd;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.q.offset);
  unsigned short* sdO = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.dout.offset);
  unsigned short* sK = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.k.offset);
  unsigned short* sV = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.v.offset);

  const int m_block = blockIdx.x / S::kSlices;
  const int slice = blockIdx.x % S::kSlices;
  const int col0 = slice * S::kSliceWidth;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int head_kv = head / (p.heads_q / p.heads_kv);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const SeqInfo seq = sequence_info<kLayout>(p, batch);
  const int m0 = m_block * S::kBM;
  if (kLayout == Layout::kVarlen && m0 >= seq.len_q) return;
  const long long do_start = seq.q_offset(params.do_batch_stride, params.do_seq_stride, batch);
  const long long dq_start = seq.q_offset(params.dq_batch_stride, params.dq_seq_stride, batch);

  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, seq);
  const int row_hi = min(m0 + S::kBM, seq.len_q) - 1;
  int key_lo = 0, key_hi = 0;
  if (row_hi >= m0) {
    key_lo = mask.key_begin(m0);
    key_hi = mask.key_end(row_hi);
  }
  const int tile_begin = key_lo / S::kBN;
  const int tile_end = key_hi > key_lo ? (key_hi + S::kBN - 1) / S::kBN : tile_begin;

  zero_pad_columns<S::kD, S::kRowPad, S::kStride>(sQ, 2 * S::kBM + 2 * S::kStages * S::kBN, tid,
                                                  S::kThreads);

  float acc_dq[S::kMTiles][S::kDTiles][4];
  zero(acc_dq);
  const int warp_row0 = warp * S::kWarpRows;

  if (tile_end > tile_begin) {
    const unsigned short* q = static_cast<const unsigned short*>(p.q) + seq.q_start +
                              head * p.q_head_stride + m0 * p.q_seq_stride;
    const unsigned short* dout = static_cast<const unsigned short*>(params.dout) + do_start +
                                 head * params.do_head_stride + m0 * params.do_seq_stride;
    const unsigned short* k =
        static_cast<const unsigned short*>(p.k) + seq.k_start + head_kv * p.k_head_stride;
    const unsigned short* v =
        static_cast<const unsigned short*>(p.v) + seq.k_start + head_kv * p.v_head_stride;

    load_rows<S::kBM, S::kChunks, S::kStride, S::kThreads>(sQ, q, p.q_seq_stride, seq.len_q - m0,
                                                           tid);
    load_rows<S::kBM, S::kChunks, S::kStride, S::kThreads>(sdO, dout, params.do_seq_stride,
                                                           seq.len_q - m0, tid);
    cp_async_commit();
    auto load_kv = [&](int tile, int slot) {
      int n0 = tile * S::kBN;
      load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads>(
          sK + slot * S::kKVElems, k + n0 * p.k_seq_stride, p.k_seq_stride, seq.len_k - n0, tid);
      load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads>(
          sV + slot * S::kKVElems, v + n0 * p.v_seq_stride, p.v_seq_stride, seq.len_k - n0, tid);
    };
#pragma unroll
    for (int s = 0; s < S::kStages - 1; ++s) {
      if (tile_begin + s < tile_end) load_kv(tile_begin + s, s);
      cp_async_commit();
    }

    const float bias = sequence_bias(p, seq);
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
    const float shift_bias = sigmoid.shift(bias);
    const float* score_mod =
        Cfg::kScoreMod ? p.score_mod + batch * p.score_mod_batch_stride : nullptr;

    for (int tile = tile_begin; tile < tile_end; ++tile) {
      const int it = tile - tile_begin;
      cp_async_wait<S::kStages - 2>();
      __syncthreads();
      if (tile + S::kStages - 1 < tile_end) {
        load_kv(tile + S::kStages - 1, (it + S::kStages - 1) % S::kStages);
      }
      cp_async_commit();
      const unsigned short* sKt = sK + (it % S::kStages) * S::kKVElems;
      const unsigned short* sVt = sV + (it % S::kStages) * S::kKVElems;
      const int n0 = tile * S::kBN;

      float acc_s[S::kMTiles][S::kNTiles][4];
      float acc_dp[S::kMTiles][S::kNTiles][4];
      zero(acc_s);
      zero(acc_dp);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(
          acc_s, sQ + warp_row0 * S::kStride, sKt, lane);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(
          acc_dp, sdO + warp_row0 * S::kStride, sVt, lane);

      // dS = dP P (1 - P) into acc_s, P as in the forward (whose loop this repeats: a helper
      // shared by both changed the machine code ptxas generates).
      const bool full_tile = mask.tile_unmasked(m0 + warp_row0, m0 + warp_row0 + S::kWarpRows - 1,
                                                n0, n0 + S::kBN - 1);
#pragma unroll
      for (int nt = 0; nt < S::kNTiles; ++nt) {
        const int col = n0 + nt * 8 + 2 * (lane % 4);
        float shift[2] = {shift_bias, shift_bias};
        if constexpr (Cfg::kScoreMod) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if (col + c < seq.len_k) shift[c] = sigmoid.shift(bias + score_mod[col + c]);
          }
        }
#pragma unroll
        for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float prob = sigmoid(acc_s[mt][nt][e], shift[e % 2]);
            if (!full_tile) {
              int row = m0 + warp_row0 + mt * 16 + lane / 4 + (e / 2) * 8;
              if (!mask.visible(row, col + e % 2)) prob = 0.0f;
            }
            acc_s[mt][nt][e] = acc_dp[mt][nt][e] * sigmoid_slope(prob);
          }
        }
      }

      unsigned ds[S::kMTiles][S::kNTiles / 2][4];
      pack_a<kBf16>(ds, acc_s);
      gemm_rs<kBf16, S::kMTiles, S::kNTiles / 2, S::kDTiles, S::kStride>(acc_dq, ds, sKt, col0,
                                                                         lane);
    }
    cp_async_wait<0>();
  }

  const int rows_stored = (kLayout == Layout::kVarlen ? seq.len_q : p.max_seqlen_q) - m0;
  unsigned short* dq = static_cast<unsigned short*>(params.dq) + dq_start +
                       head * params.dq_head_stride + m0 * params.dq_seq_stride + col0;
  store_warp_rows<kBf16, S::kMTiles, S::kDTiles, S::kStride>(
      acc_dq, p.scale, sQ + warp_row0 * S::kStride, dq + warp_row0 * params.dq_seq_stride,
      params.dq_seq_stride, min(S::kSliceWidth, S::kD - col0) / 8, seq.len_q - m0 - warp_row0,
      rows_stored - warp_row0, lane);
}

}  // namespace sigattn
