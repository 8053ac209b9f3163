// The Hopper dK/dV kernel of the backward pass (sm_90a). A work tile is block_n keys of one
// (batch, kv head), one per CTA in the strided schedule, taken from a counter by a persistent CTA
// per SM in the dynamic one: a producer warpgroup loads the tile's K and V once and streams Q and
// dO tiles of every query head of the GQA group through a multi-stage ring with TMA; each of the
// two consumer warpgroups owns 64 keys and per step computes S^T = K Q^T and dP^T = V dO^T with
// wgmma from shared memory, P^T = sigma(S^T) and dS^T = dP^T P^T (1 - P^T) in registers, and
// accumulates dV += P^T dO and dK += dS^T Q. Two consumer warpgroups take turns on the tensor
// cores. With Cfg::kAtomicDq (the one-pass split) the consumers also stage dS^T in shared memory
// and compute the step's dQ = dS K in a turn of its own, each a 64-row part, adding it into the
// fp32 workspace with atomics. Above head dim 128 the gradient split (block_n 64) keeps dK and dV
// of 64 keys in registers: both warpgroups own the same keys, one computing S^T, P^T and dV, the
// other dP^T, dS^T and dK.
#pragma once

#include "sigattn/bwd_atomic_dq_sm80.cuh"
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
struct BwdDkdvSm90Shape {
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kBM = Cfg::kBlockM;  // query rows per step
  static constexpr int kBN = Cfg::kBlockN;  // keys per CTA
  static constexpr int kStages = Cfg::kStages;
  static constexpr bool kAtomicDq = Cfg::kAtomicDq;
  // Two consumer warpgroups: 64 keys and both gradients each, or the same 64 keys and one
  // gradient each (shared_storage.h).
  static constexpr bool kGradientSplit = dkdv_sm90_gradient_split(kBN);
  static constexpr int kConsumers = 2;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Tiles are stored as column blocks of 64 elements (128-byte rows, the swizzle span).
  static constexpr int kSlabs = sm90_column_blocks(kD);
  static constexpr BwdDkdvSm90Storage kSmem =
      bwd_dkdv_sm90_storage(kD, kBM, kBN, kStages, kAtomicDq, Cfg::kDynamicSchedule);
  static constexpr int kRowBytes = kSmem.q.slot_bytes;  // one Q or one dO tile
  // One step's dS^T (kBN key rows of kBM queries, in column blocks of 64 queries), or its slopes.
  static constexpr int kDsBytes = kSmem.ds.slot_bytes;
  // Arrivals that fill a dS^T or slope buffer and that empty it: every consumer thread, or in the
  // gradient split the one warpgroup that writes it and the one that reads it.
  static constexpr int kDsArrivals = kGradientSplit ? 128 : 128 * kConsumers;
  // The one-pass split's dQ of a step (kBM x kD) is split over the consumers: 64-row blocks, then
  // head-dim columns. Without that split no dQ is computed, and kDqWidth is any width wgmma has
  // (kD / 2 of d=80 is not), so that the kernel's unused dQ code still compiles.
  static constexpr int kDqRowBlocks = kBM / 64;
  static constexpr int kDqColParts = kConsumers >= kDqRowBlocks ? kConsumers / kDqRowBlocks : 1;
  static constexpr int kDqWidth = kAtomicDq ? kD / kDqColParts : 64;
  static constexpr int kSmemBytes = kSmem.bytes;
  // Registers per thread after setmaxnreg: the producer gives its share to the consumers, keeping
  // 40 for the persistent loop of the dynamic schedule. The consumers' increase waits until the
  // pool allocated at launch (the per-thread count ptxas fits to kThreads, in steps of 8) holds
  // it, so the split must fit that pool, not only the file.
  static constexpr int kProducerRegisters = Cfg::kDynamicSchedule ? 40 : 24;
  static constexpr int kConsumerRegisters = Cfg::kDynamicSchedule ? 232 : 240;
  static constexpr int kLaunchRegisters =
      65536 / kThreads / 8 * 8 < 248 ? 65536 / kThreads / 8 * 8 : 248;

  static_assert(kD % 16 == 0 && kD >= 64 && kD <= 256,
                "head_dim must be a multiple of 16 in [64, 256]");
  static_assert(kBN == 128 || kBN == 64,
                "block_n must be 128 (two warpgroups of 64 keys taking turns) or 64 (two "
                "warpgroups on the same keys, one per gradient)");
  static_assert(kBM == 64 || kBM == 128, "block_m must be 64 or 128");
  static_assert(Cfg::kWarps * 32 == kThreads, "warps must be 12: two consumer warpgroups plus 4");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be 2, 3 or 4");
  static_assert(kGradientSplit || kD + kBM <= 192,
                "dK, dV, S^T and dP^T accumulators exceed the registers");
  static_assert(!kGradientSplit || kD / 2 + kBM / 2 <= 192,
                "one gradient and the step's scores exceed the registers");
  static_assert(!(kAtomicDq && kGradientSplit), "the one-pass split needs block_n 128");
  static_assert(!kAtomicDq || (kConsumers % kDqRowBlocks == 0 && kDqWidth % 64 == 0),
                "the dQ split needs whole 64-row blocks and 64-column blocks per warpgroup");
  static_assert(kSmemBytes == Cfg::kSmemBytes, "generator and kernel disagree on shared memory");
  static_assert(kProducerRegisters + kConsumers * kConsumerRegisters <=
                    (1 + kConsumers) * kLaunchRegisters,
                "register split exceeds the registers allocated at launch");
};

// P^T = sigma(scale S^T + bias + score_mod) in place over a consumer's fragment of S^T (keys
// `key` and key + 8 by the block_m queries from m0), zero where the masks hide the pair or the
// query row is past len_q when kMasked. A fragment no mask touches takes the unmasked path: with
// one path the compiler predicates every element's tests, more issue slots than the sigmoid's.
template <class Cfg, bool kMasked, class Mask>
__device__ __forceinline__ void key_probabilities(float (&acc_s)[Cfg::kBlockM / 2],
                                                  const Sigmoid<Cfg::kAccurateSigmoid>& sigmoid,
                                                  const float (&shift)[2], const Mask& mask, int m0,
                                                  int len_q, int key, int lane) {
#pragma unroll
  for (int nt = 0; nt < Cfg::kBlockM / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float prob = sigmoid(acc_s[nt * 4 + e], shift[e / 2]);
      if constexpr (kMasked) {
        const int query = m0 + nt * 8 + 2 * (lane % 4) + e % 2;
        if (query >= len_q || !mask.visible(query, key + 8 * (e / 2))) prob = 0.0f;
      }
      acc_s[nt * 4 + e] = prob;
    }
  }
}

// The bias and score_mod of the thread's two keys `key` and key + 8, in the sigmoid's form.
template <class Cfg>
__device__ __forceinline__ void key_shifts(float (&shift)[2],
                                           const Sigmoid<Cfg::kAccurateSigmoid>& sigmoid,
                                           const FwdParams& p, const SeqInfo& seq, int batch,
                                           int key) {
  const float bias = sequence_bias(p, seq);
  const float* score_mod = p.score_mod + batch * p.score_mod_batch_stride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    shift[h] = sigmoid.template key_shift<Cfg::kScoreMod>(bias, score_mod, key + 8 * h, seq.len_k);
  }
}

// key_probabilities over a step's fragment (the block_m queries from m0) of the warpgroup's 64
// keys from wg_key, unmasked where no mask touches them.
template <class Cfg, class Mask>
__device__ __forceinline__ void step_probabilities(float (&acc_s)[Cfg::kBlockM / 2],
                                                   const Sigmoid<Cfg::kAccurateSigmoid>& sigmoid,
                                                   const float (&shift)[2], const Mask& mask,
                                                   int m0, int len_q, int wg_key, int key,
                                                   int lane) {
  if ((Cfg::kSeqLenX128 && !Cfg::kCausal && !Cfg::kWindow) ||
      (m0 + Cfg::kBlockM <= len_q &&
       mask.tile_unmasked(m0, m0 + Cfg::kBlockM - 1, wg_key, wg_key + 63))) {
    key_probabilities<Cfg, false>(acc_s, sigmoid, shift, mask, m0, len_q, key, lane);
  } else {
    key_probabilities<Cfg, true>(acc_s, sigmoid, shift, mask, m0, len_q, key, lane);
  }
}

// A consumer warpgroup of the gradient split (block_n 64): both own the CTA's 64 keys. Consumer 0
// (kValues) computes S^T = K Q^T, P^T and dV += P^T dO; consumer 1 dP^T = V dO^T,
// dS^T = dP^T P^T (1 - P^T) and dK += dS^T Q. Each holds one gradient (head_dim / 2 registers per
// thread, which lets head dims up to 256 fit) and runs the same two GEMM shapes, the score GEMM
// of step j + 1 and the update of step j in flight while step j + 1's elementwise work runs.
// The slopes of step j pass from consumer 0 to consumer 1 through buffer j % 2 with its full and
// empty barriers; the dependence staggers the two warpgroups, so one's elementwise work runs
// while the other's GEMMs hold the tensor cores. `done` counts the CTA's steps of earlier work
// tiles (the ring and the slope buffers run on across them); returns the work tile's steps.
template <class Cfg, bool kValues>
__device__ __forceinline__ int consume_gradient_split(const BwdSm90Params& params, unsigned base,
                                                      int n0, int head_kv, int batch, int group,
                                                      int done, int thread) {
  using S = BwdDkdvSm90Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;
  const SeqInfo seq = sequence_info<kLayout>(p, batch);
  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, seq);
  const QuerySteps qs = query_steps<S::kBM, S::kBN>(mask, seq, n0, group);
  const int lane = thread % 32;
  const int key0 = 16 * (thread / 32) + lane / 4;  // this thread's keys: key0 and key0 + 8
  const unsigned slopes = base + S::kSmem.ds.offset;
  const unsigned bar_slopes_full = base + S::kSmem.bar_ds_full.offset;
  const unsigned bar_slopes_empty = base + S::kSmem.bar_ds_empty.offset;
  const unsigned bar_full = base + S::kSmem.bar_full.offset;
  const unsigned bar_empty = base + S::kSmem.bar_empty.offset;
  // The score GEMM's A (K or V) and the stage rows its B comes from (Q or dO), and the stage rows
  // of the update's B (dO or Q).
  const unsigned keys = base + (kValues ? S::kSmem.k.offset : S::kSmem.v.offset);
  const unsigned score_rows = base + (kValues ? S::kSmem.q.offset : S::kSmem.dout.offset);
  const unsigned update_rows = base + (kValues ? S::kSmem.dout.offset : S::kSmem.q.offset);

  float acc[S::kD / 2];  // dV or dK
#pragma unroll
  for (int i = 0; i < S::kD / 2; ++i) acc[i] = 0.0f;

  if (qs.steps > 0) {
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
    float shift[2];
    if constexpr (kValues) key_shifts<Cfg>(shift, sigmoid, p, seq, batch, n0 + key0);
    float acc_s[S::kBM / 2];  // S^T, then P^T (consumer 0); dP^T, then dS^T (consumer 1)
    unsigned frag[S::kBM / 16][4];
    const auto issue_scores = [&](int stage) {
      wgmma_fence();
      wgmma_ss_k_major<kBf16, S::kBM, S::kD, S::kBN, S::kBM>(acc_s, keys,
                                                             score_rows + stage * S::kRowBytes);
      wgmma_commit();
    };
    const auto issue_update = [&](int stage) {
      wgmma_fence();
      wgmma_rs_n_major<kBf16, S::kD, S::kBM>(acc, frag, update_rows + stage * S::kRowBytes);
      wgmma_commit();
    };
    // The slope buffers alternate over the CTA's steps (g), across work tiles.
    const auto elementwise = [&](int step) {
      fence_operands(acc_s);
      const int g = done + step;
      const unsigned buffer = slopes + (g & 1) * S::kDsBytes;
      if constexpr (kValues) {
        const int m0 = qs.row0(step, S::kBM);
        step_probabilities<Cfg>(acc_s, sigmoid, shift, mask, m0, seq.len_q, n0, n0 + key0, lane);
        if (g >= 2) mbarrier_wait(bar_slopes_empty + 8 * (g & 1), ((g >> 1) - 1) & 1);
        store_slopes<S::kBM>(buffer, acc_s, thread);
        mbarrier_arrive(bar_slopes_full + 8 * (g & 1));
      } else {
        mbarrier_wait(bar_slopes_full + 8 * (g & 1), (g >> 1) & 1);
        multiply_by_slopes<S::kBM>(acc_s, buffer, thread);
        mbarrier_arrive(bar_slopes_empty + 8 * (g & 1));
      }
    };

    // In the dynamic schedule K and V came with the work tile's publication.
    if constexpr (!Cfg::kDynamicSchedule) mbarrier_wait(base + S::kSmem.bar_kv.offset, 0);
    RingPosition<S::kStages> ring;
    ring.advance(done);
    mbarrier_wait(bar_full + 8 * ring.stage, ring.phase);
    issue_scores(ring.stage);
    wgmma_wait<0>();
    elementwise(0);
    pack_wgmma_a<kBf16, S::kBM>(frag, acc_s);
    for (int step = 0; step + 1 < qs.steps; ++step) {
      const int stage = ring.stage;
      ring.advance();
      mbarrier_wait(bar_full + 8 * ring.stage, ring.phase);
      issue_scores(ring.stage);
      issue_update(stage);
      wgmma_wait<1>();
      elementwise(step + 1);
      wgmma_wait<0>();
      fence_operands(acc);
      if (lane == 0) mbarrier_arrive(bar_empty + 8 * stage);
      pack_wgmma_a<kBf16, S::kBM>(frag, acc_s);
    }
    issue_update(ring.stage);
    wgmma_wait<0>();
    fence_operands(acc);
    if (lane == 0) mbarrier_arrive(bar_empty + 8 * ring.stage);
  }
  // The work tile's K and V are no longer read: the producer may load the next tile's.
  if (Cfg::kDynamicSchedule && lane == 0) mbarrier_arrive(base + S::kSmem.bar_kv_empty.offset);

  // Epilogue: dV, or dK = scale dS^T Q; key rows past len_k are zeros in the padded layout and
  // absent in varlen.
  const long long batch_stride = kValues ? bp.dv_batch_stride : bp.dk_batch_stride;
  const long long seq_stride = kValues ? bp.dv_seq_stride : bp.dk_seq_stride;
  const long long head_stride = kValues ? bp.dv_head_stride : bp.dk_head_stride;
  unsigned short* rows = static_cast<unsigned short*>(kValues ? bp.dv : bp.dk) +
                         seq.k_offset(batch_stride, seq_stride, batch) + head_kv * head_stride +
                         n0 * seq_stride;
  store_fragment_rows<kBf16, S::kD>(
      rows, seq_stride, acc, kValues ? 1.0f : p.scale, key0, seq.len_k - n0,
      (kLayout == Layout::kVarlen ? seq.len_k : p.max_seqlen_k) - n0, lane);
  return qs.steps;
}

// The dynamic schedule's work tiles: the key blocks of sequence b that hold valid keys, and in
// the padded layout the key blocks of the longest sequence (those past a sequence's keys only
// write its zero rows of dK and dV).
template <class Cfg>
__device__ __forceinline__ int sequence_key_blocks(const FwdParams& p, int b) {
  return (sequence_info<Cfg::kLayout>(p, b).len_k + Cfg::kBlockN - 1) / Cfg::kBlockN;
}

template <class Cfg>
__device__ __forceinline__ int padded_key_blocks(const FwdParams& p) {
  return Cfg::kLayout == Layout::kPadded ? (p.max_seqlen_k + Cfg::kBlockN - 1) / Cfg::kBlockN : 0;
}

// Producer: one work tile (the block_n keys from n0 of kv head head_kv of sequence batch). The
// whole warpgroup loads K and V, and the Q and dO tiles that cross the end of a padded or packed
// sequence, with cp.async; thread 0 issues every TMA load. `done` counts the CTA's steps of
// earlier work tiles (the ring runs on across them) and grows by this tile's. In the dynamic
// schedule K and V's buffers are first waited for (kv_free_parity, flipped here), and K/V's
// barrier publishes the tile. Returns false, having loaded nothing, for a tile with no steps.
// Everything is derived from the parameters here, so that nothing of the caller's lives in the
// producer's few registers.
template <class Cfg>
__device__ __forceinline__ bool produce_key_block(const BwdSm90Params& params, unsigned base,
                                                  int n0, int head_kv, int batch, int group,
                                                  int& done, unsigned& kv_free_parity, int tid) {
  using S = BwdDkdvSm90Shape<Cfg>;
  constexpr Layout kLayout = Cfg::kLayout;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;
  const unsigned smem_q = base + S::kSmem.q.offset;  // stage s at smem_q + s * kRowBytes
  const unsigned smem_do = base + S::kSmem.dout.offset;
  const unsigned bar_full = base + S::kSmem.bar_full.offset;    // Q and dO landed
  const unsigned bar_empty = base + S::kSmem.bar_empty.offset;  // the consumers are done with it
  const SeqInfo seq = sequence_info<kLayout>(p, batch);
  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, seq);
  const QuerySteps qs = query_steps<S::kBM, S::kBN>(mask, seq, n0, group);
  const int steps = qs.steps;
  if (steps == 0) return false;
  const bool leader = tid == 0;
  if (leader && done == 0) {
    prefetch_tma_descriptor(&params.q);
    prefetch_tma_descriptor(&params.dout);
  }
  if constexpr (Cfg::kDynamicSchedule) {
    if (leader) mbarrier_wait(base + S::kSmem.bar_kv_empty.offset, kv_free_parity);
    named_barrier_sync(1, 128);
    kv_free_parity ^= 1;
  }
  const int batch_coord = kLayout == Layout::kVarlen ? 0 : batch;
  const unsigned short* k = static_cast<const unsigned short*>(p.k) + seq.k_start +
                            head_kv * p.k_head_stride + n0 * p.k_seq_stride;
  const unsigned short* v = static_cast<const unsigned short*>(p.v) + seq.k_start +
                            head_kv * p.v_head_stride + n0 * p.v_seq_stride;
  // K and V are in flight while the first Q and dO tiles load; they are published to the
  // consumers once that first step is issued.
  copy_tile_swizzled<S::kD, S::kBN>(base + S::kSmem.k.offset, k, p.k_seq_stride, seq.len_k - n0,
                                    tid);
  copy_tile_swizzled<S::kD, S::kBN>(base + S::kSmem.v.offset, v, p.v_seq_stride, seq.len_k - n0,
                                    tid);
  cp_async_commit();

  for (int step = 0; step < steps; ++step) {
    const int g = done + step;
    const int stage = g % S::kStages;
    const unsigned free_parity = ((g / S::kStages) & 1) ^ 1;
    // Unsigned: zero-extended into the 64-bit offsets, with no high word to hold.
    const unsigned head = qs.head(head_kv, group, step);
    const unsigned m0 = qs.row0(step, S::kBM);
    const unsigned q_tile = smem_q + stage * S::kRowBytes;
    const unsigned do_tile = smem_do + stage * S::kRowBytes;
    if (kLayout == Layout::kDense || static_cast<int>(m0) + S::kBM <= seq.len_q) {
      if (leader) {
        mbarrier_wait(bar_empty + 8 * stage, free_parity);
        mbarrier_arrive_expect_tx(bar_full + 8 * stage, 2 * S::kRowBytes);
        const int row = static_cast<int>(seq.q_token0 + m0);
#pragma unroll
        for (int slab = 0; slab < S::kSlabs; ++slab) {
          tma_load_4d(q_tile + slab * S::kBM * 128, &params.q, bar_full + 8 * stage, slab * 64, row,
                      head, batch_coord);
          tma_load_4d(do_tile + slab * S::kBM * 128, &params.dout, bar_full + 8 * stage, slab * 64,
                      row, head, batch_coord);
        }
      }
    } else {
      // Only the leader tracks the ring's phases; the named barrier passes the stage on. The
      // sequence's offsets are read again here, which leaves the producer's few registers to
      // the loads.
      if (leader) mbarrier_wait(bar_empty + 8 * stage, free_parity);
      named_barrier_sync(1, 128);
      const SeqInfo tail = sequence_info<kLayout>(p, batch);
      const unsigned short* q = static_cast<const unsigned short*>(p.q) + tail.q_start +
                                head * p.q_head_stride + m0 * p.q_seq_stride;
      load_tile_swizzled<S::kD, S::kBM>(q_tile, q, p.q_seq_stride,
                                        tail.len_q - static_cast<int>(m0), tid);
      const unsigned short* dout = static_cast<const unsigned short*>(bp.dout) +
                                   tail.q_offset(bp.do_batch_stride, bp.do_seq_stride, batch) +
                                   head * bp.do_head_stride + m0 * bp.do_seq_stride;
      load_tile_swizzled<S::kD, S::kBM>(do_tile, dout, bp.do_seq_stride,
                                        tail.len_q - static_cast<int>(m0), tid);
      fence_proxy_async();
      named_barrier_sync(1, 128);
      if (leader) mbarrier_arrive(bar_full + 8 * stage);
    }
    if (step == 0) {
      cp_async_wait<0>();
      fence_proxy_async();
      named_barrier_sync(1, 128);
      if (leader) mbarrier_arrive(base + S::kSmem.bar_kv.offset);
    }
  }
  done += steps;
  return true;
}

// A consumer warpgroup of the two-warpgroup key split (block_n 128) over one work tile:
// warpgroup c owns keys [n0 + 64 c, +64), each warp 16 of them, laid out as the mma.sync m16n8
// accumulator fragment repeated over the N/8 column blocks. `done` counts the CTA's steps of
// earlier work tiles (the ring and the dS^T buffers run on across them); returns the tile's steps.
template <class Cfg>
__device__ __forceinline__ int consume_key_block(const BwdSm90Params& params, unsigned base, int n0,
                                                 int head_kv, int batch, int group, int done,
                                                 int consumer, int thread) {
  using S = BwdDkdvSm90Shape<Cfg>;
  constexpr bool kBf16 = Cfg::kBf16;
  constexpr Layout kLayout = Cfg::kLayout;
  const BwdParams& bp = params.base;
  const FwdParams& p = bp.fwd;
  const unsigned smem_k = base + S::kSmem.k.offset;
  const unsigned smem_v = base + S::kSmem.v.offset;
  const unsigned smem_q = base + S::kSmem.q.offset;  // stage s at smem_q + s * kRowBytes
  const unsigned smem_do = base + S::kSmem.dout.offset;
  const unsigned smem_ds = base + S::kSmem.ds.offset;           // one-pass split only
  const unsigned bar_full = base + S::kSmem.bar_full.offset;    // Q and dO landed
  const unsigned bar_empty = base + S::kSmem.bar_empty.offset;  // the consumers are done with it
  // Buffer b: every consumer stored its dS^T keys.
  const unsigned bar_ds_full = base + S::kSmem.bar_ds_full.offset;
  // Buffer b: every consumer's dQ read it.
  const unsigned bar_ds_empty = base + S::kSmem.bar_ds_empty.offset;
  const SeqInfo seq = sequence_info<kLayout>(p, batch);
  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, seq);
  const QuerySteps qs = query_steps<S::kBM, S::kBN>(mask, seq, n0, group);
  const int steps = qs.steps;
  const int warp = thread / 32;
  const int lane = thread % 32;
  const int wg_key0 = 64 * consumer;                // first key of the warpgroup, from n0
  const int key0 = wg_key0 + 16 * warp + lane / 4;  // this thread's keys: key0 and key0 + 8

  float acc_dk[S::kD / 2];
  float acc_dv[S::kD / 2];
#pragma unroll
  for (int i = 0; i < S::kD / 2; ++i) acc_dk[i] = acc_dv[i] = 0.0f;

  if (steps > 0) {
    const Sigmoid<Cfg::kAccurateSigmoid> sigmoid(p.scale);
    float shift[2];
    key_shifts<Cfg>(shift, sigmoid, p, seq, batch, n0 + key0);
    const unsigned k_rows = smem_k + wg_key0 * 128;
    const unsigned v_rows = smem_v + wg_key0 * 128;

    // Two consumer warpgroups take turns issuing GEMMs (named barriers 2 and 3): a step's S^T
    // and dP^T in one turn, its dV and dK in the next, its dQ in a third, so that one
    // warpgroup's sigmoid runs while the other's GEMMs hold the tensor cores. Consumer 1 hands
    // consumer 0 the first turn and, to leave both barriers balanced at the work tile's end,
    // passes on no turn after its last.
    const int turns = (S::kAtomicDq ? 3 : 2) * steps;
    int turn = 0;
    const auto wait_turn = [&] { named_barrier_sync(2 + consumer, 256); };
    const auto pass_turn = [&] {
      ++turn;
      if (consumer == 0 || turn < turns) named_barrier_arrive(3 - consumer, 256);
    };
    if (consumer == 1) named_barrier_arrive(2, 256);

    // The one-pass split computes a step's dQ = dS K in a turn of its own, once every warpgroup
    // has stored its keys of the step's dS^T: this warpgroup's part is 64 query rows (A = dS,
    // M-contiguous in dS^T) by kDqWidth head-dim columns (B = K, N-contiguous). The dS^T buffers
    // alternate over the CTA's steps (g = done + step).
    const int dq_row_block = consumer / S::kDqColParts;
    const int dq_col0 = consumer % S::kDqColParts * S::kDqWidth;
    // The accumulators are declared where each dQ is computed: as wgmma operands they would
    // otherwise stay live (read-modify-write) through the whole loop.
    using DqAccumulators = float[S::kDqWidth / 2];
    const auto issue_dq = [&](DqAccumulators& acc_dq, int g) {
      const unsigned ds = smem_ds + (g & 1) * S::kDsBytes;
      mbarrier_wait(bar_ds_full + 8 * (g & 1), (g >> 1) & 1);
#pragma unroll
      for (int kk = 0; kk < S::kBN / 16; ++kk) {
        Wgmma<S::kDqWidth>::template ss<kBf16, 1, 1>(
            acc_dq,
            smem_descriptor(ds + dq_row_block * S::kBN * 128 + kk * 16 * 128, S::kBN * 128, 1024),
            smem_descriptor(smem_k + (dq_col0 / 64) * S::kBN * 128 + kk * 16 * 128, S::kBN * 128,
                            1024),
            kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    // Once the dQ GEMM of `step` is done: its dS^T buffer is free, and the sums go into the
    // workspace. (Staging them in shared memory for bulk reductions measured slower: shared
    // memory bandwidth is what this kernel's GEMMs share.)
    const auto add_dq = [&](const DqAccumulators& acc_dq, int step) {
      mbarrier_arrive(bar_ds_empty + 8 * ((done + step) & 1));
      const int head = qs.head(head_kv, group, step);
      const int dq_row0 = qs.row0(step, S::kBM) + 64 * dq_row_block;
      float* dq = bp.dq_accum +
                  seq.q_offset(bp.dq_accum_batch_stride, bp.dq_accum_seq_stride, batch) +
                  head * bp.dq_accum_head_stride + dq_row0 * bp.dq_accum_seq_stride + dq_col0;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = 16 * warp + lane / 4 + 8 * h;
        if (dq_row0 + row >= seq.len_q) continue;
#pragma unroll
        for (int nt = 0; nt < S::kDqWidth / 8; ++nt) {
          red_add_f32x2(dq + row * bp.dq_accum_seq_stride + nt * 8 + 2 * (lane % 4),
                        acc_dq[nt * 4 + 2 * h], acc_dq[nt * 4 + 2 * h + 1]);
        }
      }
    };

    // In the dynamic schedule K and V came with the work tile's publication.
    if constexpr (!Cfg::kDynamicSchedule) mbarrier_wait(base + S::kSmem.bar_kv.offset, 0);
    for (int step = 0; step < steps; ++step) {
      const int g = done + step;
      const int stage = g % S::kStages;
      const int m0 = qs.row0(step, S::kBM);
      const unsigned q_tile = smem_q + stage * S::kRowBytes;
      const unsigned do_tile = smem_do + stage * S::kRowBytes;
      mbarrier_wait(bar_full + 8 * stage, (g / S::kStages) & 1);

      // Score turn: S^T = K Q^T and dP^T = V dO^T, keys x queries, both operands K-major.
      float acc_s[S::kBM / 2];
      float acc_dp[S::kBM / 2];
      wait_turn();
      wgmma_fence();
      wgmma_ss_k_major<kBf16, S::kBM, S::kD, S::kBN, S::kBM>(acc_s, k_rows, q_tile);
      wgmma_commit();
      wgmma_ss_k_major<kBf16, S::kBM, S::kD, S::kBN, S::kBM>(acc_dp, v_rows, do_tile);
      wgmma_commit();
      pass_turn();

      // P^T = sigma(scale S^T + bias + score_mod), zero where the masks hide the pair or the
      // query row is past len_q, while dP^T is still on the tensor cores; then
      // dS^T = dP^T P^T (1 - P^T).
      wgmma_wait<1>();
      fence_operands(acc_s);
      step_probabilities<Cfg>(acc_s, sigmoid, shift, mask, m0, seq.len_q, n0 + wg_key0, n0 + key0,
                              lane);
      wgmma_wait<0>();
      fence_operands(acc_dp);
#pragma unroll
      for (int i = 0; i < S::kBM / 2; ++i) acc_dp[i] *= sigmoid_slope(acc_s[i]);
      unsigned pa[S::kBM / 16][4];
      unsigned dsa[S::kBM / 16][4];
      pack_wgmma_a<kBf16, S::kBM>(pa, acc_s);
      pack_wgmma_a<kBf16, S::kBM>(dsa, acc_dp);
      const unsigned ds = smem_ds + (g & 1) * S::kDsBytes;
      if constexpr (S::kAtomicDq) {
        // dS^T into shared memory, 128-byte swizzled: key rows, 64-query column blocks, once both
        // warpgroups' dQ of the step before last is done with the buffer. Fragment dsa[kk][j]
        // holds queries (2 kk + j / 2) * 8 + 2 (lane % 4) + {0, 1} of key key0 + 8 (j % 2).
        if (g >= 2) mbarrier_wait(bar_ds_empty + 8 * (g & 1), ((g >> 1) - 1) & 1);
#pragma unroll
        for (int kk = 0; kk < S::kBM / 16; ++kk) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int nt = 2 * kk + j / 2;
            const unsigned address = ds + (nt / 8) * S::kBN * 128 +
                                     swizzled_offset(key0 + 8 * (j % 2), nt % 8) + 4 * (lane % 4);
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(dsa[kk][j]) : "memory");
          }
        }
        fence_proxy_async();
        mbarrier_arrive(bar_ds_full + 8 * (g & 1));
        named_barrier_sync(4 + consumer, 128);  // the warpgroup's dS^T rows, which its dK reads
      }

      // Gradient turn: dV += P^T dO and dK += dS^T Q, queries the K dimension, dO and Q
      // N-contiguous; the one-pass split reads dS^T back from shared memory.
      wait_turn();
      wgmma_fence();
      wgmma_rs_n_major<kBf16, S::kD, S::kBM>(acc_dv, pa, do_tile);
      if constexpr (S::kAtomicDq) {
#pragma unroll
        for (int kk = 0; kk < S::kBM / 16; ++kk) {
          Wgmma<S::kD>::template ss<kBf16, 0, 1>(
              acc_dk,
              smem_descriptor(ds + (kk / 4) * S::kBN * 128 + wg_key0 * 128 + (kk % 4) * 32, 16,
                              1024),
              smem_descriptor(q_tile + kk * 16 * 128, S::kBM * 128, 1024), 1);
        }
      } else {
        wgmma_rs_n_major<kBf16, S::kD, S::kBM>(acc_dk, dsa, q_tile);
      }
      wgmma_commit();
      pass_turn();
      wgmma_wait<0>();
      fence_operands(acc_dv);
      fence_operands(acc_dk);
      if (lane == 0) mbarrier_arrive(bar_empty + 8 * stage);

      // dQ turn (one-pass split), with the P^T fragments free.
      if constexpr (S::kAtomicDq) {
        float acc_dq[S::kDqWidth / 2];
        wait_turn();
        wgmma_fence();
        issue_dq(acc_dq, g);
        pass_turn();
        wgmma_wait<0>();
        fence_operands(acc_dq);
        add_dq(acc_dq, step);
      }
    }
  }
  // The work tile's K and V are no longer read: the producer may load the next tile's.
  if (Cfg::kDynamicSchedule && lane == 0) mbarrier_arrive(base + S::kSmem.bar_kv_empty.offset);

  // Epilogue: dK = scale dS^T Q; key rows past len_k are zeros in the padded layout and absent
  // in varlen.
  const int rows_valid = seq.len_k - n0;
  const int rows_stored = (kLayout == Layout::kVarlen ? seq.len_k : p.max_seqlen_k) - n0;
  unsigned short* dk = static_cast<unsigned short*>(bp.dk) +
                       seq.k_offset(bp.dk_batch_stride, bp.dk_seq_stride, batch) +
                       head_kv * bp.dk_head_stride + n0 * bp.dk_seq_stride;
  unsigned short* dv = static_cast<unsigned short*>(bp.dv) +
                       seq.k_offset(bp.dv_batch_stride, bp.dv_seq_stride, batch) +
                       head_kv * bp.dv_head_stride + n0 * bp.dv_seq_stride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = key0 + 8 * h;
    if (row >= rows_stored) continue;
    const bool valid = row < rows_valid;
    unsigned* dk_row = reinterpret_cast<unsigned*>(dk + row * bp.dk_seq_stride + 2 * (lane % 4));
    unsigned* dv_row = reinterpret_cast<unsigned*>(dv + row * bp.dv_seq_stride + 2 * (lane % 4));
#pragma unroll
    for (int nt = 0; nt < S::kD / 8; ++nt) {
      dk_row[nt * 4] = valid ? pack2<kBf16>(acc_dk[nt * 4 + 2 * h] * p.scale,
                                            acc_dk[nt * 4 + 2 * h + 1] * p.scale)
                             : 0u;
      dv_row[nt * 4] =
          valid ? pack2<kBf16>(acc_dv[nt * 4 + 2 * h], acc_dv[nt * 4 + 2 * h + 1]) : 0u;
    }
  }
  return steps;
}

// A consumer warpgroup over one work tile, in the CTA's key split (consume_key_block) or
// gradient split (consume_gradient_split: both warpgroups own the tile's 64 keys).
template <class Cfg>
__device__ __forceinline__ int consume_work_tile(const BwdSm90Params& params, unsigned base, int n0,
                                                 int head_kv, int batch, int group, int done,
                                                 int warpgroup, int tid) {
  if constexpr (BwdDkdvSm90Shape<Cfg>::kGradientSplit) {
    if (warpgroup == 1) {
      return consume_gradient_split<Cfg, true>(params, base, n0, head_kv, batch, group, done,
                                               tid - 128);
    }
    return consume_gradient_split<Cfg, false>(params, base, n0, head_kv, batch, group, done,
                                              tid - 256);
  } else {
    return consume_key_block<Cfg>(params, base, n0, head_kv, batch, group, done, warpgroup - 1,
                                  tid - 128 * warpgroup);
  }
}

// In the strided schedule each CTA owns one work tile (blockIdx: key block, kv head, sequence).
// In the dynamic one a CTA per SM takes work tiles from the counter: the producer's leader
// publishes each in a slot with K/V's barrier, a key block of a causal mask longest (first) first;
// the Q/dO ring and the dS^T or slope buffers run on across the tiles, and the producer loads a
// tile's K and V once the consumers are done with the last tile's, while they store its dK and dV.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kWarps * 32, 1)
    bwd_dkdv_sm90_kernel(const __grid_constant__ BwdSm90Params params) {
  using S = BwdDkdvSm90Shape<Cfg>;
  constexpr Layout kLayout = Cfg::kLayout;
  const FwdParams& p = params.base.fwd;

  extern __shared__ unsigned char smem_raw[];
  const unsigned base = sm90_smem_base(smem_raw);
  const unsigned bar_full = base + S::kSmem.bar_full.offset;
  const unsigned bar_empty = base + S::kSmem.bar_empty.offset;
  const unsigned bar_kv = base + S::kSmem.bar_kv.offset;  // K and V landed (the tile published)
  // The consumers are done with K and V (dynamic schedule only).
  const unsigned bar_kv_empty = base + S::kSmem.bar_kv_empty.offset;
  const unsigned work_tiles = base + S::kSmem.work_tiles.offset;  // dynamic schedule only
  const unsigned bar_ds_full = base + S::kSmem.bar_ds_full.offset;
  const unsigned bar_ds_empty = base + S::kSmem.bar_ds_empty.offset;
  // The strided schedule's one work tile.
  const int n0 = blockIdx.x * S::kBN;
  const int head_kv = blockIdx.y;
  const int batch = blockIdx.z;
  const int group = p.heads_q / p.heads_kv;
  const int tid = threadIdx.x;

  if constexpr (!Cfg::kDynamicSchedule) {
    if (kLayout == Layout::kVarlen && n0 >= sequence_info<kLayout>(p, batch).len_k) return;
  }

  if (tid == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      mbarrier_init(bar_full + 8 * s, 1);
      mbarrier_init(bar_empty + 8 * s, 4 * S::kConsumers);
    }
    mbarrier_init(bar_kv, 1);
    if (Cfg::kDynamicSchedule) mbarrier_init(bar_kv_empty, 4 * S::kConsumers);
    for (int b = 0; b < 2; ++b) {
      mbarrier_init(bar_ds_full + 8 * b, S::kDsArrivals);
      mbarrier_init(bar_ds_empty + 8 * b, S::kDsArrivals);
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  int done = 0;  // the CTA's steps of earlier work tiles
  if (warpgroup == 0) {
    setmaxnreg_decrease<S::kProducerRegisters>();
    unsigned kv_free_parity = 1;  // the consumers released the last K and V (none at first)
    if constexpr (Cfg::kDynamicSchedule) {
      produce_dynamic(
          params.tile_counter, work_tiles, bar_kv, bar_kv_empty, kv_free_parity, tid == 0,
          [&](int index, ScheduleCursor& cursor) {
            return dynamic_work_tile < Cfg::kCausal
                       ? TileOrder::first_block_first
                       : TileOrder::by_head >
                             (index, p.heads_kv, p.batch, padded_key_blocks<Cfg>(p), cursor,
                              [&](int b) { return sequence_key_blocks<Cfg>(p, b); });
          },
          [&](const WorkTile& tile) {
            return produce_key_block<Cfg>(params, base, tile.block * S::kBN, tile.head, tile.batch,
                                          group, done, kv_free_parity, tid);
          });
    } else {
      produce_key_block<Cfg>(params, base, n0, head_kv, batch, group, done, kv_free_parity, tid);
    }
    return;
  }

  setmaxnreg_increase<S::kConsumerRegisters>();
  if constexpr (Cfg::kDynamicSchedule) {
    unsigned kv_parity = 0;  // phase of the next publication
    for (int t = 0;; ++t) {
      mbarrier_wait(bar_kv, kv_parity);
      kv_parity ^= 1;
      const WorkTile tile = load_work_tile(work_tiles + (t & 1) * sm90_work_tile_bytes());
      if (tile.batch < 0) break;
      done += consume_work_tile<Cfg>(params, base, tile.block * S::kBN, tile.head, tile.batch,
                                     group, done, warpgroup, tid);
    }
  } else {
    consume_work_tile<Cfg>(params, base, n0, head_kv, batch, group, done, warpgroup, tid);
  }
}

}  // namespace sigattn
