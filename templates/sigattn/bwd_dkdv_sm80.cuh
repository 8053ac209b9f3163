// Backward dK/dV kernel (sm_80 and newer): one CTA per block_n keys of one (batch, kv head) and
// one slice of the head dim walks every query head of its GQA group and every query tile that can
// see its keys, recomputes S^T = K Q^T, P^T = sigma(S^T) and dP^T = V dO^T, and accumulates
// dV = P^T dO and dK = scale * dS^T Q, dS = dP * P (1 - P), in registers. Each dK/dV row has one
// writer and a fixed summation order: the result is deterministic. Head dims above 128 split the
// dK/dV columns over CTAs (S^T and dP^T are recomputed per slice) to keep the accumulators in
// registers. With Cfg::kAtomicDq (the one-pass split) each step also adds dS K_block, its share of
// dQ, into the fp32 workspace with atomics (bwd_atomic_dq_sm80.cuh); dK and dV stay deterministic.
#pragma once

#include "sigattn/bwd_atomic_dq_sm80.cuh"
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
struct BwdDkdvShape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kDPad = sm80_padded_dim(kD);
  static constexpr int kSlices = sm80_slices(kD);
  static constexpr int kSliceWidth = sm80_slice_width(kD);
  static constexpr int kRowPad = sm80_sliced_dim(kD);  // >= kDPad
  static constexpr int kBM = Cfg::kBlockM;             // query rows per step
  static constexpr int kBN = Cfg::kBlockN;             // keys per CTA
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = kBN / kWarps;  // keys per warp
  static constexpr int kMTiles = kWarpRows / 16;
  static constexpr int kNTiles = kBM / 8;
  static constexpr int kKSteps = kDPad / 16;
  static constexpr int kDTiles = kSliceWidth / 8;
  static constexpr int kChunks = kD / 8;
  static constexpr int kStride = bwd_sm80_row_stride(kD);
  static constexpr bool kAtomicDq = Cfg::kAtomicDq;
  using DqShape = AtomicDqShape<kBM, kBN, kSliceWidth, kWarps>;
  static constexpr BwdDkdvSm80Storage kSmem =
      bwd_dkdv_sm80_storage(kD, kBM, kBN, kStages, kAtomicDq);
  static constexpr int kRowElems = kSmem.q.slot_bytes / element_bytes();  // one Q or dO stage
  static constexpr int kSmemBytes = kSmem.bytes;

  static_assert(kD % 8 == 0 && kD >= 8 && kD <= 256,
                "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kBN % (16 * kWarps) == 0, "block_n must be a multiple of 16 * warps");
  static_assert(kBM % 16 == 0 && kBM >= 16, "block_m must be a positive multiple of 16");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    bwd_dkdv_sm80_kernel(const __grid_constant__ BwdParams params) {
  using S = BwdDkdvShape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  const FwdParams& p = params.fwd;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned short* sK = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.k.offset);
  unsigned short* sV = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.v.offset);
  unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.q.offset);
  unsigned short* sdO = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.dout.offset);
  // One-pass split only.
  unsigned short* sdS = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.ds.offset);

  const int n_block = blockIdx.x / S::kSlices;
  const int slice = blockIdx.x % S::kSlices;
  const int head_kv = blockIdx.y;
  const int batch = blockIdx.z;
  const int group = p.heads_q / p.heads_kv;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const SeqInfo seq = sequence_info<kLayout>(p, batch);
  const int n0 = n_block * S::kBN;
  if (kLayout == Layout::kVarlen && n0 >= seq.len_k) return;

  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, seq);
  const QuerySteps qs = query_steps<S::kBM, S::kBN>(mask, seq, n0, group);
  const int steps = qs.steps;

  zero_pad_columns<S::kD, S::kRowPad, S::kStride>(sK, 2 * S::kBN + 2 * S::kStages * S::kBM, tid,
                                                  S::kThreads);

  float acc_dk[S::kMTiles][S::kDTiles][4];
  float acc_dv[S::kMTiles][S::kDTiles][4];
  zero(acc_dk);
  zero(acc_dv);
  const int warp_row0 = warp * S::kWarpRows;
  const int col0 = slice * S::kSliceWidth;

  if (steps > 0) {
    const unsigned short* k = static_cast<const unsigned short*>(p.k) + seq.k_start +
                              head_kv * p.k_head_stride + n0 * p.k_seq_stride;
    const unsigned short* v = static_cast<const unsigned short*>(p.v) + seq.k_start +
                              head_kv * p.v_head_stride + n0 * p.v_seq_stride;
    const long long q_base = seq.q_start;
    const long long do_base = seq.q_offset(params.do_batch_stride, params.do_seq_stride, batch);
    load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads>(sK, k, p.k_seq_stride, seq.len_k - n0,
                                                           tid);
    load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads>(sV, v, p.v_seq_stride, seq.len_k - n0,
                                                           tid);
    cp_async_commit();
    auto load_qdo = [&](int step, int slot) {
      int head = qs.head(head_kv, group, step);
      int m0 = qs.row0(step, S::kBM);
      const unsigned short* q = static_cast<const unsigned short*>(p.q) + q_base +
                                head * p.q_head_stride + m0 * p.q_seq_stride;
      const unsigned short* dout = static_cast<const unsigned short*>(params.dout) + do_base +
                                   head * params.do_head_stride + m0 * params.do_seq_stride;
      load_rows<S::kBM, S::kChunks, S::kStride, S::kThreads>(sQ + slot * S::kRowElems, q,
                                                             p.q_seq_stride, seq.len_q - m0, tid);
      load_rows<S::kBM, S::kChunks, S::kStride, S::kThreads>(
          sdO + slot * S::kRowElems, dout, params.do_seq_stride, seq.len_q - m0, tid);
    };
#pragma unroll
    for (int s = 0; s < S::kStages - 1; ++s) {
      if (s < steps) load_qdo(s, s);
      cp_async_commit();
    }

    const float bias = sequence_bias(p, seq);
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
    // Keys are this kernel's rows: one shift per accumulator row.
    const float* score_mod = p.score_mod + batch * p.score_mod_batch_stride;
    float shift[S::kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        shift[mt][h] = sigmoid.template key_shift<Cfg::kScoreMod>(
            bias, score_mod, n0 + warp_row0 + mt * 16 + lane / 4 + h * 8, seq.len_k);
      }
    }

    for (int step = 0; step < steps; ++step) {
      cp_async_wait<S::kStages - 2>();
      __syncthreads();
      if (step + S::kStages - 1 < steps) {
        load_qdo(step + S::kStages - 1, (step + S::kStages - 1) % S::kStages);
      }
      cp_async_commit();
      const unsigned short* sQt = sQ + (step % S::kStages) * S::kRowElems;
      const unsigned short* sdOt = sdO + (step % S::kStages) * S::kRowElems;
      const int m0 = qs.row0(step, S::kBM);

      float acc_s[S::kMTiles][S::kNTiles][4];
      float acc_dp[S::kMTiles][S::kNTiles][4];
      zero(acc_s);
      zero(acc_dp);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(
          acc_s, sK + warp_row0 * S::kStride, sQt, lane);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(
          acc_dp, sV + warp_row0 * S::kStride, sdOt, lane);

      const bool full_tile =
          m0 + S::kBM <= seq.len_q && mask.tile_unmasked(m0, m0 + S::kBM - 1, n0 + warp_row0,
                                                         n0 + warp_row0 + S::kWarpRows - 1);
#pragma unroll
      for (int mt = 0; mt < S::kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < S::kNTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float prob = sigmoid(acc_s[mt][nt][e], shift[mt][e / 2]);
            if (!full_tile) {
              int key = n0 + warp_row0 + mt * 16 + lane / 4 + (e / 2) * 8;
              int query = m0 + nt * 8 + 2 * (lane % 4) + e % 2;
              if (query >= seq.len_q || !mask.visible(query, key)) prob = 0.0f;
            }
            acc_s[mt][nt][e] = prob;
            acc_dp[mt][nt][e] *= sigmoid_slope(prob);
          }
        }
      }

      unsigned frag[S::kMTiles][S::kNTiles / 2][4];
      pack_a<kBf16>(frag, acc_s);
      gemm_rs<kBf16, S::kMTiles, S::kNTiles / 2, S::kDTiles, S::kStride>(acc_dv, frag, sdOt, col0,
                                                                         lane);
      pack_a<kBf16>(frag, acc_dp);
      if constexpr (S::kAtomicDq) {
        store_ds_transposed<S::kMTiles, S::kNTiles / 2, S::DqShape::kDsStride>(
            sdS + warp_row0 * S::DqShape::kDsStride, frag, lane);
      }
      gemm_rs<kBf16, S::kMTiles, S::kNTiles / 2, S::kDTiles, S::kStride>(acc_dk, frag, sQt, col0,
                                                                         lane);
      if constexpr (S::kAtomicDq) {
        __syncthreads();  // every warp's keys of dS^T are in shared memory
        // The step's query head and rows in the workspace. The next step rewrites sdS only after
        // the barrier at the top of the loop, when every warp is done reading it.
        const int head = qs.head(head_kv, group, step);
        float* dq = params.dq_accum +
                    seq.q_offset(params.dq_accum_batch_stride, params.dq_accum_seq_stride, batch) +
                    head * params.dq_accum_head_stride + m0 * params.dq_accum_seq_stride;
        add_dq_contribution<kBf16, typename S::DqShape, S::kStride>(
            sdS, sK, col0, dq, params.dq_accum_seq_stride, seq.len_q - m0,
            min(S::kSliceWidth, S::kD - col0), warp, lane);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the epilogue stages rows in sQ, which other warps read until here
  }

  const int rows_stored = (kLayout == Layout::kVarlen ? seq.len_k : p.max_seqlen_k) - n0;
  const int rows_valid = seq.len_k - n0;
  const int chunks = min(S::kSliceWidth, S::kD - col0) / 8;
  const long long dk_start = seq.k_offset(params.dk_batch_stride, params.dk_seq_stride, batch);
  const long long dv_start = seq.k_offset(params.dv_batch_stride, params.dv_seq_stride, batch);
  unsigned short* dk = static_cast<unsigned short*>(params.dk) + dk_start +
                       head_kv * params.dk_head_stride + (n0 + warp_row0) * params.dk_seq_stride +
                       col0;
  unsigned short* dv = static_cast<unsigned short*>(params.dv) + dv_start +
                       head_kv * params.dv_head_stride + (n0 + warp_row0) * params.dv_seq_stride +
                       col0;
  store_warp_rows<kBf16, S::kMTiles, S::kDTiles, S::kStride>(
      acc_dk, p.scale, sK + warp_row0 * S::kStride, dk, params.dk_seq_stride, chunks,
      rows_valid - warp_row0, rows_stored - warp_row0, lane);
  store_warp_rows<kBf16, S::kMTiles, S::kDTiles, S::kStride>(
      acc_dv, 1.0f, sV + warp_row0 * S::kStride, dv, params.dv_seq_stride, chunks,
      rows_valid - warp_row0, rows_stored - warp_row0, lane);
}

}  // namespace sigattn
