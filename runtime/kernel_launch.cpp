// The table of kernel interfaces by family and direction, the grids they launch over, and the
// launch itself.
#include "runtime/kernel_launch.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/tile_counters.hpp"

namespace sigattn {
namespace {

constexpr Operand kForwardMaps[] = {Operand::q, Operand::k, Operand::v};
constexpr Operand kDkdvMaps[] = {Operand::q, Operand::grad_out};
constexpr Operand kDqMaps[] = {Operand::q, Operand::grad_out, Operand::k, Operand::v};

template <class Params>
KernelArgument without_maps(const DirectionParams& params, std::span<const TmaDescriptor>,
                            TileCounter*) {
  return std::get<Params>(params);
}

struct InterfaceEntry {
  gen::Direction direction;
  gen::Family family;
  KernelInterface interface;
};

// sm80: plain loads of any strides, one CTA per tile. sm90: TMA maps; the forward and dQ kernels
// are persistent, the dK/dV kernel (a key block and kv head per work tile, summing its GQA group)
// in its dynamic schedule.
const InterfaceEntry kInterfaces[] = {
    {gen::Direction::forward,
     gen::Family::sm80,
     {.tma_maps = {},
      .rows = TileRows::queries,
      .grid = GridShape::one_cta_per_tile,
      .argument = without_maps<FwdParams>}},
    {gen::Direction::forward,
     gen::Family::sm90,
     {.tma_maps = kForwardMaps,
      .rows = TileRows::queries,
      .grid = GridShape::persistent,
      .argument = [](const DirectionParams& params, std::span<const TmaDescriptor> maps,
                     TileCounter* tile_counter) -> KernelArgument {
        return FwdSm90Params{std::get<FwdParams>(params), maps[0], maps[1], maps[2], tile_counter};
      }}},
    {gen::Direction::dkdv,
     gen::Family::sm80,
     {.tma_maps = {},
      .rows = TileRows::keys,
      .grid = GridShape::one_cta_per_tile,
      .argument = without_maps<BwdParams>}},
    {gen::Direction::dkdv,
     gen::Family::sm90,
     {.tma_maps = kDkdvMaps,
      .rows = TileRows::keys,
      .grid = GridShape::persistent_when_dynamic,
      .argument = [](const DirectionParams& params, std::span<const TmaDescriptor> maps,
                     TileCounter* tile_counter) -> KernelArgument {
        return BwdSm90Params{std::get<BwdParams>(params), maps[0], maps[1], tile_counter};
      }}},
    {gen::Direction::dq,
     gen::Family::sm80,
     {.tma_maps = {},
      .rows = TileRows::queries,
      .grid = GridShape::one_cta_per_tile,
      .argument = without_maps<BwdParams>}},
    {gen::Direction::dq,
     gen::Family::sm90,
     {.tma_maps = kDqMaps,
      .rows = TileRows::queries,
      .grid = GridShape::persistent,
      .argument = [](const DirectionParams& params, std::span<const TmaDescriptor> maps,
                     TileCounter* tile_counter) -> KernelArgument {
        return BwdDqSm90Params{
            std::get<BwdParams>(params), maps[0], maps[1], maps[2], maps[3], tile_counter};
      }}},
    // The query rows of a GQA group against the cache, split over the cache's key tiles.
    {gen::Direction::decode,
     gen::Family::sm80,
     {.tma_maps = {},
      .rows = TileRows::queries,
      .grid = GridShape::split_kv,
      .argument = without_maps<DecodeParams>}},
};

// What a generated program is: a kernel variant, or one of the KV-cache helpers of a spec (the
// variant's tile unused).
enum class Program { kernel, kv_append, decode_reduce };

std::string program_name(Program program, const gen::Variant& variant) {
  switch (program) {
    case Program::kv_append:
      return "kv_append " + gen::to_string(variant.spec);
    case Program::decode_reduce:
      return "decode_reduce " + gen::to_string(variant.spec);
    case Program::kernel:
      break;
  }
  return gen::to_string(variant);
}

// Generation is a pure function of what is generated (the templates are fixed at build time), so
// each program is generated and hashed once per process, and a launch pays a lookup by value (no
// name is formatted) rather than the generator's few microseconds. Entries are never erased, so
// the references stay valid. The generator reports a program it cannot build as
// std::invalid_argument; to the caller that is a bad tile argument.
const gen::GeneratedKernel& generated_once(Program program, const gen::Variant& variant,
                                           const std::function<gen::GeneratedKernel()>& generate) {
  static std::mutex mutex;
  static std::map<std::pair<Program, gen::Variant>, gen::GeneratedKernel> generated;
  std::lock_guard lock(mutex);
  const auto key = std::make_pair(program, variant);
  if (const auto found = generated.find(key); found != generated.end()) return found->second;
  try {
    return generated.emplace(key, generate()).first->second;
  } catch (const std::invalid_argument& error) {
    throw_invalid(
        fmt::format("cannot generate {}: {}", program_name(program, variant), error.what()));
  }
}

Grid grid_of(const KernelInterface& interface, const LoadedKernel& kernel,
             const gen::Variant& variant, const ForwardArgs& in) {
  if (interface.grid == GridShape::split_kv) {
    throw std::logic_error(
        fmt::format("{} is launched by launch_decode_kernel", gen::to_string(variant)));
  }
  const gen::TileConfig& tile = variant.tile;
  const bool keys = interface.rows == TileRows::keys;
  const int rows = keys ? in.max_seqlen_k : in.max_seqlen_q;
  const int block = keys ? tile.block_n : tile.block_m;
  const int heads = keys ? in.heads_kv : in.heads_q;
  const long long blocks = (rows + block - 1) / block;
  if (interface.grid == GridShape::persistent ||
      (interface.grid == GridShape::persistent_when_dynamic &&
       tile.schedule == gen::Schedule::dynamic)) {
    return {persistent_grid(kernel, tile, blocks, heads, in.batch), 1, 1};
  }
  return {static_cast<unsigned>(blocks * gen::grid_slices(variant)), static_cast<unsigned>(heads),
          static_cast<unsigned>(in.batch)};
}

}  // namespace

const KernelInterface& kernel_interface(gen::Direction direction, gen::Family family) {
  for (const InterfaceEntry& entry : kInterfaces) {
    if (entry.direction == direction && entry.family == family) return entry.interface;
  }
  throw std::logic_error(fmt::format("no kernel interface for {} of family {}",
                                     gen::to_string(direction), gen::to_string(family)));
}

std::string tma_obstacles(const gen::Variant& variant, const CallOperands& call) {
  const KernelInterface& interface = kernel_interface(variant.spec.direction, variant.tile.family);
  return tma_obstacles(call, interface.tma_maps, variant.spec.layout == gen::Layout::varlen);
}

LoadedKernel load_kernel(const gen::Variant& variant) {
  return ModuleCache::instance().load(
      generated_once(Program::kernel, variant, [&] { return gen::generate(variant); }));
}

LoadedKernel load_kv_append(const gen::KernelSpec& spec) {
  return ModuleCache::instance().load(generated_once(
      Program::kv_append, {spec, {}}, [&] { return gen::generate_kv_append(spec); }));
}

LoadedKernel load_decode_reduce(const gen::KernelSpec& spec) {
  return ModuleCache::instance().load(generated_once(
      Program::decode_reduce, {spec, {}}, [&] { return gen::generate_decode_reduce(spec); }));
}

void launch_kernel(const LoadedKernel& kernel, const gen::Variant& variant,
                   const CallOperands& call, const DirectionParams& params, CUstream stream) {
  const KernelInterface& interface = kernel_interface(variant.spec.direction, variant.tile.family);
  const bool varlen = variant.spec.layout == gen::Layout::varlen;
  std::vector<TmaDescriptor> maps;
  for (const Operand operand : interface.tma_maps) {
    maps.push_back(encode_tma(call, operand, variant.tile, varlen));
  }
  const Grid grid = grid_of(interface, kernel, variant, call.inputs);
  TileCounter* tile_counter = variant.tile.schedule == gen::Schedule::dynamic
                                  ? TileCounters::instance().for_launch(stream)
                                  : nullptr;
  launch(kernel, interface.argument(params, maps, tile_counter), grid, stream);
}

void launch_decode_kernel(const LoadedKernel& kernel, const gen::Variant& variant,
                          const DecodeParams& params, CUstream stream) {
  const KernelInterface& interface = kernel_interface(variant.spec.direction, variant.tile.family);
  if (interface.grid != GridShape::split_kv) {
    throw std::logic_error(
        fmt::format("{} is not launched over a split-KV grid", gen::to_string(variant)));
  }
  const long long ctas = static_cast<long long>(params.row_blocks) * params.splits;
  if (ctas > std::numeric_limits<int>::max()) {
    throw_unsupported(fmt::format("{} row blocks x {} splits are more CTAs than a grid holds",
                                  params.row_blocks, params.splits));
  }
  launch(kernel, interface.argument(params, {}, nullptr),
         {static_cast<unsigned>(ctas), static_cast<unsigned>(params.heads_kv),
          static_cast<unsigned>(params.batch)},
         stream);
}

void launch(const LoadedKernel& kernel, KernelArgument argument, const Grid& grid,
            CUstream stream) {
  void* kernel_args[] = {std::visit([](auto& params) -> void* { return &params; }, argument)};
  SIGATTN_CU(cuda::driver().cuLaunchKernel(
      kernel.function, grid.x, grid.y, grid.z, static_cast<unsigned>(kernel.threads), 1, 1,
      static_cast<unsigned>(kernel.smem_bytes), stream, kernel_args, nullptr));
}

unsigned persistent_grid(const LoadedKernel& kernel, const gen::TileConfig& tile, long long blocks,
                         int heads, int batch) {
  const long long work_tiles = blocks * heads * batch;
  // The dynamic schedule's counter runs on past the last tile by one index per CTA, at most as
  // many as there are tiles.
  if (work_tiles > std::numeric_limits<int>::max() / 2) {
    throw_unsupported(fmt::format(
        "tile {} numbers its work tiles with int, and {} blocks x {} heads x {} sequences are {} "
        "of them",
        gen::to_string(tile), blocks, heads, batch, work_tiles));
  }
  const long long resident =
      static_cast<long long>(kernel.blocks_per_sm) * cuda::current_device_info().sm_count;
  return static_cast<unsigned>(std::max(1LL, std::min(work_tiles, resident)));
}

}  // namespace sigattn
