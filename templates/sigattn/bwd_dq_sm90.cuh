// The Hopper dQ kernel of the deterministic backward (sm_90a), persistent like the forward:
// each CTA walks work tiles (query row block, head, batch) in the strided or the dynamic schedule.
// One producer warpgroup loads each tile's Q and dO and streams its K/V tiles through a multi-stage
// ring with TMA; each of block_m / 64 consumer warpgroups owns 64 query rows and per K/V tile
// computes S = Q K^T and dP = dO V^T with wgmma from shared memory, dS = dP P (1 - P) with P =
// sigma(S) in registers, and dQ += dS K with dS as the register A operand. The S and dP of tile j+1
// and the dQ update of tile j are in flight while tile j+1's sigmoid runs, and two consumer
// warpgroups alternate their GEMMs. Each row block's dQ is stored once, scaled: no atomics, no
// workspace.
#pragma once

#include "sigattn/bwd_sm90_params.h"
#include "sigattn/hopper_sm90.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/row_blocks_sm90.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/shared_storage.h"
#include "sigattn/sigmoid.cuh"
#include "sigattn/warpgroup_gemm_sm90.cuh"

namespace sigattn {

// Derived sizes for one Cfg (see the generator's traits struct for the parameters).
template <class Cfg>
struct BwdDqSm90Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kConsumers = kBM / 64;  // consumer warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Tiles are stored as column blocks of 64 elements (128-byte rows, the swizzle span).
  static constexpr int kSlabs = sm90_column_blocks(kD);
  static constexpr RowBlockSm90Storage kSmem =
      bwd_dq_sm90_storage(kD, kBM, kBN, kStages, Cfg::kDynamicSchedule);
  static constexpr int kQBytes = kSmem.q.bytes();      // Q or dO
  static constexpr int kKVBytes = kSmem.k.slot_bytes;  // one K or one V tile
  static constexpr int kSmemBytes = kSmem.bytes;
  // Registers per thread after setmaxnreg: the producer keeps 40 for the persistent loop and the
  // cp.async loads of tail tiles; each consumer holds dQ (head_dim / 2), S and dP (block_n / 2
  // each) and the dS fragments (block_n / 4), and needs 64 more for addresses and masks.
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters = 232;

  static_assert(kD % 16 == 0 && kD >= 64 && kD <= 256,
                "head_dim must be a multiple of 16 in [64, 256]");
  static_assert(kConsumers == 1 || kConsumers == 2, "block_m must be 64 or 128");
  static_assert(Cfg::kWarps * 32 == kThreads, "warps must be 4 per consumer warpgroup plus 4");
  static_assert(kBN % 16 == 0 && kBN >= 16, "block_n must be a multiple of 16");
  static_assert(kD / 2 + kBN + kBN / 4 + 64 <= kConsumerRegisters,
                "dQ, S, dP and the dS fragments exceed the consumers' registers");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
  static_assert(128 * (kProducerRegisters + 2 * kConsumerRegisters) <= 65536,
                "register split exceeds the register file");
  static_assert(!Cfg::kSeqLenX128 || (128 % kBM == 0 && 128 % kBN == 0),
                "the x128 length specialization needs block_m and block_n to divide 128");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    bwd_dq_sm90_kernel(const __grid_constant__ BwdDqSm90Params params) {
  using S = BwdDqSm90Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
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

  // Consumers: warpgroup c owns rows [m0 + 64 (c - 1), +64) of each work tile; each warp 16 of
  // them, laid out as the mma.sync m16n8 accumulator fragment repeated over the N/8 column blocks.
  setmaxnreg_increase<S::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int thread = tid - 128 * warpgroup;
  const int warp = thread / 32;
  const int lane = thread % 32;
  const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
  const unsigned q_rows = smem_q + consumer * 64 * 128;
  const unsigned do_rows = smem_do + consumer * 64 * 128;

  float acc_dq[S::kD / 2];
  float acc_s[S::kBN / 2];
  float acc_dp[S::kBN / 2];
  unsigned dsa[S::kBN / 16][4];

  // S = Q K^T and dP = dO V^T for the tile in `stage`, issued and committed, not waited for.
  auto issue_scores = [&](int stage) {
    wgmma_fence();
    wgmma_ss_k_major<kBf16, S::kBN, S::kD, S::kBM, S::kBN>(acc_s, q_rows,
                                                           kv.k + stage * S::kKVBytes);
    wgmma_ss_k_major<kBf16, S::kBN, S::kD, S::kBM, S::kBN>(acc_dp, do_rows,
                                                           kv.v + stage * S::kKVBytes);
    wgmma_commit();
  };
  // dQ += dS K for the tile in `stage`, issued and committed.
  auto issue_dq = [&](int stage) {
    wgmma_fence();
    wgmma_rs_n_major<kBf16, S::kD, S::kBN>(acc_dq, dsa, kv.k + stage * S::kKVBytes);
    wgmma_commit();
  };
  auto pack_ds = [&] { pack_wgmma_a<kBf16, S::kBN>(dsa, acc_dp); };

  // The two consumer warpgroups alternate their GEMMs, so that one computes dS while the other's
  // GEMMs hold the tensor cores.
  const Turns<S::kConsumers == 2> turns{consumer};
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
    for (int i = 0; i < S::kD / 2; ++i) acc_dq[i] = 0.0f;
    const RowBlockWork w = describe_row_block<Cfg>(p, tile_of(index, published));
    if (w.tile_end > w.tile_begin) {
      const int wg_row0 = w.m0 + 64 * consumer;         // first row of the warpgroup
      const int row0 = wg_row0 + 16 * warp + lane / 4;  // this thread's rows: row0 and row0 + 8
      const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, w.seq);
      const float bias = sequence_bias(p, w.seq);
      const float shift_bias = sigmoid.shift(bias);
      const float* score_mod =
          Cfg::kScoreMod ? p.score_mod + w.batch * p.score_mod_batch_stride : nullptr;
      // acc_dp <- dS = dP P (1 - P), P = sigma(scale * S + bias + score_mod), zero where the
      // masks hide the key.
      auto scores_to_ds = [&](int tile) {
        fence_operands(acc_s);
        fence_operands(acc_dp);
        for_each_probability<Cfg>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, w.seq.len_k,
                                  wg_row0, row0, tile * S::kBN, lane,
                                  [&](int i, float prob) { acc_dp[i] *= sigmoid_slope(prob); });
      };

      // S and dP of the next tile and the dQ update of this one in flight while the next tile's
      // sigmoid runs.
      if constexpr (!Cfg::kDynamicSchedule) wait_row_tiles(bar_q, q_parity);
      consume_row_block(w, kv, bar_q_empty, ring, turns, lane, acc_dq, issue_scores, scores_to_ds,
                        pack_ds, issue_dq);
    } else if constexpr (Cfg::kDynamicSchedule) {
      release_row_tiles(bar_q_empty, lane);
    }

    // Epilogue: dQ = scale dS K; rows past len_q are zeros in the padded layout and absent in
    // varlen.
    const RowBlockWork e = describe_row_block<Cfg>(p, tile_of(index, published));
    store_fragment_rows<kBf16, S::kD>(
        static_cast<unsigned short*>(bp.dq) +
            e.seq.q_offset(bp.dq_batch_stride, bp.dq_seq_stride, e.batch) +
            e.head * bp.dq_head_stride + e.m0 * bp.dq_seq_stride,
        bp.dq_seq_stride, acc_dq, p.scale, 64 * consumer + 16 * warp + lane / 4, e.seq.len_q - e.m0,
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

}  // namespace sigattn
