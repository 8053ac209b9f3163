// Tile choice for forward and backward calls, the check of forced tiles against the policy and the
// kernels' TMA maps, the online-tuning request, and the log line of a new variant's choice.
#include "runtime/tile_choice.hpp"

#include <fmt/format.h>

#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/log.hpp"
#include "runtime/online_tuning_hook.hpp"
#include "runtime/persistent_cache.hpp"
#include "runtime/validation.hpp"

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

// The target whose defaults are the portable family's: sm_90 without the a-features.
policy::Target portable_target() { return policy::target_for_arch("sm_90"); }

// Why the portable family's default replaces `tile`.
std::string portable_reason(const std::string& obstacles, const gen::TileConfig& tile,
                            const std::string& default_reason) {
  return fmt::format("TMA maps cannot describe {}, so not {}: {}", obstacles, gen::to_string(tile),
                     default_reason);
}

// How the log names where a binary came from.
std::string_view binary_origin(BinarySource source) {
  switch (source) {
    case BinarySource::memory:
      return "already in memory";
    case BinarySource::database:
      return "from the user database";
    case BinarySource::nvrtc:
      return "compiled by NVRTC";
  }
  return "of unknown origin";
}

// The heuristic's origin for a tile that replaces a looked-up one, and why.
TileOrigin heuristic_origin(std::string reason) {
  return {std::string(cache::to_string(cache::ServedBy::heuristic)), std::move(reason)};
}

}  // namespace

policy::Target current_target() {
  const cuda::DeviceInfo info = cuda::current_device_info();
  const policy::DeviceArch device = cuda::device_arch(info.cc_major, info.cc_minor);
  if (device.jit && logging::first_time("jit " + info.name)) {
    logging::warn("{}: {}", info.name, device.note);
  }
  return policy::target_for_device(device, info.max_smem_optin);
}

cache::DeviceKey current_device(const policy::Target& target) {
  const cuda::DeviceInfo info = cuda::current_device_info();
  return {info.name, target.arch, info.sm_count};
}

TileOrigin origin_of(const cache::TileChoice& choice) {
  return {std::string(cache::to_string(choice.served_by)), choice.reason};
}

TileOrigin forced_origin() { return {"forced", "the tile the caller passed"}; }

void log_launch(const gen::Variant& variant, const TileOrigin& origin, const LoadedKernel& kernel) {
  if (!logging::enabled(LogLevel::info)) return;
  const std::string name = gen::to_string(variant);
  if (!logging::first_time("launch " + name)) return;
  logging::info("{}: tile {} from {} ({}); binary {} in {:.1f} ms", name,
                gen::to_string(variant.tile), origin.served_by, origin.reason,
                binary_origin(kernel.source), kernel.load_ms);
}

void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target) {
  if (const std::string why = policy::rejection(spec, tile, target); !why.empty()) {
    throw_invalid(fmt::format("tile {} cannot run {} on {}: {}", gen::to_string(tile),
                              gen::to_string(gen::Variant{spec, tile}), target.arch, why));
  }
}

void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target, const CallOperands& call) {
  const gen::Variant variant{spec, tile};
  check_tile(spec, tile, target);
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
                                      const policy::Target& target,
                                      const cache::DeviceKey& device) {
  cache::TileChoice choice = PersistentCache::instance().choose_tile(
      spec, device, args.max_seqlen_q, args.max_seqlen_k, target);
  const std::string obstacles = tma_obstacles({spec, choice.tile}, CallOperands{args});
  if (obstacles.empty()) return choice;
  const policy::DefaultChoice portable = policy::default_tile(spec, portable_target());
  choice.reason = portable_reason(obstacles, choice.tile, portable.reason);
  choice.tile = portable.tile;
  choice.served_by = cache::ServedBy::heuristic;
  choice.stale = false;
  return choice;
}

cache::TileChoice forward_tile_for_launch(const ForwardArgs& args, const gen::KernelSpec& spec,
                                          const policy::Target& target) {
  cache::TileChoice choice = choose_forward_tile(args, spec, target, current_device(target));
  if (choice.served_by == cache::ServedBy::heuristic) request_online_tuning(args, spec);
  return choice;
}

policy::Target described_target(const DeviceDescription& device) {
  try {
    return policy::target_for_arch(device.arch);
  } catch (const std::invalid_argument& error) {
    throw_invalid(fmt::format("device.arch: {}", error.what()));
  }
}

Dispatch dispatch_of(const gen::KernelSpec& spec, const cache::TileChoice& choice) {
  return {gen::to_string(gen::Variant{spec, choice.tile}), gen::to_string(choice.tile),
          std::string(cache::to_string(choice.served_by)), choice.reason};
}

int decode_row_blocks(const KvCacheArgs& args, const gen::TileConfig& tile) {
  const long long rows = static_cast<long long>(args.heads_q / args.heads_kv) * args.seqlen_q;
  return static_cast<int>((rows + tile.block_m - 1) / tile.block_m);
}

cache::TileChoice choose_decode_tile(const KvCacheArgs& args, const gen::KernelSpec& spec,
                                     const policy::Target& target, const cache::DeviceKey& device) {
  const int capacity = kvcache_capacity(args);
  const int units = policy::decode_lookup_units(args.batch, args.heads_kv, args.seqlen_q);
  cache::TileChoice choice =
      PersistentCache::instance().choose_tile(spec, device, units, capacity, target);
  // A split count tuned for other units or another cache size does not carry over: its tile does.
  if (choice.tile.splits != 0 && choice.served_by == cache::ServedBy::nearest_bucket) {
    choice.reason += fmt::format("; its {} splits left to this call", choice.tile.splits);
    choice.tile.splits = 0;
  }
  if (choice.tile.splits != 0) return choice;
  choice.tile.splits = decode_split_count(args, choice.tile, device.sm_count);
  choice.reason += fmt::format("; {} splits on {} SMs (policy::decode_splits)", choice.tile.splits,
                               device.sm_count);
  return choice;
}

int decode_split_count(const KvCacheArgs& args, const gen::TileConfig& tile, int sm_count) {
  const long long units =
      static_cast<long long>(args.batch) * args.heads_kv * decode_row_blocks(args, tile);
  const long long key_tiles = (kvcache_capacity(args) + tile.block_n - 1) / tile.block_n;
  return policy::decode_splits(units, key_tiles, sm_count);
}

BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic) {
  const bool one_pass = !deterministic && policy::one_pass_by_default(specs.dkdv, target);
  policy::DefaultChoice dkdv = policy::default_tile(specs.dkdv, target, one_pass);
  policy::DefaultChoice dq = policy::default_tile(specs.dq, target);
  return {dkdv.tile, dq.tile, heuristic_origin(std::move(dkdv.reason)),
          heuristic_origin(std::move(dq.reason))};
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
  // One kernel's tile (a member of BackwardTiles) replaced by the portable family's default where
  // TMA maps cannot describe the operands it streams.
  const auto keep_describable = [&](const gen::KernelSpec& spec,
                                    gen::TileConfig BackwardTiles::*tile,
                                    TileOrigin BackwardTiles::*origin) {
    const std::string obstacles = tma_obstacles({spec, chosen.*tile}, call);
    if (obstacles.empty()) return;
    const BackwardTiles portable = default_backward_tiles(specs, portable_target(), deterministic);
    chosen.*origin =
        heuristic_origin(portable_reason(obstacles, chosen.*tile, (portable.*origin).reason));
    chosen.*tile = portable.*tile;
  };
  keep_describable(specs.dkdv, &BackwardTiles::dkdv, &BackwardTiles::dkdv_origin);
  keep_describable(specs.dq, &BackwardTiles::dq, &BackwardTiles::dq_origin);
  return chosen;
}

BackwardTiles combine_backward_tiles(BackwardTiles tiles, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic) {
  if (dkdv.served_by != cache::ServedBy::heuristic) {
    if (deterministic && dkdv.tile.atomic_dq) {
      tiles.dkdv_origin.reason =
          fmt::format("the tuned one-pass tile {} may not serve a deterministic call; {}",
                      gen::to_string(dkdv.tile), tiles.dkdv_origin.reason);
    } else {
      tiles.dkdv = dkdv.tile;
      tiles.dkdv_origin = origin_of(dkdv);
    }
  }
  if (dq.served_by != cache::ServedBy::heuristic) {
    tiles.dq = dq.tile;
    tiles.dq_origin = origin_of(dq);
  }
  return tiles;
}

}  // namespace sigattn
