// The forward call behind sigattn::forward and the C ABI: argument validation, the KernelSpec a
// call needs, the tile config chosen for it, and the launch.
#pragma once

#include <initializer_list>
#include <sigattn/sigattn.hpp>
#include <string>
#include <string_view>

#include "generator/generator.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/module_cache.hpp"
#include "sigattn/fwd_params.h"
#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

// Validates everything that can be checked without touching device memory and returns the spec
// the call needs. Throws Error(invalid_argument / unsupported) naming the argument.
gen::KernelSpec forward_spec(const ForwardArgs& args);

// Runs the forward pass with an explicit tile config (tests and the tuner); forward() takes the
// tile from the tuning lookup chain (runtime/persistent_cache.hpp).
void forward_with_tile(const ForwardArgs& args, CUstream stream, const gen::TileConfig& tile);

}  // namespace sigattn

// Shared with the backward call (runtime/backward.cpp).
namespace sigattn {

void check_tensor(std::string_view name, const TensorRef& tensor, bool varlen);
void check_output_does_not_overlap(std::string_view name, const TensorRef& out, int batch, int seq,
                                   int heads, int head_dim, bool varlen);
void check_device_pointer(std::string_view name, const void* pointer);
void check_lengths_on_device(const ForwardArgs& args, CUstream stream);
FwdParams make_params(const ForwardArgs& args, gen::Layout layout);
policy::Target current_target();
gen::GeneratedKernel generate_for_launch(const gen::Variant& variant);
// A tensor an sm90 kernel streams through a TMA map: its name in messages, its view and its heads.
struct TmaTensor {
  std::string_view name;
  const TensorRef& tensor;
  int heads;
};
// What keeps TMA maps from describing `tensors` (a zero stride over several heads or sequences),
// as "k.batch_stride = 0 over 3 sequences, v.batch_stride = 0 over 3 sequences"; empty when
// nothing does.
std::string tma_obstacles(std::initializer_list<TmaTensor> tensors, int batch, bool varlen);
// The map of a tensor for the sm90 kernels: boxes of 64 elements by `box_rows` tokens of one head.
TmaDescriptor encode_tma(std::string_view name, const TensorRef& t, DType dtype, int head_dim,
                         int max_seqlen, int heads, int batch, bool varlen, int box_rows);
// The grid of a persistent sm90 kernel over blocks x heads x batch work tiles: as many CTAs as
// fit on the GPU at once, at most one per tile. Throws when the tiles outnumber an int.
unsigned persistent_grid(const LoadedKernel& kernel, const gen::TileConfig& tile, long long blocks,
                         int heads, int batch);

}  // namespace sigattn
