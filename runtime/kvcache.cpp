// sigattn::forward_with_kvcache: the arguments validated (runtime/validation), a decode tile and
// split count chosen (runtime/tile_choice), the device lengths checked, then on the caller's
// stream: the append of the new keys and values into the cache, the decode kernel and, when the
// cache is split, the sum of the splits' partial outputs (runtime/kernel_launch).
#include "runtime/kvcache.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sigattn/sigattn.hpp>

#include "generator/generator.hpp"
#include "runtime/errors.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/kernel_params.hpp"
#include "runtime/scratch_pool.hpp"
#include "runtime/tile_choice.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

// Reduce CTAs at most: the sum walks its output with a grid-stride loop beyond them.
constexpr long long kMaxReduceCtas = 4096;

// Bytes of one split's fp32 partial output: [batch, seqlen_q, heads_q, head_dim].
std::size_t bytes_per_split(const KvCacheArgs& args) {
  return static_cast<std::size_t>(args.batch) * args.seqlen_q * args.heads_q * args.head_dim *
         sizeof(float);
}

struct DecodeChoice {
  gen::KernelSpec spec;
  policy::Target target;
  cache::TileChoice choice;
};

DecodeChoice choose(const KvCacheArgs& args) {
  const gen::KernelSpec spec = check_kvcache(args);
  const policy::Target target = current_target();
  return {spec, target, choose_decode_tile(args, spec, target, current_device(target))};
}

// The splits the workspace allows: the tile's, or fewer where the caller's workspace holds fewer
// partial outputs; none without one under capture, where the library's memory cannot be ordered
// against the graph's replays.
int affordable_splits(const KvCacheArgs& args, int splits, bool under_capture) {
  if (splits <= 1) return 1;
  if (args.workspace == nullptr) return under_capture ? 1 : splits;
  const std::size_t fit = args.workspace_bytes / bytes_per_split(args);
  return static_cast<int>(std::clamp<std::size_t>(fit, 1, static_cast<std::size_t>(splits)));
}

// The grid of the append: (chunk blocks, batch), see gen::generate_kv_append.
Grid append_grid(const KvCacheArgs& args) {
  const long long chunks =
      static_cast<long long>(args.seqlen_new) * args.heads_kv * (args.head_dim / 8);
  const long long ctas = (chunks + gen::kCacheHelperThreads - 1) / gen::kCacheHelperThreads;
  return {static_cast<unsigned>(ctas), static_cast<unsigned>(args.batch), 1};
}

// The grid of the sum of the splits: a grid-stride loop over 16 bytes of the output per thread.
Grid reduce_grid(const KvCacheArgs& args) {
  const long long chunks = static_cast<long long>(bytes_per_split(args) / sizeof(float) / 8);
  const long long ctas =
      std::min(kMaxReduceCtas, (chunks + gen::kCacheHelperThreads - 1) / gen::kCacheHelperThreads);
  return {static_cast<unsigned>(ctas), 1, 1};
}

// Checks the tile and the device arguments and loads every kernel the call runs, then appends,
// attends and sums the splits on `stream`.
void run(const KvCacheArgs& args, const gen::KernelSpec& spec, const policy::Target& target,
         gen::TileConfig tile, const TileOrigin& origin, CUstream stream) {
  check_tile(spec, tile, target);
  check_kvcache_pointers(args);
  check_kvcache_lengths_on_device(args, stream);

  tile.splits = affordable_splits(args, tile.splits, capturing(stream));
  const gen::Variant variant{spec, tile};
  const LoadedKernel kernel = load_kernel(variant);
  log_launch(variant, origin, kernel);
  std::optional<LoadedKernel> append;
  if (args.seqlen_new > 0) append = load_kv_append(spec);
  std::optional<LoadedKernel> reduce;
  if (tile.splits > 1) reduce = load_decode_reduce(spec);

  DecodeParams params = decode_params(args, tile.splits, decode_row_blocks(args, tile));
  std::optional<ScratchPool::Lease> lease;
  if (reduce && args.workspace != nullptr) {
    params.partial = static_cast<float*>(args.workspace);
  } else if (reduce) {
    lease.emplace(ScratchPool::instance().acquire(tile.splits * bytes_per_split(args), stream));
    params.partial = reinterpret_cast<float*>(lease->ptr());
  }
  if (append) launch(*append, params, append_grid(args), stream);
  launch_decode_kernel(kernel, variant, params, stream);
  if (reduce) launch(*reduce, params, reduce_grid(args), stream);
}

}  // namespace

void forward_with_kvcache(const KvCacheArgs& args, CUstream stream) {
  const auto [spec, target, choice] = choose(args);
  run(args, spec, target, choice.tile, origin_of(choice), stream);
}

void forward_with_kvcache_tile(const KvCacheArgs& args, CUstream stream,
                               const gen::TileConfig& tile) {
  const gen::KernelSpec spec = check_kvcache(args);
  const policy::Target target = current_target();
  gen::TileConfig chosen = tile;
  if (chosen.splits == 0) {
    chosen.splits = decode_split_count(args, tile, current_device(target).sm_count);
  }
  run(args, spec, target, chosen, forced_origin(), stream);
}

Dispatch explain_forward_with_kvcache(const KvCacheArgs& args) {
  const DecodeChoice decode = choose(args);
  return dispatch_of(decode.spec, decode.choice);
}

Dispatch explain_forward_with_kvcache(const KvCacheArgs& args, const DeviceDescription& device) {
  const gen::KernelSpec spec = check_kvcache(args);
  const policy::Target target = described_target(device);
  if (device.sm_count <= 0) {
    throw_invalid(fmt::format(
        "device.sm_count = {}: the split count of a KV-cache call depends on the SM count, so a "
        "described device must give it (e.g. 132 for an H100 or H200 SXM)",
        device.sm_count));
  }
  return dispatch_of(
      spec, choose_decode_tile(args, spec, target, {device.name, target.arch, device.sm_count}));
}

std::size_t kvcache_workspace_bytes(const KvCacheArgs& args) {
  const DecodeChoice decode = choose(args);
  const int splits = decode.choice.tile.splits;
  return splits > 1 ? splits * bytes_per_split(args) : 0;
}

}  // namespace sigattn
