// The dynamic shared-memory layout of every kernel as a function of its tile parameters: where
// each buffer starts, and the bytes the kernel asks for. The kernels take their offsets from here
// and the generator's smem_bytes() takes the totals, so the two cannot disagree. Plain C++ that
// compiles under NVRTC (device code, no standard headers) and in host code (the generator).
#pragma once

#if defined(__CUDACC__)
#define SIGATTN_LAYOUT_FN __host__ __device__ constexpr
#else
#define SIGATTN_LAYOUT_FN constexpr
#endif

namespace sigattn {

// `count` equal slots of `slot_bytes` from `offset` (bytes from the layout's base): a ring of
// pipeline stages, a single tile (count 1) or a buffer the variant does without (count 0).
struct SmemBuffer {
  int offset;
  int slot_bytes;
  int count;

  SIGATTN_LAYOUT_FN int slot(int i) const { return offset + i * slot_bytes; }
  SIGATTN_LAYOUT_FN int bytes() const { return slot_bytes * count; }
  SIGATTN_LAYOUT_FN int end() const { return offset + bytes(); }
};

SIGATTN_LAYOUT_FN int round_up(int value, int multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Places buffers one after another, each at the next multiple of its alignment.
struct SmemPlacer {
  int end = 0;

  SIGATTN_LAYOUT_FN SmemBuffer place(int slot_bytes, int count, int alignment) {
    const int offset = round_up(end, alignment);
    end = offset + slot_bytes * count;
    return SmemBuffer{offset, slot_bytes, count};
  }
};

// fp16 and bf16, the only input types, are 16-bit.
SIGATTN_LAYOUT_FN int element_bytes() { return 2; }

// ---- sm80 family: row-major tiles of 16-bit elements, read with ldmatrix and filled with
// cp.async, both of which need 16-byte aligned rows. The base is __align__(16).

SIGATTN_LAYOUT_FN int sm80_alignment() { return 16; }

// The head dim padded to whole k16 steps of mma.sync.
SIGATTN_LAYOUT_FN int sm80_padded_dim(int head_dim) { return round_up(head_dim, 16); }

// The backward kernels split head dims above 128 into slices of whole n16 column pairs, one CTA
// each, so that the dK/dV or dQ accumulators stay in registers.
SIGATTN_LAYOUT_FN int sm80_slices(int head_dim) { return (head_dim + 127) / 128; }
SIGATTN_LAYOUT_FN int sm80_slice_width(int head_dim) {
  return (sm80_padded_dim(head_dim) / 16 + sm80_slices(head_dim) - 1) / sm80_slices(head_dim) * 16;
}

// The backward's row: every slice of the head dim (at least the padded head dim).
SIGATTN_LAYOUT_FN int sm80_sliced_dim(int head_dim) {
  return sm80_slices(head_dim) * sm80_slice_width(head_dim);
}

// A 16-byte pad per shared row makes the row stride an odd number of 16-byte units, so the eight
// rows one ldmatrix phase reads fall in distinct bank groups.
SIGATTN_LAYOUT_FN int sm80_row_stride(int row_elements) { return row_elements + 8; }

// Elements per shared row: the forward's rows hold the padded head dim, the backward's every slice.
SIGATTN_LAYOUT_FN int fwd_sm80_row_stride(int head_dim) {
  return sm80_row_stride(sm80_padded_dim(head_dim));
}
SIGATTN_LAYOUT_FN int bwd_sm80_row_stride(int head_dim) {
  return sm80_row_stride(sm80_sliced_dim(head_dim));
}

// The one-pass backward's dS^T: block_n key rows of block_m queries, padded like the other rows.
SIGATTN_LAYOUT_FN int sm80_ds_row_stride(int block_m) { return sm80_row_stride(block_m); }

// Bytes of `rows` shared rows of `stride` elements.
SIGATTN_LAYOUT_FN int sm80_tile_bytes(int rows, int stride) {
  return rows * stride * element_bytes();
}

// The kernels that walk query row blocks: the row tiles once (forward: Q; dQ: Q and dO), K and
// V per stage.
struct RowBlockSm80Storage {
  SmemBuffer q, dout, k, v;  // `dout` has count 0 in the forward
  int bytes;
};

SIGATTN_LAYOUT_FN RowBlockSm80Storage row_block_sm80_storage(int row_stride, int block_m,
                                                             int block_n, int stages,
                                                             int row_tiles) {
  SmemPlacer at;
  RowBlockSm80Storage s{};
  s.q = at.place(sm80_tile_bytes(block_m, row_stride), 1, sm80_alignment());
  s.dout = at.place(sm80_tile_bytes(block_m, row_stride), row_tiles - 1, sm80_alignment());
  s.k = at.place(sm80_tile_bytes(block_n, row_stride), stages, sm80_alignment());
  s.v = at.place(sm80_tile_bytes(block_n, row_stride), stages, sm80_alignment());
  s.bytes = at.end;
  return s;
}

SIGATTN_LAYOUT_FN RowBlockSm80Storage fwd_sm80_storage(int head_dim, int block_m, int block_n,
                                                       int stages) {
  return row_block_sm80_storage(fwd_sm80_row_stride(head_dim), block_m, block_n, stages, 1);
}

SIGATTN_LAYOUT_FN RowBlockSm80Storage bwd_dq_sm80_storage(int head_dim, int block_m, int block_n,
                                                          int stages) {
  return row_block_sm80_storage(bwd_sm80_row_stride(head_dim), block_m, block_n, stages, 2);
}

// dK/dV: K and V once, Q and dO per stage; the one-pass split adds the dS^T tile.
struct BwdDkdvSm80Storage {
  SmemBuffer k, v, q, dout, ds;
  int bytes;
};

SIGATTN_LAYOUT_FN BwdDkdvSm80Storage bwd_dkdv_sm80_storage(int head_dim, int block_m, int block_n,
                                                           int stages, bool atomic_dq) {
  const int stride = bwd_sm80_row_stride(head_dim);
  SmemPlacer at;
  BwdDkdvSm80Storage s{};
  s.k = at.place(sm80_tile_bytes(block_n, stride), 1, sm80_alignment());
  s.v = at.place(sm80_tile_bytes(block_n, stride), 1, sm80_alignment());
  s.q = at.place(sm80_tile_bytes(block_m, stride), stages, sm80_alignment());
  s.dout = at.place(sm80_tile_bytes(block_m, stride), stages, sm80_alignment());
  s.ds = at.place(sm80_tile_bytes(block_n, sm80_ds_row_stride(block_m)), atomic_dq ? 1 : 0,
                  sm80_alignment());
  s.bytes = at.end;
  return s;
}

// ---- sm90 family: tiles in column blocks of 64 elements (128-byte rows, the span of TMA's and
// wgmma's 128-byte swizzle), each block starting on the swizzle's 1024-byte atom of 8 rows. The
// kernel aligns its base to 1024 bytes at run time, so it asks for 1024 bytes of slack. The
// mbarriers (8 bytes each) follow the tiles, rounded up to 128 bytes.

SIGATTN_LAYOUT_FN int sm90_tile_alignment() { return 1024; }
SIGATTN_LAYOUT_FN int sm90_barrier_bytes() { return 8; }
SIGATTN_LAYOUT_FN int sm90_base_slack() { return 1024; }
SIGATTN_LAYOUT_FN int sm90_barrier_area_granule() { return 128; }

// Column blocks of 64 elements in a row of head_dim.
SIGATTN_LAYOUT_FN int sm90_column_blocks(int head_dim) { return (head_dim + 63) / 64; }

// Bytes of a tile of `rows` rows of head_dim elements; column block b starts at b * rows * 128.
SIGATTN_LAYOUT_FN int sm90_tile_bytes(int head_dim, int rows) {
  return sm90_column_blocks(head_dim) * rows * 128;
}

// The bytes a layout whose buffers end at `end` asks for: the slack before, the barriers' 128.
SIGATTN_LAYOUT_FN int sm90_total_bytes(int end) {
  return sm90_base_slack() + round_up(end, sm90_barrier_area_granule());
}

// The dynamic schedule's 16-byte slots of three ints: two alternating ones that hand a work tile
// (row block, head, sequence) from the producer to the consumers, and the producer's position.
SIGATTN_LAYOUT_FN int sm90_work_tile_bytes() { return 16; }

// The kernels that walk query row blocks (forward: Q; dQ: Q and dO) and stream K/V tiles through
// a ring: each stage's full barrier (K and V landed) and empty barrier (the consumers are done
// with it), and the row tiles' own pair. The dQ kernel's column split adds what its two
// warpgroups exchange per K/V tile (count 0 elsewhere, which leaves the other layouts as they
// are): two buffers of sigmoid slopes P (1 - P), 64 rows of block_n 16-bit values, and two of dS,
// 64 rows in 128-byte swizzled column blocks of 64 keys (wgmma's A operand), alternating over the
// tiles, each with a full and an empty barrier. The dynamic schedule adds its three slots.
struct RowBlockSm90Storage {
  SmemBuffer q, dout, k, v, slopes, ds;
  SmemBuffer bar_full, bar_empty, bar_q, bar_q_empty, bar_slopes_full, bar_slopes_empty,
      bar_ds_full, bar_ds_empty, work_tiles;
  int bytes;
};

// row_tiles: 1 for the forward (Q), 2 for dQ (Q and dO; `dout` has count 0 in the forward).
SIGATTN_LAYOUT_FN RowBlockSm90Storage row_block_sm90_storage(int head_dim, int block_m, int block_n,
                                                             int stages, int row_tiles,
                                                             bool dynamic_schedule,
                                                             bool column_split) {
  SmemPlacer at;
  RowBlockSm90Storage s{};
  const int exchanged = column_split ? 2 : 0;
  s.q = at.place(sm90_tile_bytes(head_dim, block_m), 1, sm90_tile_alignment());
  s.dout = at.place(sm90_tile_bytes(head_dim, block_m), row_tiles - 1, sm90_tile_alignment());
  s.k = at.place(sm90_tile_bytes(head_dim, block_n), stages, sm90_tile_alignment());
  s.v = at.place(sm90_tile_bytes(head_dim, block_n), stages, sm90_tile_alignment());
  s.slopes = at.place(64 * block_n * element_bytes(), exchanged, sm90_tile_alignment());
  s.ds = at.place(64 * round_up(block_n, 64) * element_bytes(), exchanged, sm90_tile_alignment());
  s.bar_full = at.place(sm90_barrier_bytes(), stages, sm90_barrier_bytes());
  s.bar_empty = at.place(sm90_barrier_bytes(), stages, sm90_barrier_bytes());
  s.bar_q = at.place(sm90_barrier_bytes(), 1, sm90_barrier_bytes());
  s.bar_q_empty = at.place(sm90_barrier_bytes(), 1, sm90_barrier_bytes());
  s.bar_slopes_full = at.place(sm90_barrier_bytes(), exchanged, sm90_barrier_bytes());
  s.bar_slopes_empty = at.place(sm90_barrier_bytes(), exchanged, sm90_barrier_bytes());
  s.bar_ds_full = at.place(sm90_barrier_bytes(), exchanged, sm90_barrier_bytes());
  s.bar_ds_empty = at.place(sm90_barrier_bytes(), exchanged, sm90_barrier_bytes());
  s.work_tiles = at.place(sm90_work_tile_bytes(), dynamic_schedule ? 3 : 0, sm90_work_tile_bytes());
  s.bytes = sm90_total_bytes(at.end);
  return s;
}

SIGATTN_LAYOUT_FN RowBlockSm90Storage fwd_sm90_storage(int head_dim, int block_m, int block_n,
                                                       int stages, bool dynamic_schedule) {
  return row_block_sm90_storage(head_dim, block_m, block_n, stages, 1, dynamic_schedule, false);
}

// The dQ kernel's warpgroups own 64 rows each (block_m 64 or 128, one or two consumer
// warpgroups), or in the column split (block_m 64 on 12 warps) both own the same 64 rows and each
// one part of dQ's columns, which keeps dQ of head dims above 192 in registers: the first
// warpgroup computes S, P and the slopes and the columns of dq_sm90_left_columns, the second dP,
// dS and the columns after them.
SIGATTN_LAYOUT_FN bool dq_sm90_column_split(int block_m, int warps) {
  return block_m == 64 && warps == 12;
}

// The first warpgroup's columns: half the 64-column blocks, rounded up (whole blocks, so that the
// second warpgroup's part of K starts on one).
SIGATTN_LAYOUT_FN int dq_sm90_left_columns(int head_dim) {
  return 64 * ((sm90_column_blocks(head_dim) + 1) / 2);
}

SIGATTN_LAYOUT_FN RowBlockSm90Storage bwd_dq_sm90_storage(int head_dim, int block_m, int block_n,
                                                          int stages, bool dynamic_schedule,
                                                          bool column_split) {
  return row_block_sm90_storage(head_dim, block_m, block_n, stages, 2, dynamic_schedule,
                                column_split);
}

// The dK/dV kernel's two consumer warpgroups own 64 keys and both gradients each (block_n 128),
// or share 64 keys with one gradient each (block_n 64: dV in one, dK in the other), which halves
// the accumulators per thread for head dims above 128.
SIGATTN_LAYOUT_FN bool dkdv_sm90_gradient_split(int block_n) { return block_n == 64; }

// dK/dV: K and V once; Q and dO per stage with the stage's full and empty barriers; K/V's barrier.
// The one-pass split adds two dS^T buffers (block_n key rows of block_m queries, in column blocks
// of 64 queries), which alternate so that a step's stores never meet the other warpgroup's reads
// of the step before, each with a full and an empty barrier. The gradient split passes each
// step's sigmoid slopes P^T (1 - P^T), 16-bit, from the dV warpgroup to the dK warpgroup through
// two buffers of the same size and barriers. The persistent kernel of the dynamic schedule adds
// K/V's empty barrier (the consumers are done with a work tile's K and V) and the work tile slots.
struct BwdDkdvSm90Storage {
  SmemBuffer k, v, q, dout, ds;
  SmemBuffer bar_full, bar_empty, bar_kv, bar_ds_full, bar_ds_empty, bar_kv_empty, work_tiles;
  int bytes;
};

SIGATTN_LAYOUT_FN BwdDkdvSm90Storage bwd_dkdv_sm90_storage(int head_dim, int block_m, int block_n,
                                                           int stages, bool atomic_dq,
                                                           bool dynamic_schedule) {
  SmemPlacer at;
  BwdDkdvSm90Storage s{};
  s.k = at.place(sm90_tile_bytes(head_dim, block_n), 1, sm90_tile_alignment());
  s.v = at.place(sm90_tile_bytes(head_dim, block_n), 1, sm90_tile_alignment());
  s.q = at.place(sm90_tile_bytes(head_dim, block_m), stages, sm90_tile_alignment());
  s.dout = at.place(sm90_tile_bytes(head_dim, block_m), stages, sm90_tile_alignment());
  const bool staged = atomic_dq || dkdv_sm90_gradient_split(block_n);
  s.ds = at.place(block_n * block_m * element_bytes(), staged ? 2 : 0, sm90_tile_alignment());
  s.bar_full = at.place(sm90_barrier_bytes(), stages, sm90_barrier_bytes());
  s.bar_empty = at.place(sm90_barrier_bytes(), stages, sm90_barrier_bytes());
  s.bar_kv = at.place(sm90_barrier_bytes(), 1, sm90_barrier_bytes());
  s.bar_ds_full = at.place(sm90_barrier_bytes(), 2, sm90_barrier_bytes());
  s.bar_ds_empty = at.place(sm90_barrier_bytes(), 2, sm90_barrier_bytes());
  s.bar_kv_empty = at.place(sm90_barrier_bytes(), dynamic_schedule ? 1 : 0, sm90_barrier_bytes());
  s.work_tiles = at.place(sm90_work_tile_bytes(), dynamic_schedule ? 3 : 0, sm90_work_tile_bytes());
  s.bytes = sm90_total_bytes(at.end);
  return s;
}

}  // namespace sigattn
