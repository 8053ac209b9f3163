// The schedules of the persistent Hopper kernels: a grid of as many CTAs as fit on the GPU at once
// walks the work tiles (block, head, batch).
// Strided: CTA i takes tiles i, i + gridDim.x, ... of every (block, head, batch) up to the longest
// sequence. Blocks are numbered fastest, so the tiles in flight together share their head's
// inputs in L2; kLongestFirst runs a head's blocks from the last to the first (causal query row
// blocks, where the last sees the most keys).
// Dynamic: CTAs take tile indices from a global counter. The indices name the blocks that hold
// valid rows first, sequence by sequence, each sequence's longest tiles first; then, in the padded
// layout, the blocks of padding rows, which only write zeros. The query row blocks of a causal
// forward or dQ grow longer towards the last; the key blocks of a causal dK/dV towards the first.
#pragma once

#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

struct WorkTile {
  int block;
  int head;
  int batch;  // -1: no tile is left
};

template <bool kLongestFirst>
__device__ __forceinline__ WorkTile work_tile(int index, int blocks, int heads) {
  WorkTile tile;
  const int block = index % blocks;
  tile.block = kLongestFirst ? blocks - 1 - block : block;
  const int head_batch = index / blocks;
  tile.head = head_batch % heads;
  tile.batch = head_batch / heads;
  return tile;
}

// How far a CTA's walk over the sequences has come: `first` is the index of the first work tile of
// sequence `batch` (its valid blocks), or of sequence batch - batch_count (its padding blocks).
struct ScheduleCursor {
  int batch = 0;
  int first = 0;
};

// The order of a sequence's valid tiles in the dynamic schedule: head by head, the blocks of a
// head together (they share its inputs in L2); or block by block, a block's heads together, from
// the last block or from the first (whichever is the longest).
enum class TileOrder { by_head, last_block_first, first_block_first };

// The work tile of `index` in the dynamic order, or batch -1 past the last one. row_blocks(b) is
// sequence b's count of blocks with valid rows, all_blocks the blocks of the longest sequence in
// the padded layout (0 otherwise): sequence b's blocks from row_blocks(b) to all_blocks hold only
// padding rows and come after every valid one. The valid tiles of a sequence come together, in
// kOrder: for causal masks the longest block first, so that a sequence's costliest tiles go first
// and the cheap ones fill the gaps at the end. The indices a cursor is asked for must not decrease
// (a CTA's indices from the counter only grow), so each CTA walks the sequences once.
template <TileOrder kOrder, class RowBlocks>
__device__ __forceinline__ WorkTile dynamic_work_tile(int index, int heads, int batch,
                                                      int all_blocks, ScheduleCursor& cursor,
                                                      RowBlocks&& row_blocks) {
  while (cursor.batch < batch) {
    const int blocks = row_blocks(cursor.batch);
    const int local = index - cursor.first;
    if (local < blocks * heads) {
      WorkTile tile;
      tile.batch = cursor.batch;
      if (kOrder == TileOrder::last_block_first) {
        tile.block = blocks - 1 - local / heads;
        tile.head = local % heads;
      } else if (kOrder == TileOrder::first_block_first) {
        tile.block = local / heads;
        tile.head = local % heads;
      } else {
        tile.head = local / blocks;
        tile.block = local % blocks;
      }
      return tile;
    }
    cursor.first += blocks * heads;
    ++cursor.batch;
  }
  while (all_blocks > 0 && cursor.batch < 2 * batch) {
    const int b = cursor.batch - batch;
    const int valid = row_blocks(b);
    const int padding = all_blocks - valid;
    const int local = index - cursor.first;
    if (local < padding * heads) {
      return WorkTile{valid + local % padding, local / padding, b};
    }
    cursor.first += padding * heads;
    ++cursor.batch;
  }
  return WorkTile{0, 0, -1};
}

// The next work tile index of the launch.
__device__ __forceinline__ int take_work_tile(TileCounter* counter) {
  return atomicAdd(&counter->next, 1);
}

// Once per CTA, after its last take_work_tile (which found no tile left): the last CTA to get here
// sets the counters back to zero for the next launch, when no CTA takes tiles any more.
__device__ __forceinline__ void finish_work_tiles(TileCounter* counter) {
  __threadfence();
  if (atomicAdd(&counter->done, 1) == static_cast<int>(gridDim.x) - 1) {
    __threadfence();
    atomicExch(&counter->next, 0);
    atomicExch(&counter->done, 0);
  }
}

// Three ints in (from) a 16-byte shared-memory slot.
__device__ __forceinline__ void store_shared_ints(unsigned slot, int a, int b, int c) {
  asm volatile("st.shared.v4.s32 [%0], {%1, %2, %3, %3};\n" ::"r"(slot), "r"(a), "r"(b), "r"(c)
               : "memory");
}

__device__ __forceinline__ void load_shared_ints(unsigned slot, int& a, int& b, int& c) {
  int words[4];
  asm volatile("ld.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(words[0]), "=r"(words[1]), "=r"(words[2]), "=r"(words[3])
               : "r"(slot)
               : "memory");
  a = words[0];
  b = words[1];
  c = words[2];
}

__device__ __forceinline__ void store_work_tile(unsigned slot, const WorkTile& tile) {
  store_shared_ints(slot, tile.block, tile.head, tile.batch);
}

__device__ __forceinline__ WorkTile load_work_tile(unsigned slot) {
  WorkTile tile;
  load_shared_ints(slot, tile.block, tile.head, tile.batch);
  return tile;
}

}  // namespace sigattn
