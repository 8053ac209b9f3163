// The static persistent schedule of the Hopper kernels: a grid of as many CTAs as fit on the GPU
// at once walks the work tiles (block, head, batch) with stride gridDim.x. Blocks are numbered
// fastest, so the tiles in flight together share their head's inputs in L2; kLongestFirst runs
// a head's blocks from the last to the first (causal query row blocks, where the last sees the
// most keys).
#pragma once

namespace sigattn {

struct WorkTile {
  int block;
  int head;
  int batch;
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

}  // namespace sigattn
