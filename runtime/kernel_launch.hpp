// The kernels as the launch sees them, one KernelInterface per family and direction: the operands
// the kernel streams through TMA maps, the Params struct it takes (the direction's parameters
// followed by those maps), and its grid (one CTA per work tile, or a persistent grid of as many
// CTAs as fit on the GPU). Loading a variant's kernel and the one cuLaunchKernel call are here too.
// The dynamic shared-memory limit is raised alike for every family when a module is loaded
// (runtime/module_cache.cpp).
#pragma once

#include <cuda.h>

#include <span>
#include <string>
#include <variant>

#include "generator/kernel_spec.hpp"
#include "runtime/kernel_params.hpp"
#include "runtime/module_cache.hpp"
#include "sigattn/bwd_params.h"
#include "sigattn/bwd_sm90_params.h"
#include "sigattn/decode_params.h"
#include "sigattn/fwd_params.h"
#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

// The parameters of a call in its direction: forward, backward (dK/dV, dQ and the conversion), or
// decode (the append, the attention and the sum of its splits).
using DirectionParams = std::variant<FwdParams, BwdParams, DecodeParams>;
// The one argument a kernel takes.
using KernelArgument =
    std::variant<FwdParams, FwdSm90Params, BwdParams, BwdSm90Params, BwdDqSm90Params, DecodeParams>;

enum class GridShape {
  // (row blocks x grid_slices, heads, batch): one CTA per work tile.
  one_cta_per_tile,
  // (CTAs resident on the GPU at once, 1, 1), each walking work tiles with stride gridDim.x or
  // taking them from the dynamic schedule's counter.
  persistent,
  // one_cta_per_tile in the strided schedule, persistent in the dynamic one.
  persistent_when_dynamic,
  // (row blocks x splits, heads_kv, batch): one CTA per split of a (batch, kv head, row block)'s
  // cache, the decode kernel's grid.
  split_kv,
};

// What a kernel's work tiles are blocks of, times heads and batch: query rows (block_m rows,
// heads_q heads) or key rows (block_n rows, heads_kv heads).
enum class TileRows { queries, keys };

struct KernelInterface {
  // The operands the kernel streams through TMA maps, in the order of its Params struct; none for
  // a kernel that reads every tensor with plain loads (any strides).
  std::span<const Operand> tma_maps;
  TileRows rows;
  GridShape grid;
  // The kernel's argument from the direction's parameters, the maps of tma_maps and the tile
  // counter of the dynamic schedule (null in the strided one).
  KernelArgument (*argument)(const DirectionParams& params, std::span<const TmaDescriptor> maps,
                             TileCounter* tile_counter);
};

const KernelInterface& kernel_interface(gen::Direction direction, gen::Family family);

// What keeps TMA maps from describing the operands that the kernel of `variant` streams (see
// tma_obstacles in kernel_params.hpp); empty when nothing does or it streams none.
std::string tma_obstacles(const gen::Variant& variant, const CallOperands& call);

// The kernel of `variant`, generated once per process and loaded in the current context. Throws
// Error(invalid_argument) when the generator cannot build it.
LoadedKernel load_kernel(const gen::Variant& variant);
// The KV-cache append and the sum of the split-KV partial outputs for a decode `spec`, each
// generated once per process and loaded in the current context.
LoadedKernel load_kv_append(const gen::KernelSpec& spec);
LoadedKernel load_decode_reduce(const gen::KernelSpec& spec);

// Launches the kernel of `variant` on `stream` with the argument and grid its interface gives.
void launch_kernel(const LoadedKernel& kernel, const gen::Variant& variant,
                   const CallOperands& call, const DirectionParams& params, CUstream stream);

struct Grid {
  unsigned x, y, z;
};

// Launches the decode kernel of `variant` over the split-KV grid of `params`.
void launch_decode_kernel(const LoadedKernel& kernel, const gen::Variant& variant,
                          const DecodeParams& params, CUstream stream);

// Launches `kernel` with `argument` over `grid`, with the kernel's threads and shared memory.
void launch(const LoadedKernel& kernel, KernelArgument argument, const Grid& grid, CUstream stream);

// The grid of a persistent sm90 kernel over blocks x heads x batch work tiles: as many CTAs as
// fit on the GPU at once, at most one per tile. Throws when twice the tiles outnumber an int (the
// dynamic schedule counts past the last tile).
unsigned persistent_grid(const LoadedKernel& kernel, const gen::TileConfig& tile, long long blocks,
                         int heads, int batch);

}  // namespace sigattn
