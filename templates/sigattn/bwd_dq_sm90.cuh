// The Hopper dQ kernel of the deterministic backward (sm_90a), persistent like the forward:
// each CTA walks work tiles (query row block, head, batch) in the strided or the dynamic schedule.
// One producer warpgroup loads each tile's Q and dO and streams its K/V tiles through a multi-stage
// ring with TMA. Each of block_m / 64 consumer warpgroups owns 64 query rows and per K/V tile
// computes S = Q K^T and dP = dO V^T with wgmma from shared memory, dS = dP P (1 - P) with P =
// sigma(S) in registers, and dQ += dS K with dS as the register A operand. The S and dP of tile j+1
// and the dQ update of tile j are in flight while tile j+1's sigmoid runs, and two consumer
// warpgroups alternate their GEMMs. In the column split (block_m 64 on 12 warps, for head dims
// whose dQ, S and dP do not fit one warpgroup's registers) both consumer warpgroups own the same
// 64 rows: one computes S, P and the slopes P (1 - P), the other dP and dS, which it passes back
// through shared memory, and each accumulates a part of dQ's columns. Each row block's dQ is
// stored once, scaled: no atomics, no workspace.
#pragma once

#include "sigattn/bwd_sm90_params.h"
#include "sigattn/hopper_sm90.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/row_blocks_sm90.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/shared_storage.h"
#include "sigattn/sigmoid.cuh"
#include "sigattn/slopes_sm90.cuh"
#include "sigattn/warpgroup_gemm_sm90.cuh"

namespace sigattn {

// Derived sizes for one Cfg (see the generator's traits struct for the parameters).
template <class Cfg>
struct BwdDqSm90Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  // Two consumer warpgroups on the same 64 rows, one per part of dQ's columns; else one per 64
  // rows.
  static constexpr bool kColumnSplit = dq_sm90_column_split(kBM, Cfg::kWarps);
  static constexpr int kConsumers = kColumnSplit ? 2 : kBM / 64;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // The column split's parts: the first warpgroup's whole 64-column blocks, the second's the rest.
  static constexpr int kLeftColumns = kColumnSplit ? dq_sm90_left_columns(kD) : kD;
  static constexpr int kRightColumns = kColumnSplit ? kD - kLeftColumns : kD;
  // Tiles are stored as column blocks of 64 elements (128-byte rows, the swizzle span).
  static constexpr int kSlabs = sm90_column_blocks(kD);
  static constexpr RowBlockSm90Storage kSmem =
      bwd_dq_sm90_storage(kD, kBM, kBN, kStages, Cfg::kDynamicSchedule, kColumnSplit);
  static constexpr int kQBytes = kSmem.q.bytes();              // Q or dO
  static constexpr int kKVBytes = kSmem.k.slot_bytes;          // one K or one V tile
  static constexpr int kSlopeBytes = kSmem.slopes.slot_bytes;  // one slope buffer
  static constexpr int kDsBytes = kSmem.ds.slot_bytes;         // one dS buffer
  static constexpr int kSmemBytes = kSmem.bytes;
  // Registers per thread after setmaxnreg: the producer keeps 40 for the persistent loop and the
  // cp.async loads of tail tiles; each consumer holds dQ (head_dim / 2), S and dP (block_n / 2
  // each) and the dS fragments (block_n / 4), and needs 64 more for addresses and masks. In the
  // column split one holds its part of dQ and S, the other its part, dP and the dS fragments.
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters = 232;
  static constexpr int kHeldRegisters =
      kColumnSplit ? (kLeftColumns / 2 + kBN / 2 > kRightColumns / 2 + kBN / 2 + kBN / 4
                          ? kLeftColumns / 2 + kBN / 2
                          : kRightColumns / 2 + kBN / 2 + kBN / 4)
                   : kD / 2 + kBN + kBN / 4;

  static_assert(kD % 16 == 0 && kD >= 64 && kD <= 256,
                "head_dim must be a multiple of 16 in [64, 256]");
  static_assert(kConsumers == 1 || kConsumers == 2, "block_m must be 64 or 128");
  static_assert(Cfg::kWarps * 32 == kThreads,
                "warps must be 4 per consumer warpgroup plus 4, or 12 for the column split");
  static_assert(kBN % 16 == 0 && kBN >= 16, "block_n must be a multiple of 16");
  static_assert(!kColumnSplit || (kRightColumns > 0 && kRightColumns % 16 == 0),
                "the column split needs a head_dim above one 64-column block per warpgroup");
  static_assert(kHeldRegisters + 64 <= kConsumerRegisters,
                "dQ, S, dP and the dS fragments exceed the consumers' registers");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
  static_assert(128 * (kProducerRegisters + 2 * kConsumerRegisters) <= 65536,
                "register split exceeds the register file");
  static_assert(!Cfg::kSeqLenX128 || (128 % kBM == 0 && 128 % kBN == 0),
                "the x128 length specialization needs block_m and block_n to divide 128");
};

// What a consumer warpgroup computes: dQ of its own 64 rows (kRows), or in the column split, on
// the rows both own, S, P, the slopes and dQ's first columns (kScores) or dP, dS and dQ's other
// columns (kGradients).
enum class DqRole { kRows, kScores, kGradients };

// A consumer warpgroup over every work tile of the CTA in Cfg's schedule: warpgroup c owns rows
// [m0 + 64 (c - 1), +64) of each, or in the column split both own [m0, +64); each warp 16 of them,
// laid out as the mma.sync m16n8 accumulator fragment repeated over the N/8 column blocks.
template <class Cfg, DqRole kRole>
__device__ __forceinline__ void consume_dq(const BwdDqSm90Params& params, unsigned base,
                                           int consumer, int thread) {
  using S = BwdDqSm90Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  // dQ's columns [kColumn0, kColumn0 + kColumns) are this warpgroup's.
  constexpr int kColumns = kRole == DqRole::kScores      ? S::kLeftColumns
                           : kRole == DqRole::kGradients ? S::kRightColumns
                                                         : S::kD;
  constexpr int kColumn0 = kRole == DqRole::kGradients ? S::kLeftColumns : 0;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;
  const unsigned bar_q = base + S::kSmem.bar_q.offset;
  const unsigned bar_q_empty = base + S::kSmem.bar_q_empty.offset;
  const unsigned work_tiles = base + S::kSmem.work_tiles.offset;
  const KvRing kv{base + S::kSmem.k.offset, base + S::kSmem.v.offset,
                  base + S::kSmem.bar_full.offset, base + S::kSmem.bar_empty.offset};
  // The column split's exchange: buffers and barriers alternate over the CTA's K/V tiles.
  const unsigned slopes = base + S::kSmem.slopes.offset;
  const unsigned ds = base + S::kSmem.ds.offset;
  const unsigned bar_slopes_full = base + S::kSmem.bar_slopes_full.offset;
  const unsigned bar_slopes_empty = base + S::kSmem.bar_slopes_empty.offset;
  const unsigned bar_ds_full = base + S::kSmem.bar_ds_full.offset;
  const unsigned bar_ds_empty = base + S::kSmem.bar_ds_empty.offset;
  const int warp = thread / 32;
  const int lane = thread % 32;
  const int rows = kRole == DqRole::kRows ? 64 * consumer : 0;  // the warpgroup's rows, from m0
  const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
  const unsigned q_rows = base + S::kSmem.q.offset + rows * 128;
  const unsigned do_rows = base + S::kSmem.dout.offset + rows * 128;

  float acc_dq[kColumns / 2];
  float acc_s[S::kBN / 2];
  float acc_dp[S::kBN / 2];
  unsigned dsa[S::kBN / 16][4];
  int slope_step = 0;   // the CTA's K/V tiles whose slopes this warpgroup stored or used
  int update_step = 0;  // the CTA's K/V tiles whose dQ update this warpgroup issued

  // S = Q K^T and dP = dO V^T (or the role's one of them) for the tile in `stage`, issued and
  // committed, not waited for.
  auto issue_scores = [&](int stage) {
    wgmma_fence();
    if constexpr (kRole != DqRole::kGradients) {
      wgmma_ss_k_major<kBf16, S::kBN, S::kD, S::kBM, S::kBN>(acc_s, q_rows,
                                                             kv.k + stage * S::kKVBytes);
    }
    if constexpr (kRole != DqRole::kScores) {
      wgmma_ss_k_major<kBf16, S::kBN, S::kD, S::kBM, S::kBN>(acc_dp, do_rows,
                                                             kv.v + stage * S::kKVBytes);
    }
    wgmma_commit();
  };
  // The role's columns of dQ += dS K for the tile in `stage`, issued and committed: dS from the
  // registers, or (kScores) from the other warpgroup's dS buffer, once its last use here is done
  // (the update before completed before this one is issued) and this tile's dS has landed.
  auto issue_dq = [&](int stage) {
    const unsigned k_tile = kv.k + stage * S::kKVBytes;
    if constexpr (kRole == DqRole::kScores) {
      const int g = update_step;
      if (g > 0) mbarrier_arrive(bar_ds_empty + 8 * ((g - 1) & 1));
      mbarrier_wait(bar_ds_full + 8 * (g & 1), (g >> 1) & 1);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < S::kBN / 16; ++kk) {
        Wgmma<kColumns>::template ss<kBf16, 0, 1>(
            acc_dq,
            smem_descriptor(ds + (g & 1) * S::kDsBytes + (kk / 4) * 64 * 128 + (kk % 4) * 32, 16,
                            1024),
            smem_descriptor(k_tile + kk * 16 * 128, S::kBN * 128, 1024), 1);
      }
    } else {
      wgmma_fence();
      wgmma_rs_n_major<kBf16, kColumns, S::kBN>(acc_dq, dsa, k_tile + kColumn0 / 64 * S::kBN * 128);
    }
    wgmma_commit();
    ++update_step;
  };
  // dS fragments from acc_dp = dS; the column split's second warpgroup also stores them for the
  // first, 128-byte swizzled rows of 64 keys (the K-major A operand): fragment dsa[kk][j] holds
  // keys kk * 16 + (j / 2) * 8 + 2 (lane % 4) + {0, 1} of row 16 warp + lane / 4 + 8 (j % 2).
  auto pack_ds = [&] {
    if constexpr (kRole != DqRole::kScores) pack_wgmma_a<kBf16, S::kBN>(dsa, acc_dp);
    if constexpr (kRole == DqRole::kGradients) {
      const int g = slope_step - 1;
      if (g >= 2) mbarrier_wait(bar_ds_empty + 8 * (g & 1), ((g >> 1) - 1) & 1);
      const unsigned buffer = ds + (g & 1) * S::kDsBytes;
#pragma unroll
      for (int kk = 0; kk < S::kBN / 16; ++kk) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int chunk = 2 * kk + j / 2;  // 8-key chunk of the row
          const unsigned address = buffer + (chunk / 8) * 64 * 128 +
                                   swizzled_offset(16 * warp + lane / 4 + 8 * (j % 2), chunk % 8) +
                                   4 * (lane % 4);
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(dsa[kk][j]) : "memory");
        }
      }
      fence_proxy_async();
      mbarrier_arrive(bar_ds_full + 8 * (g & 1));
    }
  };

  const Turns<S::kConsumers == 2 && !S::kColumnSplit> turns{consumer};
  turns.begin();
  unsigned q_parity = 0;  // phase of the next Q and dO
  RingPosition<S::kStages> ring;
  // The work tile at `index` of the strided schedule, or the one `published` in the dynamic one:
  // derived again where used in the strided schedule rather than kept in registers through the
  // main loop; kept in the dynamic one, whose slot the producer writes again while the tile's
  // epilogue may still run.
  const auto tile_of = [&](int index, const WorkTile& published) {
    if constexpr (Cfg::kDynamicSchedule) {
      return published;
    } else {
      return strided_work_tile<Cfg>(p, index);
    }
  };
  // One work tile. In the strided schedule it waits for its Q and dO here, when it has keys to
  // visit; in the dynamic one they were waited for with its publication, and a tile with no keys to
  // visit releases them at once.
  const auto run_tile = [&](int index, const WorkTile& published) {
#pragma unroll
    for (int i = 0; i < kColumns / 2; ++i) acc_dq[i] = 0.0f;
    const RowBlockWork w = describe_row_block<Cfg>(p, tile_of(index, published));
    if (w.tile_end > w.tile_begin) {
      const int wg_row0 = w.m0 + rows;                  // first row of the warpgroup
      const int row0 = wg_row0 + 16 * warp + lane / 4;  // this thread's rows: row0 and row0 + 8
      const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, w.seq);
      const float bias = sequence_bias(p, w.seq);
      const float shift_bias = sigmoid.shift(bias);
      const float* score_mod =
          Cfg::kScoreMod ? p.score_mod + w.batch * p.score_mod_batch_stride : nullptr;
      // acc_dp <- dS = dP P (1 - P), P = sigma(scale * S + bias + score_mod), zero where the
      // masks hide the key; in the column split the slopes P (1 - P) pass between the
      // warpgroups.
      auto scores_to_ds = [&](int tile) {
        const int g = slope_step++;
        const unsigned buffer = slopes + (g & 1) * S::kSlopeBytes;
        if constexpr (kRole == DqRole::kGradients) {
          fence_operands(acc_dp);
          mbarrier_wait(bar_slopes_full + 8 * (g & 1), (g >> 1) & 1);
          multiply_by_slopes<S::kBN>(acc_dp, buffer, thread);
          mbarrier_arrive(bar_slopes_empty + 8 * (g & 1));
          return;
        }
        fence_operands(acc_s);
        if constexpr (kRole == DqRole::kRows) fence_operands(acc_dp);
        for_each_probability<Cfg>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, w.seq.len_k,
                                  wg_row0, row0, tile * S::kBN, lane, [&](int i, float prob) {
                                    if constexpr (kRole == DqRole::kRows) {
                                      acc_dp[i] *= sigmoid_slope(prob);
                                    } else {
                                      acc_s[i] = prob;
                                    }
                                  });
        if constexpr (kRole == DqRole::kScores) {
          if (g >= 2) mbarrier_wait(bar_slopes_empty + 8 * (g & 1), ((g >> 1) - 1) & 1);
          store_slopes<S::kBN>(buffer, acc_s, thread);
          mbarrier_arrive(bar_slopes_full + 8 * (g & 1));
        }
      };

      // S and dP of the next tile and the dQ update of this one in flight while the next tile's
      // sigmoid runs.
      if constexpr (!Cfg::kDynamicSchedule) wait_row_tiles(bar_q, q_parity);
      consume_row_block(w, kv, bar_q_empty, ring, turns, lane, acc_dq, issue_scores, scores_to_ds,
                        pack_ds, issue_dq);
    } else if constexpr (Cfg::kDynamicSchedule) {
      release_row_tiles(bar_q_empty, lane);
    }

    // Epilogue: the warpgroup's columns of dQ = scale dS K; rows past len_q are zeros in the
    // padded layout and absent in varlen.
    const RowBlockWork e = describe_row_block<Cfg>(p, tile_of(index, published));
    store_fragment_rows<kBf16, kColumns>(
        static_cast<unsigned short*>(bp.dq) +
            e.seq.q_offset(bp.dq_batch_stride, bp.dq_seq_stride, e.batch) +
            e.head * bp.dq_head_stride + e.m0 * bp.dq_seq_stride + kColumn0,
        bp.dq_seq_stride, acc_dq, p.scale, rows + 16 * warp + lane / 4, e.seq.len_q - e.m0,
        (kLayout == Layout::kVarlen ? e.seq.len_q : p.max_seqlen_q) - e.m0, lane);
  };
  // Every work tile of the CTA in Cfg's schedule. (In a helper shared with the other kernel, this
  // loop compiled to other code for the strided schedule.)
  if constexpr (Cfg::kDynamicSchedule) {
    for (int t = 0;; ++t) {
      const WorkTile tile = next_published_tile(work_tiles, t, bar_q, q_parity);
      if (tile.batch < 0) break;
      run_tile(t, tile);
    }
  } else {
    for (int index = blockIdx.x; index < row_block_work_tiles<S::kBM>(p); index += gridDim.x) {
      run_tile(index, WorkTile{});
    }
  }
  turns.end();
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    bwd_dq_sm90_kernel(const __grid_constant__ BwdDqSm90Params params) {
  using S = BwdDqSm90Shape<Cfg>;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;

  extern __shared__ unsigned char smem_raw[];
  const unsigned base = sm90_smem_base(smem_raw);
  const unsigned smem_q = base + S::kSmem.q.offset;
  const unsigned smem_do = base + S::kSmem.dout.offset;
  const unsigned bar_q = base + S::kSmem.bar_q.offset;  // Q and dO landed
  // The consumers are done with Q and dO.
  const unsigned bar_q_empty = base + S::kSmem.bar_q_empty.offset;
  const unsigned work_tiles = base + S::kSmem.work_tiles.offset;  // dynamic schedule only
  const KvRing kv{base + S::kSmem.k.offset, base + S::kSmem.v.offset,
                  base + S::kSmem.bar_full.offset, base + S::kSmem.bar_empty.offset};

  const int tid = threadIdx.x;
  if (S::kColumnSplit && tid == 0) {
    // Each of the exchange's barriers completes when all 128 threads of one warpgroup arrived.
    for (int b = 0; b < 2; ++b) {
      mbarrier_init(base + S::kSmem.bar_slopes_full.offset + 8 * b, 128);
      mbarrier_init(base + S::kSmem.bar_slopes_empty.offset + 8 * b, 128);
      mbarrier_init(base + S::kSmem.bar_ds_full.offset + 8 * b, 128);
      mbarrier_init(base + S::kSmem.bar_ds_empty.offset + 8 * b, 128);
    }
  }
  init_row_block_barriers<S::kStages, S::kConsumers>(kv, bar_q, bar_q_empty, tid);

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // Producer, as in the forward: thread 0 issues every TMA load, the whole warpgroup loads the
    // tiles that cross the end of a padded or packed sequence, and the ring runs on across work
    // tiles.
    setmaxnreg_decrease<S::kProducerRegisters>();
    const bool leader = tid == 0;
    if (leader) {
      prefetch_tma_descriptor(&params.q);
      prefetch_tma_descriptor(&params.dout);
      prefetch_tma_descriptor(&params.k);
      prefetch_tma_descriptor(&params.v);
    }
    unsigned q_free_parity = 1;  // the consumers released the previous Q and dO (none at first)
    RingPosition<S::kStages> ring;
    // Each work tile's Q and dO, then its K/V tiles; each part derives the tile's geometry
    // itself, so that no more than the loop's position stays in registers between them.
    const auto load_q_do = [&](const WorkTile& tile) {
      const RowBlockWork w = describe_row_block<Cfg>(p, tile);
      if (w.tile_end <= w.tile_begin) return false;
      const auto tma = [&](int row, int batch_coord) {
#pragma unroll
        for (int slab = 0; slab < S::kSlabs; ++slab) {
          tma_load_4d(smem_q + slab * S::kBM * 128, &params.q, bar_q, slab * 64, row, w.head,
                      batch_coord);
          tma_load_4d(smem_do + slab * S::kBM * 128, &params.dout, bar_q, slab * 64, row, w.head,
                      batch_coord);
        }
      };
      const auto copy_tail = [&] {
        const unsigned short* q = static_cast<const unsigned short*>(p.q) + w.seq.q_start +
                                  w.head * p.q_head_stride + w.m0 * p.q_seq_stride;
        load_tile_swizzled<S::kD, S::kBM>(smem_q, q, p.q_seq_stride, w.seq.len_q - w.m0, tid);
        const unsigned short* dout = static_cast<const unsigned short*>(bp.dout) +
                                     w.seq.q_offset(bp.do_batch_stride, bp.do_seq_stride, w.batch) +
                                     w.head * bp.do_head_stride + w.m0 * bp.do_seq_stride;
        load_tile_swizzled<S::kD, S::kBM>(smem_do, dout, bp.do_seq_stride, w.seq.len_q - w.m0, tid);
      };
      load_row_tiles<Cfg>(w, bar_q, bar_q_empty, q_free_parity, 2 * S::kQBytes, leader, tma,
                          copy_tail);
      return true;
    };
    produce_row_blocks<Cfg>(p, params.tile_counter, &params.k, &params.v, work_tiles, bar_q,
                            bar_q_empty, q_free_parity, kv, ring, tid, load_q_do);
    return;
  }

  // Consumers.
  setmaxnreg_increase<S::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int thread = tid - 128 * warpgroup;
  if constexpr (!S::kColumnSplit) {
    consume_dq<Cfg, DqRole::kRows>(params, base, consumer, thread);
  } else if (consumer == 0) {
    consume_dq<Cfg, DqRole::kScores>(params, base, consumer, thread);
  } else {
    consume_dq<Cfg, DqRole::kGradients>(params, base, consumer, thread);
  }
}

}  // namespace sigattn
