// The portable forward kernel (sm_80 and newer): mma.sync m16n8k16 tensor cores, a cp.async
// multi-stage K/V pipeline in shared memory, P = sigma(S) kept in registers as the A operand of
// P.V. Sigmoid attention needs no running max, no rescaling and no row sum. One CTA computes
// block_m query rows of one (batch, head); key tiles that the masks hide are skipped.
#pragma once

#include "sigattn/epilogue_sm80.cuh"
#include "sigattn/fwd_params.h"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/shared_storage.h"
#include "sigattn/sigmoid.cuh"
#include "sigattn/tile_load_sm80.cuh"
#include "sigattn/warp_gemm_sm80.cuh"

namespace sigattn {

// Derived sizes for one Cfg (see the generator's traits struct for the parameters).
template <class Cfg>
struct FwdSm80Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kDPad = sm80_padded_dim(kD);  // Q.K^T runs in k-steps of 16
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = kBM / kWarps;
  static constexpr int kMTiles = kWarpRows / 16;
  static constexpr int kNTiles = kBN / 8;
  static constexpr int kKSteps = kDPad / 16;
  static constexpr int kDTiles = kD / 8;
  static constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  static constexpr int kStride = fwd_sm80_row_stride(kD);
  static constexpr RowBlockSm80Storage kSmem = fwd_sm80_storage(kD, kBM, kBN, kStages);
  static constexpr int kKVElems = kSmem.k.slot_bytes / element_bytes();  // one K or V stage
  static constexpr int kSmemBytes = kSmem.bytes;

  static_assert(kD % 8 == 0 && kD >= 8 && kD <= 256,
                "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kWarps == 1 || kWarps == 2 || kWarps == 4 || kWarps == 8,
                "warps must be 1, 2, 4 or 8");
  static_assert(kBM % (16 * kWarps) == 0, "block_m must be a multiple of 16 * warps");
  static_assert(kBN % 16 == 0 && kBN >= 16, "block_n must be a positive multiple of 16");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
  static_assert(!Cfg::kSeqLenX128 || (128 % kBM == 0 && 128 % kBN == 0),
                "the x128 length specialization needs block_m and block_n to divide 128");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    fwd_sm80_kernel(const __grid_constant__ FwdParams params) {
  using S = FwdSm80Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  constexpr bool kChecked = !Cfg::kSeqLenX128;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.q.offset);
  unsigned short* sK = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.k.offset);
  unsigned short* sV = reinterpret_cast<unsigned short*>(smem_raw + S::kSmem.v.offset);

  const int m_block = blockIdx.x;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int head_kv = head / (params.heads_q / params.heads_kv);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const SeqInfo seq = sequence_info<kLayout>(params, batch);
  const int m0 = m_block * S::kBM;
  if (kLayout == Layout::kVarlen && m0 >= seq.len_q) return;

  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(params, seq);
  const int row_hi = min(m0 + S::kBM, seq.len_q) - 1;
  int key_lo = 0, key_hi = 0;  // keys [key_lo, key_hi) visible to some valid row of the block
  if (row_hi >= m0) {
    key_lo = mask.key_begin(m0);
    key_hi = mask.key_end(row_hi);
  }
  const int tile_begin = key_lo / S::kBN;
  const int tile_end = key_hi > key_lo ? (key_hi + S::kBN - 1) / S::kBN : tile_begin;

  const unsigned short* q = static_cast<const unsigned short*>(params.q) + seq.q_start +
                            head * params.q_head_stride + m0 * params.q_seq_stride;
  const unsigned short* k =
      static_cast<const unsigned short*>(params.k) + seq.k_start + head_kv * params.k_head_stride;
  const unsigned short* v =
      static_cast<const unsigned short*>(params.v) + seq.k_start + head_kv * params.v_head_stride;

  // Head dims that are an odd multiple of 8 leave one zero chunk per row for the last k-step.
  zero_pad_columns<S::kD, S::kDPad, S::kStride>(sQ, S::kBM + 2 * S::kStages * S::kBN, tid,
                                                S::kThreads);

  float acc_o[S::kMTiles][S::kDTiles][4];
  zero(acc_o);
  const int warp_row0 = warp * S::kWarpRows;

  if (tile_end > tile_begin) {
    load_rows<S::kBM, S::kChunks, S::kStride, S::kThreads, kChecked>(sQ, q, params.q_seq_stride,
                                                                     seq.len_q - m0, tid);
    cp_async_commit();

    auto load_kv = [&](int tile, int slot) {
      int n0 = tile * S::kBN;
      load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads, kChecked>(
          sK + slot * S::kKVElems, k + n0 * params.k_seq_stride, params.k_seq_stride,
          seq.len_k - n0, tid);
      load_rows<S::kBN, S::kChunks, S::kStride, S::kThreads, kChecked>(
          sV + slot * S::kKVElems, v + n0 * params.v_seq_stride, params.v_seq_stride,
          seq.len_k - n0, tid);
    };
#pragma unroll
    for (int s = 0; s < S::kStages - 1; ++s) {
      if (tile_begin + s < tile_end) load_kv(tile_begin + s, s);
      cp_async_commit();
    }

    const float bias = sequence_bias(params, seq);
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(params.scale);
    const float shift_bias = sigmoid.shift(bias);
    const float* score_mod =
        Cfg::kScoreMod ? params.score_mod + batch * params.score_mod_batch_stride : nullptr;

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

      // S = Q K^T
      float acc_s[S::kMTiles][S::kNTiles][4];
      zero(acc_s);
      gemm_ss<kBf16, S::kMTiles, S::kNTiles, S::kKSteps, S::kStride>(
          acc_s, sQ + warp_row0 * S::kStride, sKt, lane);

      // P = sigma(scale * S + bias + score_mod), zero where masked. (The same loop as the dQ
      // kernel's: a helper shared by both changed the machine code ptxas generates.)
      const bool full_tile =
          !kChecked && !Cfg::kCausal && !Cfg::kWindow
              ? true
              : mask.tile_unmasked(m0 + warp_row0, m0 + warp_row0 + S::kWarpRows - 1, n0,
                                   n0 + S::kBN - 1);
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
            float p = sigmoid(acc_s[mt][nt][e], shift[e % 2]);
            if (!full_tile) {
              int row = m0 + warp_row0 + mt * 16 + lane / 4 + (e / 2) * 8;
              if (!mask.visible(row, col + e % 2)) p = 0.0f;
            }
            acc_s[mt][nt][e] = p;
          }
        }
      }

      // O += P V, P packed from the S accumulators straight into A fragments.
      unsigned pa[S::kMTiles][S::kNTiles / 2][4];
      pack_a<kBf16>(pa, acc_s);
      gemm_rs<kBf16, S::kMTiles, S::kNTiles / 2, S::kDTiles, S::kStride>(acc_o, pa, sVt, 0, lane);
    }
    cp_async_wait<0>();
  }

  // Epilogue: each warp stages its own rows in sQ (rows no other warp reads). Rows past len_q
  // are zeros in the padded layout and absent in varlen.
  const int rows_stored = (kLayout == Layout::kVarlen ? seq.len_q : params.max_seqlen_q) - m0;
  unsigned short* o = static_cast<unsigned short*>(params.o) + seq.o_start +
                      head * params.o_head_stride + m0 * params.o_seq_stride;
  store_warp_rows<kBf16, S::kMTiles, S::kDTiles, S::kStride>(
      acc_o, 1.0f, sQ + warp_row0 * S::kStride, o + warp_row0 * params.o_seq_stride,
      params.o_seq_stride, S::kChunks, seq.len_q - m0 - warp_row0, rows_stored - warp_row0, lane);
}

}  // namespace sigattn
