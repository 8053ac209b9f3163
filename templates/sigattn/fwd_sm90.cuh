// The Hopper forward kernel (sm_90a), persistent: each CTA walks work tiles (query row block,
// head, batch), in the strided or the dynamic schedule (tile_scheduler.cuh). One producer warpgroup
// loads each tile's Q and its K/V tiles into a multi-stage shared-memory ring with TMA (128-byte
// swizzle, completion on mbarriers), running ahead into the next work tile while the consumers
// finish this one; each of block_m / 64 consumer warpgroups owns 64 query rows, computes S = Q K^T
// with wgmma from shared memory, P = sigma(S) in registers, and O += P V with P as the register A
// operand. The QK^T of tile j+1 and the PV of tile j are in flight while the sigmoid of tile j+1
// runs, and two consumer warpgroups alternate their GEMMs (ping-pong). Sigmoid attention needs no
// running max, no rescaling and no row sum.
#pragma once

#include "sigattn/fwd_sm90_params.h"
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
struct FwdSm90Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kBM = Cfg::kBlockM;
  static constexpr int kBN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kConsumers = kBM / 64;  // consumer warpgroups, 64 query rows each
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Tiles are stored as column blocks of 64 elements (128-byte rows, the swizzle span).
  static constexpr int kSlabs = sm90_column_blocks(kD);
  static constexpr RowBlockSm90Storage kSmem =
      fwd_sm90_storage(kD, kBM, kBN, kStages, Cfg::kDynamicSchedule);
  static constexpr int kQBytes = kSmem.q.bytes();
  static constexpr int kKVBytes = kSmem.k.slot_bytes;  // one K or one V tile
  static constexpr int kSmemBytes = kSmem.bytes;
  // Registers per thread after setmaxnreg: the producer gives its share to the consumers. Up to
  // head_dim 128 it keeps 40, which the persistent loop and the cp.async loads of tail tiles need
  // to run without spills; above, the consumers' accumulators need every register it can spare.
  static constexpr int kProducerRegisters = kD > 128 ? 24 : 40;
  static constexpr int kConsumerRegisters =
      kConsumers == 3 ? (kD > 128 ? 160 : 152) : (kD > 128 ? 240 : 232);

  static_assert(kD % 16 == 0 && kD >= 64 && kD <= 256,
                "head_dim must be a multiple of 16 in [64, 256]");
  static_assert(kBM % 64 == 0 && kConsumers >= 1 && kConsumers <= 3,
                "block_m must be 64, 128 or 192");
  static_assert(Cfg::kWarps * 32 == kThreads, "warps must be 4 per consumer warpgroup plus 4");
  static_assert(kBN % 16 == 0 && kBN >= 16 && kBN <= 256,
                "block_n must be a multiple of 16 in [16, 256]");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
  static_assert(128 * (kProducerRegisters + kConsumers * kConsumerRegisters) <= 65536,
                "register split exceeds the register file");
  static_assert(!Cfg::kSeqLenX128 || (128 % kBM == 0 && 128 % kBN == 0),
                "the x128 length specialization needs block_m and block_n to divide 128");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    fwd_sm90_kernel(const __grid_constant__ FwdSm90Params params) {
  using S = FwdSm90Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  const FwdParams& p = params.base;

  extern __shared__ unsigned char smem_raw[];
  const unsigned base = sm90_smem_base(smem_raw);
  const unsigned smem_q = base + S::kSmem.q.offset;
  const unsigned bar_q = base + S::kSmem.bar_q.offset;              // Q landed
  const unsigned bar_q_empty = base + S::kSmem.bar_q_empty.offset;  // the consumers are done with Q
  const unsigned work_tiles = base + S::kSmem.work_tiles.offset;    // dynamic schedule only
  const KvRing kv{base + S::kSmem.k.offset, base + S::kSmem.v.offset,
                  base + S::kSmem.bar_full.offset, base + S::kSmem.bar_empty.offset};

  const int tid = threadIdx.x;
  init_row_block_barriers<S::kStages, S::kConsumers>(kv, bar_q, bar_q_empty, tid);

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // Producer. Thread 0 issues every TMA load; the whole warpgroup loads the tiles that cross
    // the end of a padded or packed sequence (load_row_tiles, load_kv_tiles). The ring position
    // runs on across work tiles, so the next tile's Q and K/V load while the consumers finish
    // this one.
    setmaxnreg_decrease<S::kProducerRegisters>();
    const bool leader = tid == 0;
    if (leader) {
      prefetch_tma_descriptor(&params.q);
      prefetch_tma_descriptor(&params.k);
      prefetch_tma_descriptor(&params.v);
    }
    unsigned q_free_parity = 1;  // the consumers released the previous Q (none at first)
    RingPosition<S::kStages> ring;
    // Each work tile's Q, then its K/V tiles; each part derives the tile's geometry itself, so
    // that no more than the loop's position stays in registers between them.
    const auto load_q = [&](const WorkTile& tile) {
      const RowBlockWork w = describe_row_block<Cfg>(p, tile);
      if (w.tile_end <= w.tile_begin) return false;
      const auto tma = [&](int row, int batch_coord) {
#pragma unroll
        for (int slab = 0; slab < S::kSlabs; ++slab) {
          tma_load_4d(smem_q + slab * S::kBM * 128, &params.q, bar_q, slab * 64, row, w.head,
                      batch_coord);
        }
      };
      const auto copy_tail = [&] {
        const unsigned short* q = static_cast<const unsigned short*>(p.q) + w.seq.q_start +
                                  w.head * p.q_head_stride + w.m0 * p.q_seq_stride;
        load_tile_swizzled<S::kD, S::kBM>(smem_q, q, p.q_seq_stride, w.seq.len_q - w.m0, tid);
      };
      load_row_tiles<Cfg>(w, bar_q, bar_q_empty, q_free_parity, S::kQBytes, leader, tma, copy_tail);
      return true;
    };
    produce_row_blocks<Cfg>(p, params.tile_counter, &params.k, &params.v, work_tiles, bar_q,
                            bar_q_empty, q_free_parity, kv, ring, tid, load_q);
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

  float acc_o[S::kD / 2];
  float acc_s[S::kBN / 2];
  unsigned pa[S::kBN / 16][4];

  // S = Q K^T for the tile in `stage`, issued and committed, not waited for.
  auto issue_scores = [&](int stage) {
    wgmma_fence();
    wgmma_ss_k_major<kBf16, S::kBN, S::kD, S::kBM, S::kBN>(acc_s, q_rows,
                                                           kv.k + stage * S::kKVBytes);
    wgmma_commit();
  };
  // O += P V for the tile in `stage`, issued and committed.
  auto issue_values = [&](int stage) {
    wgmma_fence();
    wgmma_rs_n_major<kBf16, S::kD, S::kBN>(acc_o, pa, kv.v + stage * S::kKVBytes);
    wgmma_commit();
  };
  auto pack_probs = [&] { pack_wgmma_a<kBf16, S::kBN>(pa, acc_s); };

  // The two consumer warpgroups alternate their GEMMs, so that one runs its sigmoid while the
  // other's GEMMs hold the tensor cores.
  const Turns<S::kConsumers == 2> turns{consumer};
  turns.begin();
  unsigned q_parity = 0;  // phase of the next Q
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
  // One work tile. In the strided schedule it waits for its Q here, when it has keys to visit;
  // in the dynamic one Q was waited for with the tile's publication, and a tile with no keys to
  // visit releases it at once.
  const auto run_tile = [&](int index, const WorkTile& published) {
#pragma unroll
    for (int i = 0; i < S::kD / 2; ++i) acc_o[i] = 0.0f;
    const RowBlockWork w = describe_row_block<Cfg>(p, tile_of(index, published));
    if (w.tile_end > w.tile_begin) {
      const int wg_row0 = w.m0 + 64 * consumer;         // first row of the warpgroup
      const int row0 = wg_row0 + 16 * warp + lane / 4;  // this thread's rows: row0 and row0 + 8
      const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, w.seq);
      const float bias = sequence_bias(p, w.seq);
      const float shift_bias = sigmoid.shift(bias);
      const float* score_mod =
          Cfg::kScoreMod ? p.score_mod + w.batch * p.score_mod_batch_stride : nullptr;
      // acc_s <- sigma(scale * S + bias + score_mod), zero where the masks hide the key.
      auto scores_to_probs = [&](int tile) {
        fence_operands(acc_s);
        for_each_probability<Cfg>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, w.seq.len_k,
                                  wg_row0, row0, tile * S::kBN, lane,
                                  [&](int i, float prob) { acc_s[i] = prob; });
      };

      // QK^T of the next tile and PV of this one in flight while the next tile's sigmoid runs.
      if constexpr (!Cfg::kDynamicSchedule) wait_row_tiles(bar_q, q_parity);
      consume_row_block(w, kv, bar_q_empty, ring, turns, lane, acc_o, issue_scores, scores_to_probs,
                        pack_probs, issue_values);
    } else if constexpr (Cfg::kDynamicSchedule) {
      release_row_tiles(bar_q_empty, lane);
    }

    // Epilogue: rows past len_q are zeros in the padded layout and absent in varlen.
    const RowBlockWork e = describe_row_block<Cfg>(p, tile_of(index, published));
    store_fragment_rows<kBf16, S::kD>(
        static_cast<unsigned short*>(p.o) + e.seq.o_start + e.head * p.o_head_stride +
            e.m0 * p.o_seq_stride,
        p.o_seq_stride, acc_o, 1.0f, 64 * consumer + 16 * warp + lane / 4, e.seq.len_q - e.m0,
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
