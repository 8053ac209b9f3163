// What the persistent Hopper kernels that walk query row blocks (the forward and dQ) share: the
// geometry of a work tile, the barriers, the dynamic schedule's hand-off of work tiles, the
// producer's loads of the row tiles and its K/V stream into the ring, the consumers' main loop
// over a work tile, the sigmoid over a consumer warpgroup's score fragment and the store of its
// rows.
#pragma once

#include "sigattn/fwd_sm90_params.h"
#include "sigattn/hopper_sm90.cuh"
#include "sigattn/ptx_sm80.cuh"
#include "sigattn/sequence.cuh"
#include "sigattn/shared_storage.h"
#include "sigattn/sigmoid.cuh"
#include "sigattn/tile_scheduler.cuh"

namespace sigattn {

// Work tiles: every (row block, head, batch), derived from the parameters where used rather than
// kept in registers through the loops (the producer has few).
template <int kBM>
__device__ __forceinline__ int row_block_count(const FwdParams& p) {
  return (p.max_seqlen_q + kBM - 1) / kBM;
}

template <int kBM>
__device__ __forceinline__ int row_block_work_tiles(const FwdParams& p) {
  return row_block_count<kBM>(p) * p.heads_q * p.batch;
}

// The rows [m0, m0 + block_m) of one head of one sequence and the K/V tiles [tile_begin,
// tile_end) holding the keys some valid row of them sees. Producer and consumers derive the
// same ranges.
struct RowBlockWork {
  SeqInfo seq;
  int m0, head, batch, tile_begin, tile_end;
};

// The work tile of `index` in the strided schedule.
template <class Cfg>
__device__ __forceinline__ WorkTile strided_work_tile(const FwdParams& p, int index) {
  return work_tile<Cfg::kCausal>(index, row_block_count<Cfg::kBlockM>(p), p.heads_q);
}

template <class Cfg>
__device__ __forceinline__ RowBlockWork describe_row_block(const FwdParams& p,
                                                           const WorkTile& tile) {
  constexpr int kBM = Cfg::kBlockM, kBN = Cfg::kBlockN;
  RowBlockWork w;
  w.seq = sequence_info<Cfg::kLayout>(p, tile.batch);
  w.m0 = tile.block * kBM;
  w.head = tile.head;
  w.batch = tile.batch;
  const KeyMask<Cfg::kCausal, Cfg::kWindow> mask(p, w.seq);
  const int row_hi = min(w.m0 + kBM, w.seq.len_q) - 1;
  int key_lo = 0, key_hi = 0;  // keys [key_lo, key_hi) visible to some valid row of the block
  if (row_hi >= w.m0) {
    key_lo = mask.key_begin(w.m0);
    key_hi = mask.key_end(row_hi);
  }
  w.tile_begin = key_lo / kBN;
  w.tile_end = key_hi > key_lo ? (key_hi + kBN - 1) / kBN : w.tile_begin;
  return w;
}

// The dynamic schedule. The producer's leader (thread 0) takes work tile indices from the
// counter, maps each to its tile and publishes the tile in slot t % 2 of the three `slots` (the
// CTA's t-th tile): to the producer warpgroup through named barrier 1, to the consumers through
// bar_q, whose phase the tile's row tiles (or, without them, the leader's plain arrival) complete.
// A slot is written again two tiles later, once the consumers have released the row tiles of the
// tile in between, and so have read it. After the last tile, a tile of batch -1 tells both roles to
// stop.

// Row blocks of sequence b that hold valid rows.
template <class Cfg>
__device__ __forceinline__ int sequence_row_blocks(const FwdParams& p, int b) {
  return (sequence_info<Cfg::kLayout>(p, b).len_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
}

// Row blocks of the longest sequence in the padded layout, whose padding rows the kernel writes as
// zeros; 0 in the other layouts, which have none.
template <class Cfg>
__device__ __forceinline__ int padded_row_blocks(const FwdParams& p) {
  return Cfg::kLayout == Layout::kPadded ? (p.max_seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM : 0;
}

// Publishes a tile that brings no row tiles: a plain arrival on bar_q once the consumers released
// the previous row tiles.
__device__ __forceinline__ void publish_without_rows(unsigned bar_q, unsigned bar_q_empty,
                                                     unsigned& free_parity, bool leader) {
  if (leader) {
    mbarrier_wait(bar_q_empty, free_parity);
    mbarrier_arrive(bar_q);
  }
  free_parity ^= 1;
}

// Producer, dynamic schedule: every work tile of the CTA, published, and loaded by load_tile(tile),
// which returns false for a tile with no keys to visit (it then loads nothing). find_tile(index,
// cursor) maps a counter index to its work tile (dynamic_work_tile). The leader takes the next
// index as soon as it has published a tile, so that the atomic's latency hides behind the tile's
// loads, and keeps that index and its walk over the sequences in the third slot rather than in the
// producer's few registers. bar_q and bar_q_empty are the barriers of whatever the tile brings
// along (the dK/dV kernel: its K and V).
template <class FindTile, class LoadTile>
__device__ __forceinline__ void produce_dynamic(TileCounter* counter, unsigned slots,
                                                unsigned bar_q, unsigned bar_q_empty,
                                                unsigned& free_parity, bool leader,
                                                FindTile&& find_tile, LoadTile&& load_tile) {
  const unsigned position = slots + 2 * sm90_work_tile_bytes();
  if (leader) store_shared_ints(position, take_work_tile(counter), 0, 0);
  for (int t = 0;; ++t) {
    const unsigned slot = slots + (t & 1) * sm90_work_tile_bytes();
    if (leader) {
      int index;
      ScheduleCursor cursor;
      load_shared_ints(position, index, cursor.batch, cursor.first);
      const WorkTile next = find_tile(index, cursor);
      store_work_tile(slot, next);
      if (next.batch >= 0) {
        store_shared_ints(position, take_work_tile(counter), cursor.batch, cursor.first);
      } else {
        finish_work_tiles(counter);
      }
    }
    named_barrier_sync(1, 128);
    const WorkTile tile = load_work_tile(slot);
    if (tile.batch < 0) {
      publish_without_rows(bar_q, bar_q_empty, free_parity, leader);
      return;
    }
    if (!load_tile(tile)) publish_without_rows(bar_q, bar_q_empty, free_parity, leader);
  }
}

// Consumers: wait for the phase q_parity of the row tiles' barrier (the row tiles landed, or in
// the dynamic schedule a tile was published).
__device__ __forceinline__ void wait_row_tiles(unsigned bar_q, unsigned& q_parity) {
  mbarrier_wait(bar_q, q_parity);
  q_parity ^= 1;
}

// Consumers, dynamic schedule: the CTA's t-th work tile, once published.
__device__ __forceinline__ WorkTile next_published_tile(unsigned slots, int t, unsigned bar_q,
                                                        unsigned& q_parity) {
  wait_row_tiles(bar_q, q_parity);
  return load_work_tile(slots + (t & 1) * sm90_work_tile_bytes());
}

// Consumers, dynamic schedule: a tile with no keys to visit releases its (absent) row tiles at
// once; lane 0 of each warp arrives.
__device__ __forceinline__ void release_row_tiles(unsigned bar_q_empty, int lane) {
  if (lane == 0) mbarrier_arrive(bar_q_empty);
}

// The ring of K/V stages in shared memory: stage s holds K at k + s * kKVBytes and V at
// v + s * kKVBytes; its full barrier (K and V landed) at full + 8 s, its empty barrier (the
// consumers are done with it) at empty + 8 s.
struct KvRing {
  unsigned k, v, full, empty;
};

// Thread 0 initializes the barriers: each stage's full (the producer's TMA or its warpgroup's
// arrival) and empty (one arrival per consumer warp), and the row tiles' pair; then the CTA syncs.
template <int kStages, int kConsumers>
__device__ __forceinline__ void init_row_block_barriers(const KvRing& kv, unsigned bar_q,
                                                        unsigned bar_q_empty, int tid) {
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(kv.full + 8 * s, 1);
      mbarrier_init(kv.empty + 8 * s, 4 * kConsumers);
    }
    mbarrier_init(bar_q, 1);
    mbarrier_init(bar_q_empty, 4 * kConsumers);
    fence_barrier_init();
  }
  __syncthreads();
}

// Producer: a work tile's row tiles (forward: Q; dQ: Q and dO) into their buffers, once the
// consumers released the previous ones (the phase of parity free_parity, flipped here). Whole
// tiles by TMA: thread 0 (leader) calls tma(row, batch_coord) to issue the loads of `bytes` bytes
// on bar_q. A tile that crosses the end of a padded or packed sequence with cp.async by the whole
// warpgroup: copy_tail() copies it and waits for its copies. Only the leader tracks the barriers'
// phases (a parity wait cannot tell a phase from the one two later); named barrier 1 passes the
// free buffers on to the rest of the warpgroup.
template <class Cfg, class Tma, class Tail>
__device__ __forceinline__ void load_row_tiles(const RowBlockWork& w, unsigned bar_q,
                                               unsigned bar_q_empty, unsigned& free_parity,
                                               unsigned bytes, bool leader, Tma&& tma,
                                               Tail&& copy_tail) {
  constexpr Layout kLayout = Cfg::kLayout;
  if (kLayout == Layout::kDense || w.m0 + Cfg::kBlockM <= w.seq.len_q) {
    if (leader) {
      mbarrier_wait(bar_q_empty, free_parity);
      mbarrier_arrive_expect_tx(bar_q, bytes);
      tma(static_cast<int>(w.seq.q_token0) + w.m0, kLayout == Layout::kVarlen ? 0 : w.batch);
    }
  } else {
    if (leader) mbarrier_wait(bar_q_empty, free_parity);
    named_barrier_sync(1, 128);
    copy_tail();
    fence_proxy_async();
    named_barrier_sync(1, 128);
    if (leader) mbarrier_arrive(bar_q);
  }
  free_parity ^= 1;
}

// Producer: the K/V tiles of a work tile into the ring, the whole ones by TMA (thread 0), then
// at most one that crosses the sequence's end (the last) with cp.async by the whole warpgroup.
// Only thread 0 waits on the empty barriers; named barrier 1 passes a free stage on.
template <class Cfg, int kStages>
__device__ __forceinline__ void load_kv_tiles(const FwdParams& p, const TmaDescriptor* k_map,
                                              const TmaDescriptor* v_map, const RowBlockWork& w,
                                              const KvRing& kv, RingPosition<kStages>& ring,
                                              int tid) {
  constexpr int kD = Cfg::kHeadDim, kBN = Cfg::kBlockN;
  constexpr int kSlabs = sm90_column_blocks(kD);
  constexpr int kKVBytes = sm90_tile_bytes(kD, kBN);
  constexpr Layout kLayout = Cfg::kLayout;
  const int batch_coord = kLayout == Layout::kVarlen ? 0 : w.batch;
  const int head_kv = w.head / (p.heads_q / p.heads_kv);
  const int whole_end = kLayout == Layout::kDense
                            ? w.tile_end
                            : max(w.tile_begin, min(w.tile_end, w.seq.len_k / kBN));
  if (tid == 0) {
    const int row0 = static_cast<int>(w.seq.k_token0);
    for (int tile = w.tile_begin; tile < whole_end; ++tile, ring.advance()) {
      mbarrier_wait(kv.empty + 8 * ring.stage, ring.phase ^ 1);
      mbarrier_arrive_expect_tx(kv.full + 8 * ring.stage, 2 * kKVBytes);
#pragma unroll
      for (int slab = 0; slab < kSlabs; ++slab) {
        const unsigned offset = ring.stage * kKVBytes + slab * kBN * 128;
        tma_load_4d(kv.k + offset, k_map, kv.full + 8 * ring.stage, slab * 64, row0 + tile * kBN,
                    head_kv, batch_coord);
        tma_load_4d(kv.v + offset, v_map, kv.full + 8 * ring.stage, slab * 64, row0 + tile * kBN,
                    head_kv, batch_coord);
      }
    }
  } else {
    ring.advance(whole_end - w.tile_begin);
  }
  if (whole_end < w.tile_end) {
    const int n0 = whole_end * kBN;
    if (tid == 0) mbarrier_wait(kv.empty + 8 * ring.stage, ring.phase ^ 1);
    named_barrier_sync(1, 128);
    const unsigned short* k = static_cast<const unsigned short*>(p.k) + w.seq.k_start +
                              head_kv * p.k_head_stride + n0 * p.k_seq_stride;
    const unsigned short* v = static_cast<const unsigned short*>(p.v) + w.seq.k_start +
                              head_kv * p.v_head_stride + n0 * p.v_seq_stride;
    load_tile_swizzled<kD, kBN>(kv.k + ring.stage * kKVBytes, k, p.k_seq_stride, w.seq.len_k - n0,
                                tid);
    load_tile_swizzled<kD, kBN>(kv.v + ring.stage * kKVBytes, v, p.v_seq_stride, w.seq.len_k - n0,
                                tid);
    fence_proxy_async();
    named_barrier_sync(1, 128);
    if (tid == 0) mbarrier_arrive(kv.full + 8 * ring.stage);
    ring.advance();
  }
}

// Producer: every work tile of the CTA in Cfg's schedule, each loaded by load_rows(tile) (its row
// tiles, as load_row_tiles; false for a tile with no keys to visit, which loads nothing) and then
// its K/V tiles into the ring. The ring position runs on across work tiles.
template <class Cfg, int kStages, class LoadRows>
__device__ __forceinline__ void produce_row_blocks(const FwdParams& p, TileCounter* counter,
                                                   const TmaDescriptor* k_map,
                                                   const TmaDescriptor* v_map, unsigned slots,
                                                   unsigned bar_q, unsigned bar_q_empty,
                                                   unsigned& free_parity, const KvRing& kv,
                                                   RingPosition<kStages>& ring, int tid,
                                                   LoadRows&& load_rows) {
  if constexpr (Cfg::kDynamicSchedule) {
    produce_dynamic(
        counter, slots, bar_q, bar_q_empty, free_parity, tid == 0,
        [&](int index, ScheduleCursor& cursor) {
          return dynamic_work_tile < Cfg::kCausal
                     ? TileOrder::last_block_first
                     : TileOrder::by_head > (index, p.heads_q, p.batch, padded_row_blocks<Cfg>(p),
                                             cursor,
                                             [&](int b) { return sequence_row_blocks<Cfg>(p, b); });
        },
        [&](const WorkTile& tile) {
          if (!load_rows(tile)) return false;
          load_kv_tiles<Cfg>(p, k_map, v_map, describe_row_block<Cfg>(p, tile), kv, ring, tid);
          return true;
        });
  } else {
    for (int index = blockIdx.x; index < row_block_work_tiles<Cfg::kBlockM>(p);
         index += gridDim.x) {
      if (load_rows(strided_work_tile<Cfg>(p, index))) {
        load_kv_tiles<Cfg>(p, k_map, v_map,
                           describe_row_block<Cfg>(p, strided_work_tile<Cfg>(p, index)), kv, ring,
                           tid);
      }
    }
  }
}

// A consumer warpgroup's pass over the K/V tiles [tile_begin, tile_end) of work tile w, whose row
// tiles have landed (wait_row_tiles): per K/V tile issues the score GEMMs (issue_scores(stage),
// committed), runs the elementwise step on their results (elementwise(tile), which first fences
// the score accumulators), packs the update's A fragments (pack()) and issues the update GEMM into
// `acc` (issue_update(stage), committed). The score GEMMs of tile j + 1 and the update of tile j
// are in flight while tile j + 1's elementwise step runs; two consumers' GEMMs take turns. Each
// stage goes back to the producer once its update completed, the row tiles once the last scores
// did.
template <int kStages, bool kTurns, int kAcc, class Scores, class Elementwise, class Pack,
          class Update>
__device__ __forceinline__ void consume_row_block(const RowBlockWork& w, const KvRing& kv,
                                                  unsigned bar_q_empty, RingPosition<kStages>& ring,
                                                  const Turns<kTurns>& turns, int lane,
                                                  float (&acc)[kAcc], Scores&& issue_scores,
                                                  Elementwise&& elementwise, Pack&& pack,
                                                  Update&& issue_update) {
  mbarrier_wait(kv.full + 8 * ring.stage, ring.phase);
  issue_scores(ring.stage);
  wgmma_wait<0>();
  elementwise(w.tile_begin);
  pack();
  for (int tile = w.tile_begin; tile + 1 < w.tile_end; ++tile) {
    const int stage = ring.stage;
    ring.advance();
    mbarrier_wait(kv.full + 8 * ring.stage, ring.phase);
    turns.wait();
    issue_scores(ring.stage);
    issue_update(stage);
    turns.pass();
    wgmma_wait<1>();
    elementwise(tile + 1);
    wgmma_wait<0>();
    fence_operands(acc);
    if (lane == 0) mbarrier_arrive(kv.empty + 8 * stage);
    pack();
  }
  // Every score GEMM of the work tile has completed: the producer may load the next row tiles.
  if (lane == 0) mbarrier_arrive(bar_q_empty);
  turns.wait();
  issue_update(ring.stage);
  turns.pass();
  wgmma_wait<0>();
  fence_operands(acc);
  if (lane == 0) mbarrier_arrive(kv.empty + 8 * ring.stage);
  ring.advance();
}

// The elements of for_each_probability, with the masks applied (kMasked) or not looked at.
template <class Cfg, bool kMasked, class Mask, class F>
__device__ __forceinline__ void apply_probabilities(const float (&acc_s)[Cfg::kBlockN / 2],
                                                    const Sigmoid<Cfg::kAccurateSigmoid>& sigmoid,
                                                    const Mask& mask, float shift_bias, float bias,
                                                    const float* score_mod, int len_k, int row0,
                                                    int n0, int lane, F& f) {
#pragma unroll
  for (int nt = 0; nt < Cfg::kBlockN / 8; ++nt) {
    const int col = n0 + nt * 8 + 2 * (lane % 4);
    float shift[2];
    sigmoid.template column_shifts<Cfg::kScoreMod>(shift, shift_bias, bias, score_mod, col, len_k);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float prob = sigmoid(acc_s[nt * 4 + e], shift[e % 2]);
      if (kMasked && !mask.visible(row0 + (e / 2) * 8, col + e % 2)) prob = 0.0f;
      f(nt * 4 + e, prob);
    }
  }
}

// The sigmoid over one consumer warpgroup's 64 x block_n score fragment, the keys from n0: for
// each of the thread's elements i, f(i, P) with P = sigma(scale S + bias + score_mod), or 0 where
// the masks hide the key. wg_row0 is the warpgroup's first row, row0 the thread's (and row0 + 8).
// A fragment no mask touches takes a path of its own: with one path the compiler predicates every
// element's mask test, which costs more issue slots than the sigmoid's two FFMAs.
template <class Cfg, class Mask, class F>
__device__ __forceinline__ void for_each_probability(const float (&acc_s)[Cfg::kBlockN / 2],
                                                     const Sigmoid<Cfg::kAccurateSigmoid>& sigmoid,
                                                     const Mask& mask, float shift_bias, float bias,
                                                     const float* score_mod, int len_k, int wg_row0,
                                                     int row0, int n0, int lane, F&& f) {
  if (Cfg::kSeqLenX128 && !Cfg::kCausal && !Cfg::kWindow) {
    apply_probabilities<Cfg, false>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, len_k, row0,
                                    n0, lane, f);
  } else if (mask.tile_unmasked(wg_row0, wg_row0 + 63, n0, n0 + Cfg::kBlockN - 1)) {
    apply_probabilities<Cfg, false>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, len_k, row0,
                                    n0, lane, f);
  } else {
    apply_probabilities<Cfg, true>(acc_s, sigmoid, mask, shift_bias, bias, score_mod, len_k, row0,
                                   n0, lane, f);
  }
}

// The thread's rows row and row + 8 (from the block's first) of a 64-row warpgroup's kD-wide
// fp32 fragment, times scale, as 16-bit values into rows of `block` (the block's first row, rows
// seq_stride elements apart): zeros from rows_valid on (padding rows), nothing from rows_stored on.
template <bool kBf16, int kD>
__device__ __forceinline__ void store_fragment_rows(unsigned short* block, long long seq_stride,
                                                    const float (&acc)[kD / 2], float scale,
                                                    int row, int rows_valid, int rows_stored,
                                                    int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row + 8 * half;
    if (r >= rows_stored) continue;
    const bool valid = r < rows_valid;
    unsigned* out = reinterpret_cast<unsigned*>(block + r * seq_stride + 2 * (lane % 4));
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      out[nt * 4] =
          valid ? pack2<kBf16>(acc[nt * 4 + 2 * half] * scale, acc[nt * 4 + 2 * half + 1] * scale)
                : 0u;
    }
  }
}

}  // namespace sigattn
