// The Hopper dQ kernel of the deterministic backward (sm_90a), persistent like the forward:
// each CTA walks work tiles (query row block, head, batch). One producer warpgroup loads each
// tile's Q and dO and streams its K/V tiles through a multi-stage ring with TMA; each of
// block_m / 64 consumer warpgroups owns 64 query rows and per K/V tile computes S = Q K^T and
// dP = dO V^T with wgmma from shared memory, dS = dP P (1 - P) with P = sigma(S) in registers,
// and dQ += dS K with dS as the register A operand. The S and dP of tile j+1 and the dQ update
// of tile j are in flight while tile j+1's sigmoid runs, and two consumer warpgroups alternate
// their GEMMs. Each row block's dQ is stored once, scaled: no atomics, no workspace.
#pragma once

#include "sigattn/bwd_sm90_params.h"
#include "sigattn/hopper_sm90.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/sigmoid.cuh"
#include "sigattn/tile_scheduler.cuh"
#include "sigattn/wgmma_sm90.cuh"

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
  static constexpr int kSlabs = (kD + 63) / 64;
  static constexpr int kQBytes = kSlabs * kBM * 128;   // Q or dO
  static constexpr int kKVBytes = kSlabs * kBN * 128;  // one K or one V tile
  // 1024 bytes of slack align the tiles to the 1024-byte swizzle atom; the mbarriers (at most
  // 10 of 8 bytes) follow the tiles in 128 bytes.
  static constexpr int kSmemBytes = 1024 + 2 * kQBytes + 2 * kStages * kKVBytes + 128;
  // Registers per thread after setmaxnreg: the producer keeps 40 for the persistent loop and the
  // cp.async loads of tail tiles; each consumer holds dQ (head_dim / 2), S and dP (block_n / 2
  // each) and the dS fragments (block_n / 4), and needs 64 more for addresses and masks.
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters = 232;

  static_assert(kD == 64 || kD == 128, "head_dim must be 64 or 128");
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
  constexpr bool kChecked = !Cfg::kSeqLenX128;
  using Mask = KeyMask<Cfg::kCausal, Cfg::kWindow>;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;

  extern __shared__ unsigned char smem_raw[];
  const unsigned smem_q = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const unsigned smem_do = smem_q + S::kQBytes;
  const unsigned smem_k = smem_do + S::kQBytes;  // stage s at smem_k + s * kKVBytes
  const unsigned smem_v = smem_k + S::kStages * S::kKVBytes;
  // Stage s at + 8 s: K and V landed.
  const unsigned bar_full = smem_v + S::kStages * S::kKVBytes;
  const unsigned bar_empty = bar_full + 8 * S::kStages;  // stage s: consumers are done with it
  const unsigned bar_q = bar_full + 16 * S::kStages;     // Q and dO landed
  const unsigned bar_q_empty = bar_q + 8;                // the consumers are done with Q and dO

  const int tid = threadIdx.x;
  // Sizes of the schedule, derived from the parameters where used rather than kept in registers
  // through the loops (the producer has few).
  const auto row_blocks = [&] { return (p.max_seqlen_q + S::kBM - 1) / S::kBM; };
  const auto work_tiles = [&] { return row_blocks() * p.heads_q * p.batch; };

  // The rows of work tile `index` and the K/V tiles [tile_begin, tile_end) holding the keys some
  // valid row of them sees. Producer and consumers derive the same ranges.
  struct Work {
    SeqInfo seq;
    int m0, head, batch, tile_begin, tile_end;
  };
  const auto describe = [&](int index) {
    const WorkTile tile = work_tile<Cfg::kCausal>(index, row_blocks(), p.heads_q);
    Work w;
    w.seq = sequence_info<kLayout>(p, tile.batch);
    w.m0 = tile.block * S::kBM;
    w.head = tile.head;
    w.batch = tile.batch;
    const Mask mask(p, w.seq);
    const int row_hi = min(w.m0 + S::kBM, w.seq.len_q) - 1;
    int key_lo = 0, key_hi = 0;  // keys [key_lo, key_hi) visible to some valid row of the block
    if (row_hi >= w.m0) {
      key_lo = mask.key_begin(w.m0);
      key_hi = mask.key_end(row_hi);
    }
    w.tile_begin = key_lo / S::kBN;
    w.tile_end = key_hi > key_lo ? (key_hi + S::kBN - 1) / S::kBN : w.tile_begin;
    return w;
  };

  if (tid == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      mbarrier_init(bar_full + 8 * s, 1);
      mbarrier_init(bar_empty + 8 * s, 4 * S::kConsumers);
    }
    mbarrier_init(bar_q, 1);
    mbarrier_init(bar_q_empty, 4 * S::kConsumers);
    fence_barrier_init();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // Producer. Thread 0 issues every TMA load; the whole warpgroup loads the tiles that cross
    // the end of a padded or packed sequence. Only the leader tracks the barriers' phases (a
    // parity wait cannot tell a phase from the one two later); named barrier 1 passes a free
    // buffer on to the rest of the warpgroup. The ring position runs on across work tiles, so
    // the next tile's Q, dO and K/V load while the consumers finish this one.
    setmaxnreg_decrease<S::kProducerRegisters>();
    const bool leader = tid == 0;
    const bool packed = kLayout == Layout::kVarlen;
    if (leader) {
      prefetch_tma_descriptor(&params.q);
      prefetch_tma_descriptor(&params.dout);
      prefetch_tma_descriptor(&params.k);
      prefetch_tma_descriptor(&params.v);
    }
    unsigned q_free_parity = 1;  // the consumers released the previous Q (none at first)
    RingPosition<S::kStages> ring;
    // Each work tile's Q and dO, then its K/V tiles; each part derives the tile's geometry itself,
    // so that no more than the loop's position stays in registers between them.
    const auto load_q = [&](int index) {
      const Work w = describe(index);
      if (w.tile_end <= w.tile_begin) return false;
      const int batch_coord = packed ? 0 : w.batch;
      if (kLayout == Layout::kDense || w.m0 + S::kBM <= w.seq.len_q) {
        if (leader) {
          mbarrier_wait(bar_q_empty, q_free_parity);
          mbarrier_arrive_expect_tx(bar_q, 2 * S::kQBytes);
          const int row = static_cast<int>(w.seq.q_token0) + w.m0;
#pragma unroll
          for (int slab = 0; slab < S::kSlabs; ++slab) {
            tma_load_4d(smem_q + slab * S::kBM * 128, &params.q, bar_q, slab * 64, row, w.head,
                        batch_coord);
            tma_load_4d(smem_do + slab * S::kBM * 128, &params.dout, bar_q, slab * 64, row, w.head,
                        batch_coord);
          }
        }
      } else {
        if (leader) mbarrier_wait(bar_q_empty, q_free_parity);
        named_barrier_sync(1, 128);
        const unsigned short* q = static_cast<const unsigned short*>(p.q) + w.seq.q_start +
                                  w.head * p.q_head_stride + w.m0 * p.q_seq_stride;
        load_tile_swizzled<S::kD, S::kBM>(smem_q, q, p.q_seq_stride, w.seq.len_q - w.m0, tid);
        const unsigned short* dout = static_cast<const unsigned short*>(bp.dout) +
                                     w.seq.q_offset(bp.do_batch_stride, bp.do_seq_stride, w.batch) +
                                     w.head * bp.do_head_stride + w.m0 * bp.do_seq_stride;
        load_tile_swizzled<S::kD, S::kBM>(smem_do, dout, bp.do_seq_stride, w.seq.len_q - w.m0, tid);
        fence_proxy_async();
        named_barrier_sync(1, 128);
        if (leader) mbarrier_arrive(bar_q);
      }
      q_free_parity ^= 1;
      return true;
    };
    const auto load_kv = [&](int index) {
      const Work w = describe(index);
      const int batch_coord = packed ? 0 : w.batch;
      const int head_kv = w.head / (p.heads_q / p.heads_kv);
      // Whole K/V tiles by TMA, then at most one that crosses the sequence's end (the last).
      const int whole_end = kLayout == Layout::kDense
                                ? w.tile_end
                                : max(w.tile_begin, min(w.tile_end, w.seq.len_k / S::kBN));
      if (leader) {
        const int row0 = static_cast<int>(w.seq.k_token0);
        for (int tile = w.tile_begin; tile < whole_end; ++tile, ring.advance()) {
          mbarrier_wait(bar_empty + 8 * ring.stage, ring.phase ^ 1);
          mbarrier_arrive_expect_tx(bar_full + 8 * ring.stage, 2 * S::kKVBytes);
#pragma unroll
          for (int slab = 0; slab < S::kSlabs; ++slab) {
            const unsigned offset = ring.stage * S::kKVBytes + slab * S::kBN * 128;
            tma_load_4d(smem_k + offset, &params.k, bar_full + 8 * ring.stage, slab * 64,
                        row0 + tile * S::kBN, head_kv, batch_coord);
            tma_load_4d(smem_v + offset, &params.v, bar_full + 8 * ring.stage, slab * 64,
                        row0 + tile * S::kBN, head_kv, batch_coord);
          }
        }
      } else {
        ring.advance(whole_end - w.tile_begin);
      }
      if (whole_end < w.tile_end) {
        const int n0 = whole_end * S::kBN;
        if (leader) mbarrier_wait(bar_empty + 8 * ring.stage, ring.phase ^ 1);
        named_barrier_sync(1, 128);
        const unsigned short* k = static_cast<const unsigned short*>(p.k) + w.seq.k_start +
                                  head_kv * p.k_head_stride + n0 * p.k_seq_stride;
        const unsigned short* v = static_cast<const unsigned short*>(p.v) + w.seq.k_start +
                                  head_kv * p.v_head_stride + n0 * p.v_seq_stride;
        load_tile_swizzled<S::kD, S::kBN>(smem_k + ring.stage * S::kKVBytes, k, p.k_seq_stride,
                                          w.seq.len_k - n0, tid);
        load_tile_swizzled<S::kD, S::kBN>(smem_v + ring.stage * S::kKVBytes, v, p.v_seq_stride,
                                          w.seq.len_k - n0, tid);
        fence_proxy_async();
        named_barrier_sync(1, 128);
        if (leader) mbarrier_arrive(bar_full + 8 * ring.stage);
        ring.advance();
      }
    };
    for (int index = blockIdx.x; index < work_tiles(); index += gridDim.x) {
      if (load_q(index)) load_kv(index);
    }
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
#pragma unroll
    for (int kk = 0; kk < S::kD / 16; ++kk) {
      const unsigned long long desc_q =
          smem_descriptor(q_rows + (kk / 4) * S::kBM * 128 + (kk % 4) * 32, 16, 1024);
      const unsigned long long desc_k = smem_descriptor(
          smem_k + stage * S::kKVBytes + (kk / 4) * S::kBN * 128 + (kk % 4) * 32, 16, 1024);
      Wgmma<S::kBN>::template ss<kBf16>(acc_s, desc_q, desc_k, kk > 0 ? 1 : 0);
    }
#pragma unroll
    for (int kk = 0; kk < S::kD / 16; ++kk) {
      const unsigned long long desc_do =
          smem_descriptor(do_rows + (kk / 4) * S::kBM * 128 + (kk % 4) * 32, 16, 1024);
      const unsigned long long desc_v = smem_descriptor(
          smem_v + stage * S::kKVBytes + (kk / 4) * S::kBN * 128 + (kk % 4) * 32, 16, 1024);
      Wgmma<S::kBN>::template ss<kBf16>(acc_dp, desc_do, desc_v, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  // dQ += dS K for the tile in `stage`, issued and committed.
  auto issue_dq = [&](int stage) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < S::kBN / 16; ++kk) {
      const unsigned long long desc_k =
          smem_descriptor(smem_k + stage * S::kKVBytes + kk * 16 * 128, S::kBN * 128, 1024);
      Wgmma<S::kD>::template rs<kBf16>(acc_dq, dsa[kk], desc_k, 1);
    }
    wgmma_commit();
  };
  auto pack_ds = [&] {
#pragma unroll
    for (int kk = 0; kk < S::kBN / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        dsa[kk][j] = pack2<kBf16>(acc_dp[8 * kk + 2 * j], acc_dp[8 * kk + 2 * j + 1]);
      }
    }
  };

  // Two consumer warpgroups take turns issuing their GEMMs (named barriers 2 and 3), so that one
  // runs its sigmoid while the other's GEMMs hold the tensor cores. Consumer 1 hands consumer 0
  // the first turn; after the last work tile consumer 0 takes back the turn consumer 1 passed
  // last, which leaves both barriers balanced at exit.
  constexpr bool kPingPong = S::kConsumers == 2;
  const auto wait_turn = [&] {
    if constexpr (kPingPong) named_barrier_sync(2 + consumer, 256);
  };
  const auto pass_turn = [&] {
    if constexpr (kPingPong) named_barrier_arrive(3 - consumer, 256);
  };
  if (consumer == 1) pass_turn();

  // Epilogue of a work tile: dQ = scale dS K; rows past len_q are zeros in the padded layout and
  // absent in varlen. The tile's geometry is derived again here rather than kept in registers
  // through the main loop.
  const auto store_output = [&](int index) {
    const Work w = describe(index);
    const SeqInfo& seq = w.seq;
    const int row0 = w.m0 + 64 * consumer + 16 * warp + lane / 4;
    const int rows_valid = seq.len_q - w.m0;
    const int rows_stored = (kLayout == Layout::kVarlen ? seq.len_q : p.max_seqlen_q) - w.m0;
    unsigned short* dq = static_cast<unsigned short*>(bp.dq) +
                         seq.q_offset(bp.dq_batch_stride, bp.dq_seq_stride, w.batch) +
                         w.head * bp.dq_head_stride + w.m0 * bp.dq_seq_stride;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + 8 * half - w.m0;
      if (row >= rows_stored) continue;
      const bool valid = row < rows_valid;
      unsigned* out_row = reinterpret_cast<unsigned*>(dq + row * bp.dq_seq_stride + 2 * (lane % 4));
#pragma unroll
      for (int nt = 0; nt < S::kD / 8; ++nt) {
        out_row[nt * 4] = valid ? pack2<kBf16>(acc_dq[nt * 4 + 2 * half] * p.scale,
                                               acc_dq[nt * 4 + 2 * half + 1] * p.scale)
                                : 0u;
      }
    }
  };

  unsigned q_parity = 0;  // phase of the next Q
  RingPosition<S::kStages> ring;
  for (int index = blockIdx.x; index < work_tiles(); index += gridDim.x) {
#pragma unroll
    for (int i = 0; i < S::kD / 2; ++i) acc_dq[i] = 0.0f;
    const Work w = describe(index);
    if (w.tile_end > w.tile_begin) {
      const SeqInfo& seq = w.seq;
      const int wg_row0 = w.m0 + 64 * consumer;         // first row of the warpgroup
      const int row0 = wg_row0 + 16 * warp + lane / 4;  // this thread's rows: row0 and row0 + 8
      const Mask mask(p, seq);
      const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(seq.len_k));
      const float shift_bias = sigmoid.shift(bias);
      const float* score_mod =
          Cfg::kScoreMod ? p.score_mod + w.batch * p.score_mod_batch_stride : nullptr;
      // acc_dp <- dS = dP P (1 - P), P = sigma(scale * S + bias + score_mod), zero where the
      // masks hide the key.
      auto scores_to_ds = [&](int tile) {
        const int n0 = tile * S::kBN;
        const bool full_tile = !kChecked && !Cfg::kCausal && !Cfg::kWindow
                                   ? true
                                   : mask.tile_unmasked(wg_row0, wg_row0 + 63, n0, n0 + S::kBN - 1);
#pragma unroll
        for (int nt = 0; nt < S::kBN / 8; ++nt) {
          const int col = n0 + nt * 8 + 2 * (lane % 4);
          float shift[2];
          sigmoid.template column_shifts<Cfg::kScoreMod>(shift, shift_bias, bias, score_mod, col,
                                                         seq.len_k);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float prob = sigmoid(acc_s[nt * 4 + e], shift[e % 2]);
            if (!full_tile && !mask.visible(row0 + (e / 2) * 8, col + e % 2)) prob = 0.0f;
            acc_dp[nt * 4 + e] *= prob * (1.0f - prob);
          }
        }
      };

      mbarrier_wait(bar_q, q_parity);
      q_parity ^= 1;
      mbarrier_wait(bar_full + 8 * ring.stage, ring.phase);
      issue_scores(ring.stage);
      wgmma_wait<0>();
      fence_operands(acc_s);
      fence_operands(acc_dp);
      scores_to_ds(w.tile_begin);
      pack_ds();
      // Steady state: S and dP of the next tile and the dQ update of this one in flight while the
      // next tile's sigmoid runs.
      for (int tile = w.tile_begin; tile + 1 < w.tile_end; ++tile) {
        const int stage = ring.stage;
        ring.advance();
        mbarrier_wait(bar_full + 8 * ring.stage, ring.phase);
        wait_turn();
        issue_scores(ring.stage);
        issue_dq(stage);
        pass_turn();
        wgmma_wait<1>();
        fence_operands(acc_s);
        fence_operands(acc_dp);
        scores_to_ds(tile + 1);
        wgmma_wait<0>();
        fence_operands(acc_dq);
        if (lane == 0) mbarrier_arrive(bar_empty + 8 * stage);
        pack_ds();
      }
      // Every S and dP of the work tile has completed: the producer may load the next Q and dO.
      if (lane == 0) mbarrier_arrive(bar_q_empty);
      wait_turn();
      issue_dq(ring.stage);
      pass_turn();
      wgmma_wait<0>();
      fence_operands(acc_dq);
      if (lane == 0) mbarrier_arrive(bar_empty + 8 * ring.stage);
      ring.advance();
    }

    store_output(index);
  }
  if (consumer == 0) wait_turn();
}

}  // namespace sigattn
