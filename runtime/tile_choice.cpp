// Tile choice for forward and backward calls, the check of forced tiles against the policy and the
// kernels' TMA maps, and the online-tuning request.
#include "runtime/tile_choice.hpp"

#include <fmt/format.h>

#include <span>
#include <string>

#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/online_tuning_hook.hpp"
#include "runtime/persistent_cache.hpp"

namespace sigattn {
namespace {

// "q", "q and grad_out", "q, k and v".
std::string listed(std::span<const Operand> operands) {
  std::string text;
  for (std::size_t i = 0; i < operands.size(); ++i) {
    if (i > 0) text += i + 1 == operands.size() ? " and " : ", ";
    text += operand_name(operands[i]);
  }
  return text;
}

cache::DeviceKey current_device(const policy::Target& target) {
  const cuda::DeviceInfo info = cuda::current_device_info();
  return {info.name, target.arch, info.sm_count};
}

// The target whose defaults are the portable family's: sm_90 without the a-features.
policy::Target portable_target() { return policy::target_for_arch("sm_90"); }

}  // namespace

policy::Target current_target() {
  const cuda::DeviceInfo info = cuda::current_device_info();
  return policy::target_for_arch(cuda::arch_for(info.cc_major, info.cc_minor));
}

void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target, const CallOperands& call) {
  const gen::Variant variant{spec, tile};
  if (const std::string why = policy::rejection(spec, tile, target); !why.empty()) {
    throw_invalid(fmt::format("tile {} cannot run {} on {}: {}", gen::to_string(tile),
                              gen::to_string(variant), target.arch, why));
  }
  if (const std::string obstacles = tma_obstacles(variant, call); !obstacles.empty()) {
    const KernelInterface& kernel = kernel_interface(spec.direction, tile.family);
    throw_invalid(fmt::format(
        "tile {} of {} streams {} through TMA maps, which cannot describe a zero stride over "
        "several heads or sequences: {}; a tile of the sm80 family reads such tensors ({}() "
        "chooses one)",
        gen::to_string(tile), gen::to_string(variant), listed(kernel.tma_maps), obstacles,
        spec.direction == gen::Direction::forward ? "forward" : "backward"));
  }
}

cache::TileChoice choose_forward_tile(const ForwardArgs& args, const gen::KernelSpec& spec,
                                      const policy::Target& target) {
  cache::TileChoice choice = PersistentCache::instance().choose_tile(
      spec, current_device(target), args.max_seqlen_q, args.max_seqlen_k, target);
  const std::string obstacles = tma_obstacles({spec, choice.tile}, CallOperands{args});
  if (obstacles.empty()) return choice;
  const policy::DefaultChoice portable = policy::default_tile(spec, portable_target());
  choice.reason = fmt::format("TMA maps cannot describe {}, so not {}: {}", obstacles,
                              gen::to_string(choice.tile), portable.reason);
  choice.tile = portable.tile;
  choice.served_by = cache::ServedBy::heuristic;
  return choice;
}

cache::TileChoice forward_tile_for_launch(const ForwardArgs& args, const gen::KernelSpec& spec,
                                          const policy::Target& target) {
  cache::TileChoice choice = choose_forward_tile(args, spec, target);
  if (choice.served_by == cache::ServedBy::heuristic) request_online_tuning(args, spec);
  return choice;
}

BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic) {
  const bool one_pass = !deterministic && policy::one_pass_by_default(specs.dkdv, target);
  return {policy::default_tile(specs.dkdv, target, one_pass).tile,
          policy::default_tile(specs.dq, target).tile};
}

BackwardTiles chosen_backward_tiles(const BackwardArgs& args, const BackwardSpecs& specs,
                                    const policy::Target& target, bool deterministic) {
  const BackwardTiles tiles = default_backward_tiles(specs, target, deterministic);
  const cache::DeviceKey device = current_device(target);
  PersistentCache& persistent = PersistentCache::instance();
  const ForwardArgs& in = args.inputs;
  const cache::TileChoice dkdv =
      persistent.choose_tile(specs.dkdv, device, in.max_seqlen_q, in.max_seqlen_k, target);
  const cache::TileChoice dq =
      persistent.choose_tile(specs.dq, device, in.max_seqlen_q, in.max_seqlen_k, target);
  BackwardTiles chosen = combine_backward_tiles(tiles, dkdv, dq, deterministic);
  const CallOperands call{in, &args.grad_out};
  const auto portable = [&] {
    return default_backward_tiles(specs, portable_target(), deterministic);
  };
  if (!tma_obstacles({specs.dkdv, chosen.dkdv}, call).empty()) chosen.dkdv = portable().dkdv;
  if (!tma_obstacles({specs.dq, chosen.dq}, call).empty()) chosen.dq = portable().dq;
  return chosen;
}

BackwardTiles combine_backward_tiles(BackwardTiles tiles, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic) {
  if (dkdv.served_by != cache::ServedBy::heuristic && !(deterministic && dkdv.tile.atomic_dq)) {
    tiles.dkdv = dkdv.tile;
  }
  if (dq.served_by != cache::ServedBy::heuristic) tiles.dq = dq.tile;
  return tiles;
}

}  // namespace sigattn
